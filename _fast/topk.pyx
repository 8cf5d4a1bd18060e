"""Top-k selection kernels: `topk`, `topk_batch`, `score_topk`, `score_topk_batch`.

The NumPy twins in `reference.py` are the specification; see `_select.pxi` for the algorithm.
Serving calls are single-threaded; only the *_batch functions use OpenMP threads.
"""

cimport cython
cimport openmp
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

import numpy as np

from rankly._fast import _inputs

include "_select.pxi"

cdef enum:
    SCORE_BLOCK = 256           # items scored into a stack buffer before selection
    PARALLEL_MIN_WORK = 1 << 18  # floats per batch call below which one thread is used
    GEMM_MIN_USERS = 8          # score_topk_batch uses BLAS blocks from this many users


def _empty():
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)


cdef int _thread_count(threads, Py_ssize_t rows, double work):
    """Threads for a batch call: the caller's choice, else 1 for small work, else all."""
    cdef int count
    if threads is not None:
        count = threads
    elif work < PARALLEL_MIN_WORK:
        count = 1
    else:
        count = openmp.omp_get_max_threads()
    if count > rows:
        count = <int>rows
    return count if count > 0 else 1


cdef void _write_row(Selector* sel, Py_ssize_t r, int64_t* out_i, float* out_v) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(r):
        out_i[j] = sel.buf[j].i
        out_v[j] = sel.buf[j].s


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _score_scan(Selector* sel, const float* items, Py_ssize_t n, Py_ssize_t d,
                      const float* u) noexcept nogil:
    """Feed the selector items @ u, a block of SCORE_BLOCK dot products at a time."""
    cdef float block[SCORE_BLOCK]
    cdef Py_ssize_t start = 0, m
    while start < n:
        m = n - start if n - start < SCORE_BLOCK else SCORE_BLOCK
        rk_score_block(items, u, d, start, m, block)  # _simd.h: AVX2 when the CPU has it
        sel_feed(sel, block, start, m)
        start += m


cdef int _row_topk(const float* s, const float* items, Py_ssize_t n, Py_ssize_t d,
                   Py_ssize_t k, const int64_t* ex, Py_ssize_t nex,
                   int64_t* out_i, float* out_v) noexcept nogil:
    """Top-k of one row (scores s, or items @ s when items is not NULL); 1 if out of memory."""
    cdef Selector sel
    cdef Py_ssize_t cap = capacity(k, n)
    cdef Cand* buf = <Cand*>malloc(cap * sizeof(Cand))
    if buf == NULL:
        return 1
    sel_init(&sel, buf, cap, k, ex, nex, n)
    if items == NULL:
        sel_feed(&sel, s, 0, n)
    else:
        _score_scan(&sel, items, n, d, s)
    _write_row(&sel, sel_finish(&sel), out_i, out_v)
    free(buf)
    return 0


def _single(const float[::1] s, const float[:, ::1] items, Py_ssize_t n, Py_ssize_t d,
            Py_ssize_t k, const int64_t[::1] ex):
    """Shared body of topk and score_topk once inputs are validated (k >= 1, n >= 1)."""
    cdef Py_ssize_t kk = k if k < n else n
    cdef Py_ssize_t cap = capacity(kk, n), r
    cdef Selector sel
    cdef const float* items_ptr = NULL if items is None else &items[0, 0]
    cdef Cand* buf = <Cand*>malloc(cap * sizeof(Cand))
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            sel_init(&sel, buf, cap, kk, &ex[0], ex.shape[0] - 1, n)
            if items_ptr == NULL:
                sel_feed(&sel, &s[0], 0, n)
            else:
                _score_scan(&sel, items_ptr, n, d, &s[0])
            r = sel_finish(&sel)
        indices = np.empty(r, dtype=np.int64)
        values = np.empty(r, dtype=np.float32)
        _write_row(&sel, r, _ptr_i(indices), _ptr_f(values))
        return indices, values
    finally:
        free(buf)


cdef int64_t* _ptr_i(object array):
    cdef int64_t[::1] view = array
    return &view[0] if view.shape[0] else NULL


