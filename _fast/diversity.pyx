"""Per-category capped top-k: `diverse_topk`. The twin in `reference.py` is the specification.

Two strategies, chosen by the inputs:

- *top-M then walk* (the usual case, small caps): select the M best items with the streaming
  selector, walk them in ranking order with a small hash of per-category counts, and stop
  once k are kept. If the walk runs out of candidates before k are kept (and more items are
  left), M grows to what the observed keep rate says is needed.
- *one pass per category* (large k with skewed categories, or caps that the walk cannot
  satisfy): when the needed M exceeds n/8, one pass keeps the best min(cap, k) items of every
  category in a small heap and the best k uncategorized items; their top k are exactly the
  items kept by the walk. Fill items, if needed, come from a second pass over the rest.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport calloc, free, malloc

import numpy as np

from rankly._fast import _inputs

include "_select.pxi"

cdef enum:
    CATEGORY_HEAP_BUDGET = 1 << 22   # max per-category heap slots for the one-pass strategy


_NO_EXCLUDE = np.zeros(1, dtype=np.int64)
_NO_EXCLUDE.setflags(write=False)


def _empty():
    return (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32),
            np.empty(0, dtype=np.bool_))


cdef Py_ssize_t _top(const float* s, Py_ssize_t n, Py_ssize_t m, const int64_t* ex,
                     Py_ssize_t nex, Cand* out) noexcept nogil:
    """Write the m best eligible items of s, sorted, to out; return their count (-1: no memory)."""
    cdef Selector sel
    cdef Py_ssize_t cap = capacity(m, n), r, j
    cdef Cand* buf = <Cand*>malloc(cap * sizeof(Cand))
    if buf == NULL:
        return -1
    sel_init(&sel, buf, cap, m, ex, nex, n)
    sel_feed(&sel, s, 0, n)
    r = sel_finish(&sel)
    for j in range(r):
        out[j] = buf[j]
    free(buf)
    return r


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _walk(const Cand* cand, Py_ssize_t r, const int32_t* cats, Py_ssize_t k,
                      Py_ssize_t cap, int32_t* keys, int32_t* counts, uint32_t hmask,
                      unsigned char* within, Py_ssize_t* walked) noexcept nogil:
    """Greedy capped walk over cand[:r]; mark within[p]; return kept, set walked = positions seen."""
    cdef Py_ssize_t kept = 0, p
    cdef int32_t c
    cdef uint32_t h
    cdef bint ok
    for p in range(r):
        c = cats[cand[p].i]
        if c < 0:
            ok = True
        else:
            h = (<uint32_t>c * <uint32_t>2654435761u) & hmask
            while keys[h] != -1 and keys[h] != c:
                h = (h + 1) & hmask
            if keys[h] == -1:
                keys[h] = c
                counts[h] = 0
            ok = counts[h] < cap
            if ok:
                counts[h] += 1
        within[p] = ok
        kept += ok
        if kept == k:
            walked[0] = p + 1
            return kept
    walked[0] = r
    return kept


cdef object _assemble(const Cand* cand, const unsigned char* within, Py_ssize_t walked,
                      Py_ssize_t kept, Py_ssize_t k, bint fill):
    """Build the outputs from a walk: kept items plus, if asked, the best skipped ones."""
    cdef Py_ssize_t extra = 0, total, p, o = 0
    if fill and kept < k:
        extra = min(k - kept, walked - kept)
    total = kept + extra
    indices = np.empty(total, dtype=np.int64)
    values = np.empty(total, dtype=np.float32)
    flags = np.empty(total, dtype=np.bool_)
    cdef int64_t[::1] oi = indices
    cdef float[::1] ov = values
    cdef unsigned char[::1] of = flags.view(np.uint8)
    for p in range(walked):
        if within[p]:
            pass
        elif extra > 0:
            extra -= 1
        else:
            continue
        oi[o] = cand[p].i
        ov[o] = cand[p].s
        of[o] = within[p]
        o += 1
    return indices, values, flags


cdef object _by_walk(const float* s, const int32_t* cats, Py_ssize_t n, Py_ssize_t k,
                     Py_ssize_t cap, const int64_t* ex, Py_ssize_t nex, bint fill):
    """Top-M then walk; None when M would have to exceed n/8 (use the one-pass strategy)."""
    cdef Py_ssize_t m = min(n, max(4 * k, k + 64)), r, kept = 0, walked = 0, size
    cdef Cand* cand
    cdef int32_t* keys
    cdef int32_t* counts
    cdef unsigned char* within
    cdef uint32_t hmask
    while True:
        size = 16
        while size < 2 * m:
            size *= 2
        hmask = <uint32_t>(size - 1)
        cand = <Cand*>malloc(m * sizeof(Cand))
        keys = <int32_t*>malloc(size * sizeof(int32_t))
        counts = <int32_t*>malloc(size * sizeof(int32_t))
        within = <unsigned char*>malloc(m)
        try:
            if cand == NULL or keys == NULL or counts == NULL or within == NULL:
                raise MemoryError()
            with nogil:
                r = _top(s, n, m, ex, nex, cand)
                if r >= 0:
                    for walked in range(size):
                        keys[walked] = -1
                    kept = _walk(cand, r, cats, k, cap, keys, counts, hmask, within, &walked)
            if r < 0:
                raise MemoryError()
            if kept == k or r < m or m == n:
                return _assemble(cand, within, walked, kept, k, fill)
        finally:
            free(cand)
            free(keys)
            free(counts)
            free(within)
        # The walk ran out of candidates: grow M by what the keep rate says is needed.
        if max(4.0 * m, 2.0 * m * k / (kept + 1)) > n // 8:
            return None
        m = max(4 * m, (2 * m * k) // (kept + 1))
        m = min(m, n)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _category_pass(const float* s, const int32_t* cats, Py_ssize_t n,
                               Py_ssize_t ecap, Cand* heaps, Py_ssize_t* fill_count,
                               Selector* loose, const int64_t* ex, Py_ssize_t nex) noexcept nogil:
    """Keep the best ecap items per category in heaps, and uncategorized ones in `loose`."""
    cdef Py_ssize_t i, e = 0, c
    cdef float x
    cdef Cand item
    cdef Cand* h
    for i in range(n):
        x = s[i]
        if x != x:
            continue
        while e < nex and ex[e] < i:
            e += 1
        if e < nex and ex[e] == i:
            continue
        c = cats[i]
        if c < 0:
            if not loose.primed or x > loose.thr:
                sel_push(loose, x, i)
            continue
        if ecap == 0:
            continue
        h = heaps + c * ecap
        item.s = x
        item.i = i
        if fill_count[c] < ecap:
            h[fill_count[c]] = item
            heap_sift_up(h, fill_count[c])
            fill_count[c] += 1
        elif x > h[0].s:
            heap_sift_down(h, ecap, item)
    return 0


cdef object _by_category(const float* s, const int32_t* cats, Py_ssize_t n, Py_ssize_t ncat,
                         Py_ssize_t k, Py_ssize_t cap, const int64_t* ex, Py_ssize_t nex,
                         bint fill):
    """One pass per category (see the module docstring)."""
    cdef Py_ssize_t ecap = min(cap, k), c, j, t, got = 0, r, kept, lcap = capacity(k, n)
    cdef Py_ssize_t total, extra = 0
    cdef Selector loose, rest
    cdef Cand* heaps = <Cand*>malloc(max(ncat * ecap, 1) * sizeof(Cand))
    cdef Py_ssize_t* counts = <Py_ssize_t*>calloc(max(ncat, 1), sizeof(Py_ssize_t))
    cdef Cand* lbuf = <Cand*>malloc(lcap * sizeof(Cand))
    cdef Cand* pool = NULL
    cdef unsigned char* taken = NULL
    cdef Cand* fills = NULL
    try:
        if heaps == NULL or counts == NULL or lbuf == NULL:
            raise MemoryError()
        with nogil:
            sel_init(&loose, lbuf, lcap, k, ex, nex, n)
            _category_pass(s, cats, n, ecap, heaps, counts, &loose, ex, nex)
            r = sel_finish(&loose)
        total = r
        for c in range(ncat):
            total += counts[c]
        pool = <Cand*>malloc(max(total, 1) * sizeof(Cand))
        if pool == NULL:
            raise MemoryError()
        for j in range(r):
            pool[got] = lbuf[j]
            got += 1
        for c in range(ncat):
            for t in range(counts[c]):
                pool[got] = heaps[c * ecap + t]
                got += 1
        with nogil:
            if got > k:
                select_nth(pool, got, k - 1)
                got = k
            sort_cands(pool, got)
        kept = got
        extra = 0
        if fill and kept < k:
            # Every within-cap item is kept; fill from the other eligible items.
            taken = <unsigned char*>calloc(n, 1)
            fills = <Cand*>malloc(capacity(k - kept, n) * sizeof(Cand))
            if taken == NULL or fills == NULL:
                raise MemoryError()
            with nogil:
                for j in range(kept):
                    taken[pool[j].i] = 1
                sel_init(&rest, fills, capacity(k - kept, n), k - kept, ex, nex, n)
                for j in range(n):
                    if not taken[j] and s[j] == s[j] and (not rest.primed or s[j] > rest.thr):
                        sel_push(&rest, s[j], j)
                extra = sel_finish(&rest)
        indices = np.empty(kept + extra, dtype=np.int64)
        values = np.empty(kept + extra, dtype=np.float32)
        flags = np.empty(kept + extra, dtype=np.bool_)
        _merge(pool, kept, fills, extra, indices, values, flags)
        return indices, values, flags
    finally:
        free(heaps)
        free(counts)
        free(lbuf)
        free(pool)
        free(taken)
        free(fills)


cdef void _merge(const Cand* a, Py_ssize_t na, const Cand* b, Py_ssize_t nb,
                 int64_t[::1] oi, float[::1] ov, flags):
    """Merge two ranked lists; items from `a` are within cap."""
    cdef unsigned char[::1] of = flags.view(np.uint8)
    cdef Py_ssize_t x = 0, y = 0, o = 0
    while x < na or y < nb:
        if y >= nb or (x < na and better(a[x], b[y])):
            oi[o] = a[x].i
            ov[o] = a[x].s
            of[o] = 1
            x += 1
        else:
            oi[o] = b[y].i
            ov[o] = b[y].s
            of[o] = 0
            y += 1
        o += 1


def diverse_topk(scores, categories, k, cap, exclude=None, fill=True):
    """Pick k items with at most `cap` per category: `(indices, values, within_cap)`.

    Walks items in ranking order (score desc, lower index first) keeping at most `cap` per
    category (< 0 means uncategorized, never capped); with `fill`, the best skipped items fill
    the remaining slots (within_cap False). Same as `reference.diverse_topk`.
    """
    s = _inputs.as_scores_1d(scores)
    n = s.shape[0]
    cats = _inputs.as_categories(categories, n)
    k = _inputs.check_k(k)
    cap = _inputs.check_cap(cap)
    ex = _inputs.exclude_indices(exclude, n)
    ex = _NO_EXCLUDE if ex.shape[0] == 0 else np.append(ex, np.int64(0))  # sentinel for &ex[0]
    if k == 0 or n == 0:
        return _empty()
    k = min(k, n)   # at most n items come back; keeps the size arithmetic below in range
    cdef const float[::1] sv = s
    cdef const int32_t[::1] cv = cats
    cdef const int64_t[::1] exv = ex
    result = _by_walk(&sv[0], &cv[0], n, k, cap, &exv[0], exv.shape[0] - 1, fill)
    if result is not None:
        return result
    if cap == 0:
        # Only uncategorized items pass a zero cap: no per-category state at all.
        return _by_category(&sv[0], &cv[0], n, 0, k, cap, &exv[0], exv.shape[0] - 1, fill)
    top = int(cats.max())
    if (top + 1) * min(cap, k) > max(CATEGORY_HEAP_BUDGET, 4 * n):
        # Sparse or huge category ids: renumber them densely, else walk everything.
        valid = cats >= 0
        dense = np.full(n, -1, dtype=np.int32)
        dense[valid] = np.unique(cats[valid], return_inverse=True)[1]
        top = int(dense.max()) if valid.any() else -1
        if (top + 1) * min(cap, k) > max(CATEGORY_HEAP_BUDGET, 4 * n):
            return _walk_all(s, cats, n, k, cap, ex, fill)
        cats = dense
        cv = cats
    return _by_category(&sv[0], &cv[0], n, top + 1, k, cap, &exv[0], exv.shape[0] - 1, fill)


cdef object _walk_all(s, cats, Py_ssize_t n, Py_ssize_t k, Py_ssize_t cap, ex, bint fill):
    """Walk every eligible item (the fallback when per-category heaps would be too large)."""
    cdef const float[::1] sv = s
    cdef const int32_t[::1] cv = cats
    cdef const int64_t[::1] exv = ex
    cdef Py_ssize_t size = 16, r, kept, walked = 0
    while size < 2 * n:
        size *= 2
    cand = np.empty(n * sizeof(Cand), dtype=np.uint8)
    keys = np.full(size, -1, dtype=np.int32)
    counts = np.zeros(size, dtype=np.int32)
    within = np.zeros(n, dtype=np.uint8)
    cdef unsigned char[::1] cview = cand
    cdef int32_t[::1] kv = keys
    cdef int32_t[::1] ctv = counts
    cdef unsigned char[::1] wv = within
    cdef Cand* cp = <Cand*>&cview[0]
    with nogil:
        r = _top(&sv[0], n, n, &exv[0], exv.shape[0] - 1, cp)
        kept = _walk(cp, r, &cv[0], k, cap, &kv[0], &ctv[0], <uint32_t>(size - 1), &wv[0], &walked)
    if r < 0:
        raise MemoryError()
    return _assemble(cp, &wv[0], walked, kept, k, fill)
