"""Row-gather kernels: `weighted_rows`, the item-item model's score of one history, and
`weighted_rows_batch`, the same for many histories at once (training-time validation).

The NumPy twin in `reference.py` is the specification. The serving path calls it once per
uncached request, with the GIL released, so it never copies the gathered rows.
"""

cimport cython
cimport openmp
from cython.parallel cimport prange
from libc.stdint cimport int64_t

import numpy as np

from rankly._fast import _inputs


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void _accumulate(const float* m, Py_ssize_t n, const int64_t* rows, const float* w,
                      Py_ssize_t h, float* out) noexcept nogil:
    # four rows per pass over `out`: a quarter of the loads and stores of the output row
    cdef Py_ssize_t i = 0, j
    cdef const float* a
    cdef const float* b
    cdef const float* c
    cdef const float* d
    cdef float wa, wb, wc, wd
    while i + 4 <= h:
        a = m + rows[i] * n
        b = m + rows[i + 1] * n
        c = m + rows[i + 2] * n
        d = m + rows[i + 3] * n
        wa = w[i]
        wb = w[i + 1]
        wc = w[i + 2]
        wd = w[i + 3]
        for j in range(n):
            out[j] += (wa * a[j] + wb * b[j]) + (wc * c[j] + wd * d[j])
        i += 4
    while i < h:
        a = m + rows[i] * n
        wa = w[i]
        for j in range(n):
            out[j] += wa * a[j]
        i += 1


def weighted_rows(matrix, rows, weights):
    """Return float32 `sum_i weights[i] * matrix[rows[i]]` (zeros when `rows` is empty).

    Rows are added four at a time in float32 (values agree with the reference, a BLAS
    product, to about rtol 1e-5); a row index outside the matrix raises IndexError. The sum runs
    with the GIL released and without copying the gathered rows. Same as
    `reference.weighted_rows`.
    """
    m, r, w = _inputs.as_rows_inputs(matrix, rows, weights)
    out = np.zeros(m.shape[1], dtype=np.float32)
    if r.shape[0] == 0 or m.shape[1] == 0:
        return out
    cdef const float[:, ::1] mv = m
    cdef const int64_t[::1] rv = r
    cdef const float[::1] wv = w
    cdef float[::1] ov = out
    cdef Py_ssize_t n = m.shape[1], h = r.shape[0]
    with nogil:
        _accumulate(&mv[0, 0], n, &rv[0], &wv[0], h, &ov[0])
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def weighted_rows_batch(matrix, indptr, indices, data, *, threads=None):
    """Return float32 [U, n] `H @ matrix` for the CSR matrix `H = (data, indices, indptr)`
    with U rows whose columns index `matrix`'s rows: row u is `weighted_rows(matrix,
    indices[indptr[u]:indptr[u+1]], data[...])`.

    The dense product a BLAS gemm would do, at the cost of H's non-zeros instead of all of
    its cells: for sparse histories (a few percent of the catalog each) that is far fewer
    operations. Users are split over `threads` OpenMP threads (None: all) with the GIL
    released. A column index outside `matrix` raises IndexError. Same as
    `reference.weighted_rows_batch`.
    """
    m, p, ix, d = _inputs.as_batch_rows_inputs(matrix, indptr, indices, data)
    cdef Py_ssize_t users = p.shape[0] - 1, n = m.shape[1]
    out = np.zeros((users, n), dtype=np.float32)
    if users == 0 or n == 0 or ix.shape[0] == 0:
        return out
    cdef const float[:, ::1] mv = m
    cdef const int64_t[::1] pv = p
    cdef const int64_t[::1] iv = ix
    cdef const float[::1] dv = d
    cdef float[:, ::1] ov = out
    cdef int nthreads = threads if threads is not None else openmp.omp_get_max_threads()
    cdef Py_ssize_t u
    if nthreads < 1:
        nthreads = 1
    with nogil:
        for u in prange(users, num_threads=nthreads, schedule="dynamic"):
            if pv[u + 1] > pv[u]:
                _accumulate(&mv[0, 0], n, &iv[pv[u]], &dv[pv[u]], pv[u + 1] - pv[u],
                            &ov[u, 0])
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _csr_accumulate(const int64_t* indptr, const int64_t* indices, const float* data,
                         const int64_t* rows, const float* w, Py_ssize_t h, int64_t n,
                         float* out) noexcept nogil:
    """Add the rows; 1 (and stop) at a column outside [0, n)."""
    cdef Py_ssize_t i, j
    cdef int64_t c
    cdef float wi
    for i in range(h):
        wi = w[i]
        for j in range(indptr[rows[i]], indptr[rows[i] + 1]):
            c = indices[j]
            if c < 0 or c >= n:
                return 1
            out[c] += wi * data[j]
    return 0


def csr_weighted_rows(indptr, indices, data, rows, weights, n_cols):
    """Return float32 `sum_i weights[i] * M[rows[i]]` (dense, `n_cols` long) of the CSR
    matrix `M = (data, indices, indptr)`; zeros when `rows` is empty.

    Rows are added in the given order in float32; a row index outside the matrix raises
    IndexError, a column index outside `n_cols` in a row read ValueError. The sum runs with
    the GIL released. Same as `reference.csr_weighted_rows`.
    """
    p, ix, d, r, w, n = _inputs.as_csr_rows_inputs(indptr, indices, data, rows, weights,
                                                   n_cols)
    out = np.zeros(n, dtype=np.float32)
    if r.shape[0] == 0 or ix.shape[0] == 0:
        return out
    cdef const int64_t[::1] pv = p
    cdef const int64_t[::1] iv = ix
    cdef const float[::1] dv = d
    cdef const int64_t[::1] rv = r
    cdef const float[::1] wv = w
    cdef float[::1] ov = out
    cdef Py_ssize_t h = r.shape[0]
    cdef int64_t nn = n
    cdef int bad
    with nogil:
        bad = _csr_accumulate(&pv[0], &iv[0], &dv[0], &rv[0], &wv[0], h, nn, &ov[0])
    if bad:
        raise _inputs.column_error(n)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def add_standardized(out, x, weight=1.0):
    """``out += weight * (x - mean(x)) / std(x)`` in place (float32 vectors of one length);
    a constant `x` (std at most 1e-6 of its mean's size) adds nothing. Mean and variance are
    float64 sums. Returns `out`. Same as `reference.add_standardized`.
    """
    o, v = _inputs.as_standardize_inputs(out, x)
    cdef float[::1] ov = o
    cdef const float[::1] xv = v
    cdef Py_ssize_t i, n = v.shape[0]
    cdef double s = 0.0, sq = 0.0, mean, std, scale
    cdef float m32, k32
    if n == 0:
        return out
    with nogil:
        for i in range(n):
            s += xv[i]
            sq += <double>xv[i] * xv[i]
    mean = s / n
    std = sq / n - mean * mean
    std = std ** 0.5 if std > 0 else 0.0
    if not std > 1e-6 * (abs(mean) + 1e-6):
        return out
    scale = float(weight) / std
    m32 = <float>mean
    k32 = <float>scale
    with nogil:
        for i in range(n):
            ov[i] += (xv[i] - m32) * k32
    return out