cdef float* _ptr_f(object array):
    cdef float[::1] view = array
    return &view[0] if view.shape[0] else NULL


_NO_EXCLUDE = np.zeros(1, dtype=np.int64)
_NO_EXCLUDE.setflags(write=False)


def _padded_exclude(values):
    """Append a sentinel so &view[0] is valid even when nothing is excluded."""
    if values.shape[0] == 0:
        return _NO_EXCLUDE
    return np.append(values, np.int64(0))


def topk(scores, k, exclude=None):
    """Return `(indices int64, values float32)` of the k best scores, best first.

    Ties go to the lower index, NaN is never returned, `-inf` is eligible and ranks last,
    `exclude` indices are never returned (duplicates and out-of-range values ignored).
    Fewer than k come back when fewer are eligible. Same as `reference.topk`.
    """
    s = _inputs.as_scores_1d(scores)
    k = _inputs.check_k(k)
    n = s.shape[0]
    ex = _padded_exclude(_inputs.exclude_indices(exclude, n))
    if k == 0 or n == 0:
        return _empty()
    return _single(s, None, n, 0, k, ex)


def score_topk(item_factors, user_vector, k, exclude=None):
    """Return `topk(item_factors @ user_vector, k, exclude)` without an n-sized score array.

    Dot products are float32 sums in a different order than BLAS: values agree with the
    reference to about rtol 1e-4.
    """
    items, user = _inputs.as_factors(item_factors, user_vector, 1)
    k = _inputs.check_k(k)
    n, d = items.shape
    ex = _padded_exclude(_inputs.exclude_indices(exclude, n))
    if k == 0 or n == 0:
        return _empty()
    if d == 0:
        return topk(np.zeros(n, dtype=np.float32), k, exclude)
    return _single(user, items, n, d, k, ex)


def _batch(const float[:, ::1] rows, const float[:, ::1] items, Py_ssize_t n, Py_ssize_t d,
           Py_ssize_t k, const int64_t[::1] offsets, const int64_t[::1] ex, int nthreads):
    """Shared body of topk_batch and score_topk_batch (k >= 1, n >= 1, rows >= 1)."""
    cdef Py_ssize_t b = rows.shape[0], r, kk = k if k < n else n
    cdef Py_ssize_t width = rows.shape[1]
    cdef int failed = 0
    indices = np.full((b, k), -1, dtype=np.int64)
    values = np.full((b, k), -np.inf, dtype=np.float32)
    cdef int64_t[:, ::1] out_i = indices
    cdef float[:, ::1] out_v = values
    cdef const float* rows_ptr = &rows[0, 0]
    cdef const float* items_ptr = NULL if items is None else &items[0, 0]
    cdef const int64_t* off = &offsets[0]
    cdef const int64_t* ex_ptr = &ex[0]
    cdef int64_t* oi = &out_i[0, 0]
    cdef float* ov = &out_v[0, 0]
    with nogil:
        for r in prange(b, num_threads=nthreads, schedule="dynamic"):
            failed += _row_topk(rows_ptr + r * width, items_ptr, n, d, kk,
                                ex_ptr + off[r], off[r + 1] - off[r],
                                oi + r * k, ov + r * k)
    if failed:
        raise MemoryError()
    return indices, values


def _batch_empty(Py_ssize_t b, Py_ssize_t k):
    return np.full((b, k), -1, dtype=np.int64), np.full((b, k), -np.inf, dtype=np.float32)


def topk_batch(scores_2d, k, exclude=None, *, threads=None):
    """Apply `topk` to each row: `(indices [B, k] int64, values [B, k] float32)`.

    Rows with fewer eligible items are padded with index -1 and value -inf. `exclude` is None
    or a sequence of B integer arrays. `threads=None` uses one thread for small batches and
    all OpenMP threads for large ones.
    """
    s = _inputs.as_scores_2d(scores_2d)
    k = _inputs.check_k(k)
    threads = _inputs.check_threads(threads)
    b, n = s.shape
    offsets, ex = _inputs.exclude_rows(exclude, b, n)
    if k == 0 or n == 0 or b == 0:
        return _batch_empty(b, k)
    nthreads = _thread_count(threads, b, <double>b * n)
    return _batch(s, None, n, 0, k, offsets, _padded_exclude(ex), nthreads)


