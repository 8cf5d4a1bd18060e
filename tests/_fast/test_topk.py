"""topk and topk_batch against their NumPy reference twins, plus documented edge cases."""

import numpy as np
import pytest
from fast_strategies import KERNELS, exclusions, k_values, score_arrays, score_elements
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rankly import _fast
from rankly._fast import reference


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@KERNELS
@given(st.data())
def test_topk_matches_reference(data):
    scores = data.draw(score_arrays())
    n = len(scores)
    k = data.draw(k_values(n))
    exclude = data.draw(exclusions(n))
    assert_same(_fast.topk(scores, k, exclude), reference.topk(scores, k, exclude))


@KERNELS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 6000),
    k=st.sampled_from([1, 2, 10, 100, 1100, 3000]),
    order=st.sampled_from(["random", "ascending", "descending", "ties"]),
    n_exclude=st.integers(0, 50),
)
def test_topk_matches_reference_on_large_inputs(seed, n, k, order, n_exclude):
    """Sizes beyond the selector's buffer, in orders that stress the heap and its guard."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(n).astype(np.float32)
    if order == "ascending":
        scores.sort()
    elif order == "descending":
        scores = np.sort(scores)[::-1].copy()
    elif order == "ties":
        scores = rng.integers(0, 4, n).astype(np.float32)
    exclude = rng.integers(-3, n + 3, n_exclude)
    assert_same(_fast.topk(scores, k, exclude), reference.topk(scores, k, exclude))


@KERNELS
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.sampled_from([5, 10, 50, 100, 300]),
    extra=st.integers(65, 2000),
    kind=st.sampled_from(["normal", "narrow range", "ties", "zeros and specials"]),
    n_exclude=st.integers(0, 30),
)
def test_dense_selection_matches_reference(seed, k, extra, kind, n_exclude):
    """k close to n (k * 16 > n): the buffer path, where narrow() drops candidates below the
    histogram bucket of the k-th best before selecting. Ties across a bucket edge, both
    zeros, infinities and NaN must keep the reference's order."""
    rng = np.random.default_rng(seed)
    n = min(k + extra, 16 * k - 1)
    if kind == "normal":
        scores = rng.standard_normal(n).astype(np.float32)
    elif kind == "narrow range":  # every key in a handful of buckets
        scores = (1.0 + rng.integers(0, 50, n) * np.float32(2**-20)).astype(np.float32)
    elif kind == "ties":
        scores = rng.integers(-2, 3, n).astype(np.float32)
    else:
        scores = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan],
                                     dtype=np.float32), n)
    exclude = rng.integers(-3, n + 3, n_exclude)
    assert_same(_fast.topk(scores, k, exclude), reference.topk(scores, k, exclude))


@KERNELS
@given(st.data())
def test_topk_batch_matches_reference(data):
    rows = data.draw(st.integers(0, 5))
    n = data.draw(st.integers(0, 150))
    scores = data.draw(hnp.arrays(np.float32, (rows, n), elements=score_elements()))
    k = data.draw(k_values(n))
    exclude = data.draw(st.one_of(st.none(), st.tuples(*[exclusions(n)] * rows)))
    threads = data.draw(st.sampled_from([None, 1, 2]))
    want = reference.topk_batch(scores, k, exclude)
    assert_same(_fast.topk_batch(scores, k, exclude, threads=threads), want)


def test_topk_orders_by_score_then_lower_index():
    idx, val = _fast.topk([1.0, 3.0, 3.0, 2.0, 3.0], 4)
    assert idx.tolist() == [1, 2, 4, 3]
    assert val.tolist() == [3.0, 3.0, 3.0, 2.0]


def test_topk_never_returns_nan_and_ranks_minus_inf_last():
    idx, val = _fast.topk([np.nan, -np.inf, 0.0, np.nan], 4)
    assert idx.tolist() == [2, 1]
    assert val.tolist() == [0.0, -np.inf]


def test_topk_returns_plus_inf_first():
    idx, _ = _fast.topk([1.0, np.inf, 2.0], 1)
    assert idx.tolist() == [1]


def test_topk_ignores_duplicate_negative_and_out_of_range_exclusions():
    idx, _ = _fast.topk([5.0, 4.0, 3.0, 2.0], 2, exclude=[0, 0, -1, 99, 2])
    assert idx.tolist() == [1, 3]


def test_topk_k_zero_returns_empty_typed_arrays():
    idx, val = _fast.topk([1.0, 2.0], 0)
    assert idx.dtype == np.int64 and val.dtype == np.float32
    assert idx.shape == val.shape == (0,)


