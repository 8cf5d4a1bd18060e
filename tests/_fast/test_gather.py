"""The row-gather kernels against their NumPy reference twins, plus documented edge cases."""

import numpy as np
import pytest
from fast_strategies import KERNELS
from hypothesis import given
from hypothesis import strategies as st

from rankly import _fast
from rankly._fast import reference


@KERNELS
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 300), n=st.integers(0, 700),
       h=st.integers(0, 40), dtype=st.sampled_from(["float32", "float64"]),
       repeats=st.booleans())
def test_weighted_rows_matches_reference(seed, m, n, h, dtype, repeats):
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((m, n)).astype(dtype)
    rows = rng.integers(0, m, h) if repeats else rng.permutation(m)[:h]
    weights = rng.standard_normal(rows.size).astype(np.float32)
    weights[rng.random(rows.size) < 0.2] = 0.0  # zero weights are skipped, same sum
    got = _fast.weighted_rows(matrix, rows, weights)
    want = reference.weighted_rows(matrix, rows, weights)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape == (n,)
    scale = np.abs(weights) @ np.abs(matrix[rows].astype(np.float32)) if rows.size else 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * (np.max(scale, initial=0) + 1))


def test_weighted_rows_exact_on_small_integers():
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = _fast.weighted_rows(matrix, np.array([2, 0, 2]), np.array([1, 2, 0.5], np.float32))
    np.testing.assert_array_equal(got, 1.5 * matrix[2] + 2 * matrix[0])


def test_weighted_rows_empty_history_is_zeros():
    matrix = np.ones((3, 5), dtype=np.float32)
    out = _fast.weighted_rows(matrix, np.empty(0, np.int64), np.empty(0, np.float32))
    np.testing.assert_array_equal(out, np.zeros(5, np.float32))


def test_weighted_rows_accepts_a_read_only_memory_map(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.eye(4, dtype=np.float32))
    matrix = np.load(path, mmap_mode="r")
    out = _fast.weighted_rows(matrix, np.array([1, 3]), np.array([2.0, 3.0], np.float32))
    np.testing.assert_array_equal(out, [0, 2, 0, 3])


@pytest.mark.parametrize("impl", [_fast.weighted_rows, reference.weighted_rows])
def test_weighted_rows_rejects_bad_inputs(impl):
    matrix = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 3\)"):
        impl(matrix, np.array([0, 3]), np.ones(2, np.float32))
    with pytest.raises(IndexError):
        impl(matrix, np.array([-1]), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="weights must have the shape of rows"):
        impl(matrix, np.array([0, 1]), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="matrix must be a 2-D array"):
        impl(np.ones(4, np.float32), np.array([0]), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="rows must hold integer row indices"):
        impl(matrix, np.array([0.5]), np.ones(1, np.float32))


@KERNELS
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 200), n=st.integers(1, 400),
       h=st.integers(0, 12), density=st.sampled_from([0.0, 0.01, 0.1, 0.5]))
def test_csr_weighted_rows_matches_reference(seed, m, n, h, density):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    mat = sp.random(m, n, density=density, format="csr", random_state=rng, dtype=np.float32)
    rows = rng.integers(0, m, h)
    weights = rng.standard_normal(h).astype(np.float32)
    args = (mat.indptr, mat.indices, mat.data, rows, weights, n)
    got = _fast.csr_weighted_rows(*args)
    want = reference.csr_weighted_rows(*args)
    dense = weights @ mat[rows].toarray() if h else np.zeros(n, np.float32)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", [_fast.csr_weighted_rows, reference.csr_weighted_rows])
def test_csr_weighted_rows_rejects_bad_inputs(impl):
    indptr, indices, data = np.array([0, 1, 2]), np.array([0, 3]), np.ones(2, np.float32)
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 2\)"):
        impl(indptr, indices, data, np.array([2]), np.ones(1, np.float32), 4)
    with pytest.raises(ValueError, match=r"column indices must lie in \[0, 3\)"):
        impl(indptr, indices, data, np.array([1]), np.ones(1, np.float32), 3)
    with pytest.raises(ValueError, match="weights must have the shape of rows"):
        impl(indptr, indices, data, np.array([0]), np.ones(2, np.float32), 4)


@KERNELS
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 120), n=st.integers(0, 300),
       users=st.integers(0, 30), density=st.sampled_from([0.0, 0.02, 0.2, 0.9]),
       threads=st.sampled_from([None, 1, 2]))
def test_weighted_rows_batch_matches_reference_and_the_dense_product(seed, m, n, users, density,
                                                                      threads):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((m, n)).astype(np.float32)
    hist = sp.random(users, m, density=density, format="csr", random_state=rng,
                     dtype=np.float32)
    args = (matrix, hist.indptr, hist.indices, hist.data)
    got = _fast.weighted_rows_batch(*args, threads=threads)
    want = reference.weighted_rows_batch(*args)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape == (users, n)
    scale = np.abs(hist).toarray() @ np.abs(matrix) if users else np.zeros((0, n))
    atol = 1e-5 * (float(scale.max(initial=0)) + 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    np.testing.assert_allclose(got, hist.toarray() @ matrix, rtol=0, atol=atol)
    # each row is the one-history kernel on that row
    for u in range(min(users, 3)):
        lo, hi = hist.indptr[u], hist.indptr[u + 1]
        np.testing.assert_allclose(
            got[u], _fast.weighted_rows(matrix, hist.indices[lo:hi], hist.data[lo:hi]),
            rtol=0, atol=atol)


@pytest.mark.parametrize("impl", [_fast.weighted_rows_batch, reference.weighted_rows_batch])
def test_weighted_rows_batch_rejects_bad_inputs(impl):
    matrix = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(IndexError, match=r"history columns must lie in \[0, 3\)"):
        impl(matrix, np.array([0, 1]), np.array([3]), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="indptr must start at 0"):
        impl(matrix, np.array([0, 2]), np.array([1]), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="CSR matrix's 1-D arrays"):
        impl(matrix, np.array([0, 1]), np.array([1]), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="matrix must be a 2-D array"):
        impl(np.ones(3, np.float32), np.array([0, 1]), np.array([1]), np.ones(1, np.float32))


@KERNELS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000),
       kind=st.sampled_from(["normal", "constant", "offset", "tiny"]),
       weight=st.floats(-3, 3, allow_nan=False))
def test_add_standardized_matches_reference(seed, n, kind, weight):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "constant":
        x[:] = 2.5
    elif kind == "offset":
        x += np.float32(1000.0)
    elif kind == "tiny":
        x *= np.float32(1e-12)
    base = rng.standard_normal(n).astype(np.float32)
    got = _fast.add_standardized(base.copy(), x, weight)
    want = reference.add_standardized(base.copy(), x, weight)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    if kind == "constant":
        np.testing.assert_array_equal(got, base)


def test_add_standardized_gives_mean_0_std_1():
    x = np.arange(10, dtype=np.float32)
    out = _fast.add_standardized(np.zeros(10, np.float32), x)
    assert abs(float(out.mean())) < 1e-6 and abs(float(out.std()) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="out must be a writable"):
        _fast.add_standardized(np.zeros(10, np.float64), x)