def _batch_gemm(const float[:, ::1] users, items, Py_ssize_t k,
                const int64_t[::1] offsets, const int64_t[::1] ex):
    """score_topk_batch for many users: BLAS scores a block of items for all users at a time
    (users @ block.T, a few MB), and each user's selector consumes its row of the block, so no
    [B, N] score matrix is ever allocated."""
    cdef Py_ssize_t b = users.shape[0], n = items.shape[0], r, start, m
    cdef Py_ssize_t kk = k if k < n else n, cap = capacity(kk, n)
    cdef Py_ssize_t block = max(1024, min(n, (1 << 22) // b))
    cdef Selector* sels = <Selector*>malloc(b * sizeof(Selector))
    cdef Cand* bufs = <Cand*>malloc(b * cap * sizeof(Cand))
    cdef const int64_t* off = &offsets[0]
    cdef const int64_t* ex_ptr = &ex[0]
    cdef const float* sp
    cdef float[:, ::1] sview
    indices = np.full((b, k), -1, dtype=np.int64)
    values = np.full((b, k), -np.inf, dtype=np.float32)
    cdef int64_t[:, ::1] out_i = indices
    cdef float[:, ::1] out_v = values
    cdef int64_t* oi = &out_i[0, 0]
    cdef float* ov = &out_v[0, 0]
    users_array = np.asarray(users)
    scores = np.empty((b, block), dtype=np.float32)
    try:
        if sels == NULL or bufs == NULL:
            raise MemoryError()
        for r in range(b):
            sel_init(&sels[r], bufs + r * cap, cap, kk, ex_ptr + off[r], off[r + 1] - off[r], n)
        for start in range(0, n, block):
            m = min(block, n - start)
            if m != block:
                scores = np.empty((b, m), dtype=np.float32)
            with np.errstate(invalid="ignore", over="ignore"):
                np.matmul(users_array, items[start:start + m].T, out=scores)
            sview = scores
            sp = &sview[0, 0]
            # The selection runs on this thread: OpenMP threads spinning between blocks would
            # compete with BLAS's own threads for the same cores.
            with nogil:
                for r in range(b):
                    sel_feed(&sels[r], sp + r * m, start, m)
        with nogil:
            for r in range(b):
                _write_row(&sels[r], sel_finish(&sels[r]), oi + r * k, ov + r * k)
        return indices, values
    finally:
        free(sels)
        free(bufs)


def score_topk_batch(item_factors, user_matrix, k, exclude=None, *, threads=None):
    """Apply `score_topk` to each user row, padded like `topk_batch`.

    From 8 users up, scores come from BLAS (users @ items.T) one block of items at a time (so
    values match `reference.score_topk_batch` closely): BLAS parallelizes with its own thread
    setting and the cheap selection runs on the calling thread, so `threads` has no effect.
    Fewer users use the fused kernel, one OpenMP thread per user up to `threads`.
    """
    items, users = _inputs.as_factors(item_factors, user_matrix, 2)
    k = _inputs.check_k(k)
    threads = _inputs.check_threads(threads)
    n, d = items.shape
    b = users.shape[0]
    offsets, ex = _inputs.exclude_rows(exclude, b, n)
    if k == 0 or n == 0 or b == 0:
        return _batch_empty(b, k)
    if d == 0:
        return topk_batch(np.zeros((b, n), dtype=np.float32), k, exclude, threads=threads)
    nthreads = _thread_count(threads, b, <double>b * n * d)
    if b >= GEMM_MIN_USERS:
        return _batch_gemm(users, items, k, offsets, _padded_exclude(ex))
    return _batch(users, items, n, d, k, offsets, _padded_exclude(ex), nthreads)


SCAN_ISA = rk_scan_isa.decode()
"""Instruction set of the threshold scan picked at import: "avx2" or "sse2" (see _simd.h)."""
