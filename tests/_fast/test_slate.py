"""The impression record's per-slate kernels against their NumPy reference twins, and the
learned ranker's category features (the values train-ranker reads from logged lines) as the
kernel's."""

import numpy as np
import pytest
from fast_strategies import KERNELS
from hypothesis import given
from hypothesis import strategies as st

from rankly import _fast
from rankly._fast import reference
from rankly.engine.feedback.ltr_features import HISTORY_WINDOW


@KERNELS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 30), m=st.integers(0, 300),
       universe=st.integers(1, 400))
def test_positions_match_reference(seed, n, m, universe):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, universe, n)
    listed = rng.integers(0, universe, m)  # repeats: the first index counts
    got = _fast.positions(items, listed)
    want = reference.positions(items, listed)
    assert got.dtype == want.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    for i, x in enumerate(items.tolist()):
        where = np.flatnonzero(listed == x)
        assert got[i] == (where[0] if where.size else -1)


@KERNELS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 30), h=st.integers(0, 60),
       n_items=st.integers(1, 200), n_categories=st.integers(1, 12),
       uncategorized=st.floats(0, 1), window=st.integers(0, 40))
def test_category_features_match_reference(seed, n, h, n_items, n_categories, uncategorized,
                                           window):
    rng = np.random.default_rng(seed)
    categories = rng.integers(0, n_categories, n_items)
    categories[rng.random(n_items) < uncategorized] = -1
    history = rng.integers(0, n_items, h)
    items = rng.integers(0, n_items, n)
    got = _fast.category_features(history, items, categories, window)
    want = reference.category_features(history, items, categories, window)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == np.float64 and g.shape == w.shape == (n,)
        np.testing.assert_allclose(g, w, rtol=1e-15, atol=0)


@KERNELS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), h=st.integers(0, 60))
def test_category_features_equal_the_rankers_own(seed, n, h):
    from rankly.engine.feedback.ltr_features import category_features

    rng = np.random.default_rng(seed)
    categories = rng.integers(-1, 6, 150)
    history, items = rng.integers(0, 150, h), rng.integers(0, 150, n)
    got = _fast.category_features(history, items, categories, HISTORY_WINDOW)
    for g, w in zip(got, category_features(history, items, categories), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-15, atol=0)


@pytest.mark.parametrize("kernel", [_fast.category_features, reference.category_features])
def test_category_features_refuse_an_index_outside_the_catalog(kernel):
    with pytest.raises(IndexError):
        kernel([0, 5], [1], [0, 1, 2], 10)
    with pytest.raises(IndexError):
        kernel([0], [-1], [0, 1, 2], 10)


def test_positions_of_nothing():
    assert _fast.positions([], [1, 2]).shape == (0,)
    np.testing.assert_array_equal(_fast.positions([4, 2], []), [-1, -1])
