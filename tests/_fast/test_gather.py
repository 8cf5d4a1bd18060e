"""weighted_rows against its NumPy reference twin, plus documented edge cases."""

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
