"""Per-slate kernels of the impression record: where a slate's items sit in other lists, and
their category features against the user's history.

The NumPy twins in `reference.py` are the specification. The serving path calls these once per
computed slate (engine/pipeline/served.py) on arrays of a few to a few hundred items, where a
dozen NumPy calls cost more than the work.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t

import numpy as np


def _int64(values, name):
    out = np.ascontiguousarray(values, dtype=np.int64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be 1-d")
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def positions(items, listed):
    """Return int64 `out[i]`: the first index of `items[i]` in `listed`, -1 where absent.
    Same as `reference.positions`."""
    it = _int64(items, "items")
    ls = _int64(listed, "listed")
    out = np.full(it.shape[0], -1, dtype=np.int64)
    cdef const int64_t[::1] iv = it
    cdef const int64_t[::1] lv = ls
    cdef int64_t[::1] ov = out
    cdef Py_ssize_t n = iv.shape[0], m = lv.shape[0], i, j
    cdef int64_t x
    with nogil:
        for i in range(n):
            x = iv[i]
            for j in range(m):
                if lv[j] == x:
                    ov[i] = j
                    break
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def category_features(history, items, categories, Py_ssize_t window):
    """Return float64 `(affinity, recency, same)` of `items` for a user whose `history` (item
    indices, newest first) is read up to its `window` newest items: the share of the item's
    category among the categorized ones there, `1 / (1 + j)` for the newest of them at `j`,
    and 1.0 when the newest categorized one shares it; 0 for an uncategorized item (category
    < 0) or a history without categories. `categories` are int32 (the model's dtype: read in
    place); an index outside them raises IndexError.
    Same as `reference.category_features`."""
    h = _int64(history, "history")
    it = _int64(items, "items")
    # int32, as the model stores them: a catalog-sized array is read in place, not copied
    cats = np.ascontiguousarray(categories, dtype=np.int32)
    if cats.ndim != 1:
        raise ValueError("categories must be 1-d")
    cdef Py_ssize_t n = it.shape[0], hn = min(h.shape[0], max(window, 0)), nc = cats.shape[0]
    affinity = np.zeros(n, dtype=np.float64)
    recency = np.zeros(n, dtype=np.float64)
    same = np.zeros(n, dtype=np.float64)
    cdef const int64_t[::1] hv = h
    cdef const int64_t[::1] iv = it
    cdef const int32_t[::1] cv = cats
    cdef double[::1] av = affinity
    cdef double[::1] rv = recency
    cdef double[::1] sv = same
    cdef Py_ssize_t i, j, known = 0, count, newest
    cdef int32_t c, last = -1
    cdef int64_t x
    cdef bint bad = False
    with nogil:
        for j in range(hn):
            x = hv[j]
            if x < 0 or x >= nc:
                bad = True
                break
        for i in range(n):
            x = iv[i]
            if x < 0 or x >= nc:
                bad = True
                break
    if bad:
        raise IndexError("an item index is outside categories")
    with nogil:
        for j in range(hn):
            c = cv[hv[j]]
            if c >= 0:
                if known == 0:
                    last = c
                known += 1
        if known > 0:
            for i in range(n):
                c = cv[iv[i]]
                if c < 0:
                    continue
                count = 0
                newest = -1
                for j in range(hn):
                    if cv[hv[j]] == c:
                        if newest < 0:
                            newest = j
                        count += 1
                if count > 0:
                    av[i] = <double>count / <double>known
                    rv[i] = 1.0 / (1.0 + <double>newest)
                if c == last:
                    sv[i] = 1.0
    return affinity, recency, same
