# Streaming top-k selection shared by topk.pyx and diversity.pyx, which `include` this file
# (a cimport of a .pxd cannot be resolved here: setup.py maps _fast/ to rankly._fast).
#
# A Selector first keeps the k best candidates (score, index) in a worst-first binary heap whose
# root score is a strict threshold. Scores are compared against the threshold a block at a
# time (a branch-free count the compiler vectorizes, see _simd.h), and only blocks with a hit are looked at
# one by one, so random orders read the scores at close to memory speed and touch the heap
# only ~k*log(n/k) times. Orders that keep replacing the root (ascending scores) would cost
# log k per item, so after too many replacements the selector turns the heap into an
# unordered buffer of `cap` > k slots that is cut back to its best k by a quickselect when full:
# each cut costs O(cap) and frees cap - k slots, so every order stays O(n) overall.
#
# Items must be fed in increasing index order: a later item with a score equal to the
# threshold loses the tie, which is why the threshold test is strict, and the sorted
# exclusion list is walked with a cursor instead of searched.

cimport cython
from libc.stdint cimport int64_t, uint32_t
from libc.stdlib cimport qsort
from libc.string cimport memset

cdef extern from "_simd.h":
    enum: RK_BLOCK      # scores per threshold test
    const char* rk_scan_isa
    void rk_simd_init() noexcept nogil
    Py_ssize_t rk_scan(const float* s, Py_ssize_t j, Py_ssize_t m, float thr) noexcept nogil
    void rk_score_block(const float* items, const float* u, Py_ssize_t d, Py_ssize_t start,
                        Py_ssize_t m, float* out) noexcept nogil
    uint32_t rk_key(float x) noexcept nogil

rk_simd_init()

ctypedef struct Cand:
    float s
    int64_t i

ctypedef struct Selector:
    Cand* buf
    Py_ssize_t cap      # buffer slots; > k unless every item fits
    Py_ssize_t n        # candidates in the buffer
    Py_ssize_t k
    float thr           # k-th best score once primed; later items need a strictly larger one
    bint primed         # k candidates held, so thr is a valid strict threshold
    bint heap           # buf[:k] is a worst-first heap (else an unordered buffer)
    bint dense          # started as a buffer (k close to n): cuts narrow() first
    Py_ssize_t replaced # heap root replacements so far
    const int64_t* ex   # sorted unique excluded indices
    Py_ssize_t nex
    Py_ssize_t ex_pos   # cursor into ex


cdef inline bint better(const Cand a, const Cand b) noexcept nogil:
    """Ranking order: higher score first, then lower index. Never sees NaN."""
    return a.s > b.s or (a.s == b.s and a.i < b.i)


cdef inline int cand_cmp(const void* pa, const void* pb) noexcept nogil:
    cdef const Cand* a = <const Cand*>pa
    cdef const Cand* b = <const Cand*>pb
    if better(a[0], b[0]):
        return -1
    if better(b[0], a[0]):
        return 1
    return 0