def test_topk_empty_input_returns_empty():
    idx, val = _fast.topk(np.empty(0, dtype=np.float32), 5)
    assert idx.shape == val.shape == (0,)


def test_topk_returns_fewer_than_k_when_few_are_eligible():
    idx, _ = _fast.topk([1.0, np.nan, 2.0], 10, exclude=[2])
    assert idx.tolist() == [0]


def test_topk_negative_k_raises():
    with pytest.raises(ValueError, match="k must be >= 0"):
        _fast.topk([1.0], -1)


def test_topk_non_integer_k_raises():
    with pytest.raises(TypeError):
        _fast.topk([1.0], 1.5)


def test_topk_rejects_2d_scores():
    with pytest.raises(ValueError, match="scores must be a 1-D array"):
        _fast.topk(np.zeros((2, 2), dtype=np.float32), 1)


def test_topk_rejects_float_exclusions():
    with pytest.raises(ValueError, match="exclude must hold integer"):
        _fast.topk([1.0, 2.0], 1, exclude=[0.5])


def test_topk_converts_other_dtypes():
    for scores in ([3, 1, 2], np.array([3, 1, 2], dtype=np.float64), np.array([3, 1, 2])):
        idx, val = _fast.topk(scores, 2)
        assert idx.tolist() == [0, 2]
        assert val.dtype == np.float32


def test_topk_accepts_non_contiguous_input():
    scores = np.arange(10, dtype=np.float32)[::2]
    assert _fast.topk(scores, 2)[0].tolist() == [4, 3]


def test_topk_accepts_read_only_input():
    scores = np.frombuffer(np.arange(5, dtype=np.float32).tobytes(), dtype=np.float32)
    assert not scores.flags.writeable
    assert _fast.topk(scores, 2)[0].tolist() == [4, 3]


def test_topk_accepts_read_only_exclusions():
    exclude = np.array([4], dtype=np.int64)
    exclude.setflags(write=False)
    assert _fast.topk(np.arange(5, dtype=np.float32), 1, exclude)[0].tolist() == [3]


def test_topk_ascending_input_matches_reference(rng):
    scores = np.sort(rng.random(200_000).astype(np.float32))
    assert_same(_fast.topk(scores, 100), reference.topk(scores, 100))


def test_topk_batch_pads_short_rows():
    idx, val = _fast.topk_batch([[1.0, np.nan, 2.0], [np.nan, np.nan, np.nan]], 3)
    assert idx.tolist() == [[2, 0, -1], [-1, -1, -1]]
    assert val[0, :2].tolist() == [2.0, 1.0]
    assert np.all(np.isneginf(val[0, 2:])) and np.all(np.isneginf(val[1]))


def test_topk_batch_applies_exclusions_per_row():
    idx, _ = _fast.topk_batch([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], 1, exclude=[[0], [0, 1]])
    assert idx.tolist() == [[1], [2]]


def test_topk_batch_rejects_wrong_number_of_exclusions():
    with pytest.raises(ValueError, match="one index array per row"):
        _fast.topk_batch(np.zeros((2, 3)), 1, exclude=[[0]])


def test_topk_batch_rejects_1d_scores():
    with pytest.raises(ValueError, match="scores_2d must be a 2-D array"):
        _fast.topk_batch(np.zeros(3), 1)


def test_topk_batch_rejects_non_positive_threads():
    with pytest.raises(ValueError, match="threads must be None or >= 1"):
        _fast.topk_batch(np.zeros((2, 3)), 1, threads=0)


def test_topk_batch_k_zero_returns_empty_rows():
    idx, val = _fast.topk_batch(np.zeros((3, 4)), 0)
    assert idx.shape == val.shape == (3, 0)


def test_topk_batch_threads_give_identical_results(rng):
    scores = rng.integers(0, 50, (64, 5000)).astype(np.float32)
    one = _fast.topk_batch(scores, 20, threads=1)
    assert_same(_fast.topk_batch(scores, 20, threads=2), one)
    assert_same(_fast.topk_batch(scores, 20), one)
    assert_same(one, reference.topk_batch(scores, 20))


def test_topk_batch_accepts_read_only_input(rng):
    scores = rng.random((4, 50)).astype(np.float32)
    scores.setflags(write=False)
    assert_same(_fast.topk_batch(scores, 5), reference.topk_batch(scores, 5))
