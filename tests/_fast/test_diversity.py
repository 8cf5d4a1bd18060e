"""diverse_topk against its NumPy reference twin, plus documented edge cases."""

import numpy as np
import pytest
from fast_strategies import KERNELS, exclusions, k_values, score_elements
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rankly import _fast
from rankly._fast import reference


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@KERNELS
@given(st.data())
def test_diverse_topk_matches_reference(data):
    n = data.draw(st.integers(0, 300))
    scores = data.draw(hnp.arrays(np.float32, n, elements=score_elements()))
    category_ids = data.draw(
        st.sampled_from([st.integers(-2, 5), st.integers(-1, 60), st.sampled_from([-1, 7, 2**30])])
    )
    categories = data.draw(hnp.arrays(np.int32, n, elements=category_ids))
    k = data.draw(k_values(n))
    cap = data.draw(st.one_of(st.integers(0, 4), st.sampled_from([n, n + 10])))
    exclude = data.draw(exclusions(n))
    fill = data.draw(st.booleans())
    got = _fast.diverse_topk(scores, categories, k, cap, exclude, fill)
    assert_same(got, reference.diverse_topk(scores, categories, k, cap, exclude, fill))


@KERNELS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 20_000),
    k=st.sampled_from([1, 10, 100, 1000, 4000]),
    cap=st.sampled_from([0, 1, 2, 10, 500]),
    n_categories=st.sampled_from([1, 3, 20, 5000]),
    fill=st.booleans(),
)
def test_diverse_topk_matches_reference_on_large_inputs(seed, n, k, cap, n_categories, fill):
    """Sizes and skews that push the walk to grow M or switch to the per-category pass."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(n).astype(np.float32)
    categories = rng.integers(-1, n_categories, n).astype(np.int32)
    exclude = rng.integers(0, n, 10)
    got = _fast.diverse_topk(scores, categories, k, cap, exclude, fill)
    assert_same(got, reference.diverse_topk(scores, categories, k, cap, exclude, fill))


SCORES = np.array([9, 8, 7, 6, 5, 4], dtype=np.float32)
CATS = np.array([0, 0, 0, 1, -1, 1], dtype=np.int32)


def test_diverse_topk_caps_each_category():
    idx, _, within = _fast.diverse_topk(SCORES, CATS, 4, 2, fill=False)
    assert idx.tolist() == [0, 1, 3, 4]
    assert within.all()


def test_diverse_topk_fill_merges_skipped_items_by_score():
    idx, val, within = _fast.diverse_topk(SCORES, CATS, 6, 1)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5]
    assert within.tolist() == [True, False, False, True, True, False]
    assert val.tolist() == SCORES.tolist()


def test_diverse_topk_without_fill_returns_fewer():
    idx, _, _ = _fast.diverse_topk(SCORES, CATS, 6, 1, fill=False)
    assert idx.tolist() == [0, 3, 4]


def test_diverse_topk_cap_zero_keeps_only_uncategorized_within_cap():
    idx, _, within = _fast.diverse_topk(SCORES, CATS, 2, 0)
    assert idx.tolist() == [0, 4]
    assert within.tolist() == [False, True]


def test_diverse_topk_never_returns_nan_or_excluded():
    scores = np.array([np.nan, 1.0, 2.0, -np.inf], dtype=np.float32)
    idx, _, _ = _fast.diverse_topk(scores, np.zeros(4, np.int32), 4, 1, exclude=[2, 2, -1, 50])
    assert idx.tolist() == [1, 3]


def test_diverse_topk_negative_cap_raises():
    with pytest.raises(ValueError, match="cap must be >= 0"):
        _fast.diverse_topk(SCORES, CATS, 2, -1)


def test_diverse_topk_negative_k_raises():
    with pytest.raises(ValueError, match="k must be >= 0"):
        _fast.diverse_topk(SCORES, CATS, -1, 2)


def test_diverse_topk_rejects_categories_of_other_length():
    with pytest.raises(ValueError, match="categories has length 5 but scores has length 6"):
        _fast.diverse_topk(SCORES, CATS[:5], 2, 1)


def test_diverse_topk_rejects_float_categories():
    with pytest.raises(ValueError, match="categories must hold integers"):
        _fast.diverse_topk(SCORES, CATS.astype(np.float64), 2, 1)


def test_diverse_topk_rejects_categories_beyond_int32():
    with pytest.raises(ValueError, match="categories must fit in int32"):
        _fast.diverse_topk(SCORES, CATS.astype(np.int64) + 2**40, 2, 1)


def test_diverse_topk_k_zero_returns_empty_typed_arrays():
    idx, val, within = _fast.diverse_topk(SCORES, CATS, 0, 1)
    assert (idx.dtype, val.dtype, within.dtype) == (np.int64, np.float32, np.bool_)
    assert idx.shape == val.shape == within.shape == (0,)


def test_diverse_topk_accepts_read_only_int64_categories():
    categories = CATS.astype(np.int64)
    categories.setflags(write=False)
    scores = SCORES.copy()
    scores.setflags(write=False)
    assert_same(
        _fast.diverse_topk(scores, categories, 4, 1),
        reference.diverse_topk(SCORES, CATS, 4, 1),
    )


def test_diverse_topk_sparse_huge_category_ids_match_reference():
    rng = np.random.default_rng(3)
    scores = rng.random(30_000).astype(np.float32)
    categories = (rng.integers(0, 3, 30_000) * 1_000_000_000).astype(np.int32)
    for cap in (0, 1, 2000):
        got = _fast.diverse_topk(scores, categories, 5000, cap)
        assert_same(got, reference.diverse_topk(scores, categories, 5000, cap))