cdef inline Py_ssize_t capacity(Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    """Buffer slots for a top-k over n items: room for 1024 arrivals (or k) between cuts."""
    cdef Py_ssize_t c = k + (k if k > 1024 else 1024)
    return c if c < n else n


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void insertion_sort(Cand* buf, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef Cand item
    for i in range(1, n):
        item = buf[i]
        j = i
        while j > 0 and better(item, buf[j - 1]):
            buf[j] = buf[j - 1]
            j -= 1
        buf[j] = item


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void sort_cands(Cand* buf, Py_ssize_t n) noexcept nogil:
    """Sort buf[:n] into ranking order: quicksort on small pieces, qsort past a depth limit."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, mid, depth = 0
    cdef Cand p, t
    while hi - lo >= 16:
        depth += 1
        if depth > 64:
            qsort(buf + lo, hi - lo + 1, sizeof(Cand), cand_cmp)
            return
        mid = lo + (hi - lo) // 2
        if better(buf[mid], buf[lo]):
            t = buf[mid]; buf[mid] = buf[lo]; buf[lo] = t
        if better(buf[hi], buf[lo]):
            t = buf[hi]; buf[hi] = buf[lo]; buf[lo] = t
        if better(buf[hi], buf[mid]):
            t = buf[hi]; buf[hi] = buf[mid]; buf[mid] = t
        p = buf[mid]
        i = lo
        j = hi
        while i <= j:
            while better(buf[i], p):
                i += 1
            while better(p, buf[j]):
                j -= 1
            if i <= j:
                t = buf[i]; buf[i] = buf[j]; buf[j] = t
                i += 1
                j -= 1
        # Recurse into the smaller side, loop on the larger one.
        if j - lo < hi - i:
            sort_cands(buf + lo, j - lo + 1)
            lo = i
        else:
            sort_cands(buf + i, hi - i + 1)
            hi = j
    insertion_sort(buf + lo, hi - lo + 1)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void select_nth(Cand* buf, Py_ssize_t n, Py_ssize_t r) noexcept nogil:
    """Reorder buf[:n] so buf[r] has rank r and buf[:r] holds the r better candidates."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, mid, rounds = 0
    cdef Cand p, t
    while hi > lo:
        if hi - lo < 16:
            insertion_sort(buf + lo, hi - lo + 1)
            return
        if rounds > 64:   # a pathological pivot sequence
            qsort(buf + lo, hi - lo + 1, sizeof(Cand), cand_cmp)
            return
        rounds += 1
        mid = lo + (hi - lo) // 2
        if better(buf[mid], buf[lo]):
            t = buf[mid]; buf[mid] = buf[lo]; buf[lo] = t
        if better(buf[hi], buf[lo]):
            t = buf[hi]; buf[hi] = buf[lo]; buf[lo] = t
        if better(buf[hi], buf[mid]):
            t = buf[hi]; buf[hi] = buf[mid]; buf[mid] = t
        p = buf[mid]
        i = lo
        j = hi
        while i <= j:
            while better(buf[i], p):
                i += 1
            while better(p, buf[j]):
                j -= 1
            if i <= j:
                t = buf[i]; buf[i] = buf[j]; buf[j] = t
                i += 1
                j -= 1
        if r <= j:
            hi = j
        elif r >= i:
            lo = i
        else:
            return


cdef enum:
    NARROW_BUCKETS = 2048   # histogram buckets of narrow()
    NARROW_MIN_EXTRA = 64   # below k + this many candidates, selecting directly is as cheap


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t narrow(Cand* buf, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Keep in buf[:m] only the candidates that can be among the best k; return m >= k.

    A histogram of order-preserving keys (over the buffer's own key range) finds the bucket
    the k-th best falls in, and every candidate in a lower bucket goes: each of them has at
    least k strictly better ones. Equal scores share a key, so ties are kept or dropped
    together. On fresh data a quickselect over all n mispredicts a branch per comparison;
    this is three branch-light passes, and the selection that follows sees ~k candidates
    (n = 1e3, k = 100 on fresh inputs: 15.3 -> 7.7 us, benchmarks/README.md).
    """
    cdef uint32_t lo = 0xFFFFFFFF, hi = 0, key, top, b
    cdef uint32_t counts[NARROW_BUCKETS]
    cdef Py_ssize_t j, w = 0, total = 0
    cdef unsigned int shift = 0
    if n <= k + NARROW_MIN_EXTRA:
        return n
    for j in range(n):
        key = rk_key(buf[j].s)
        lo = key if key < lo else lo
        hi = key if key > hi else hi
    while ((hi - lo) >> shift) >= NARROW_BUCKETS:
        shift += 1
    top = (hi - lo) >> shift
    memset(counts, 0, (top + 1) * sizeof(uint32_t))
    for j in range(n):
        counts[(rk_key(buf[j].s) - lo) >> shift] += 1
    b = top
    while True:
        total += counts[b]
        if total >= k or b == 0:
            break
        b -= 1
    for j in range(n):
        if ((rk_key(buf[j].s) - lo) >> shift) >= b:
            buf[w] = buf[j]
            w += 1
    return w


cdef inline void sel_init(Selector* sel, Cand* buf, Py_ssize_t cap, Py_ssize_t k,
                          const int64_t* ex, Py_ssize_t nex, Py_ssize_t n) noexcept nogil:
    """Start a top-k over n items; a heap only pays when k is small next to n."""
    sel.buf = buf
    sel.cap = cap
    sel.n = 0
    sel.k = k
    sel.thr = 0
    sel.primed = False
    sel.heap = k * 16 <= n or cap <= k
    sel.dense = not sel.heap
    sel.replaced = 0
    sel.ex = ex
    sel.nex = nex
    sel.ex_pos = 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void heap_sift_down(Cand* h, Py_ssize_t n, Cand item) noexcept nogil:
    """Put item at the root of the worst-first heap h[:n] and restore the heap."""
    cdef Py_ssize_t pos = 0, child
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and better(h[child], h[child + 1]):
            child += 1
        if better(item, h[child]):
            h[pos] = h[child]
            pos = child
        else:
            break
    h[pos] = item


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void heap_sift_up(Cand* h, Py_ssize_t pos) noexcept nogil:
    """Move h[pos] up the worst-first heap."""
    cdef Cand item = h[pos]
    cdef Py_ssize_t parent
    while pos > 0:
        parent = (pos - 1) // 2
        if better(h[parent], item):
            h[pos] = h[parent]
            pos = parent
        else:
            break
    h[pos] = item


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sel_push(Selector* sel, float s, int64_t i) noexcept nogil:
    """Add a non-NaN candidate that beats the threshold, unless it is excluded."""
    cdef Cand c
    while sel.ex_pos < sel.nex and sel.ex[sel.ex_pos] < i:
        sel.ex_pos += 1
    if sel.ex_pos < sel.nex and sel.ex[sel.ex_pos] == i:
        return
    c.s = s
    c.i = i
    if sel.heap:
        if sel.n < sel.k:
            sel.buf[sel.n] = c
            heap_sift_up(sel.buf, sel.n)
            sel.n += 1
            if sel.n == sel.k:
                sel.thr = sel.buf[0].s
                sel.primed = True
            return
        heap_sift_down(sel.buf, sel.n, c)
        sel.thr = sel.buf[0].s
        sel.replaced += 1
        # Guard against orders that keep replacing the root (ascending scores): a heap
        # costs log k per replacement, the buffer O(1) amortized, so switch for good.
        if sel.replaced > 8 * sel.k + 64 + i // 16 and sel.cap > sel.k:
            sel.heap = False
        return
    sel.buf[sel.n] = c
    sel.n += 1
    if sel.n == sel.cap:
        # NOTE: narrow() pays on random data; after the heap's guard switched to a buffer
        # (ascending scores) plain quickselect is faster: 3.4 vs 4.4 ms at n=1e6, k=100
        select_nth(sel.buf, narrow(sel.buf, sel.n, sel.k) if sel.dense else sel.n, sel.k - 1)
        sel.n = sel.k
        sel.thr = sel.buf[sel.k - 1].s


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sel_feed(Selector* sel, const float* s, int64_t base, Py_ssize_t m) noexcept nogil:
    """Offer scores s[:m], which belong to items base, base+1, ..., base+m-1."""
    cdef Py_ssize_t j = 0, t
    cdef float x
    while not sel.primed and j < m:
        x = s[j]
        if x == x:
            sel_push(sel, x, base + j)
        j += 1
    while True:
        j = rk_scan(s, j, m, sel.thr)
        if j + RK_BLOCK > m:
            break
        for t in range(RK_BLOCK):
            x = s[j + t]
            if x > sel.thr:
                sel_push(sel, x, base + j + t)
        j += RK_BLOCK
    while j < m:
        x = s[j]
        if x > sel.thr:
            sel_push(sel, x, base + j)
        j += 1


cdef inline Py_ssize_t sel_finish(Selector* sel) noexcept nogil:
    """Sort the best min(k, n) candidates into buf[:r] and return r."""
    cdef Py_ssize_t r = sel.k if sel.k < sel.n else sel.n
    if not sel.heap and sel.n > sel.k:
        select_nth(sel.buf, narrow(sel.buf, sel.n, sel.k), sel.k - 1)
    sort_cands(sel.buf, r)
    sel.n = r
    return r
