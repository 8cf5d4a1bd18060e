/* Threshold scan for the top-k selector (_select.pxi), with a runtime-dispatched AVX2 copy.
 *
 * rk_scan(s, j, m, thr) returns the start of the first 64-score block at or after j that holds
 * a score > thr, or the first j with fewer than 64 scores left. The loop is a branch-free count
 * per block, which the compiler vectorizes. The extension is built for the generic x86-64
 * baseline (SSE2), so wheels run anywhere; on GCC/Clang for x86 the same loop is also compiled
 * with target("avx2") and picked at import time when the CPU has AVX2 (no FMA is involved, so
 * results are identical). Call rk_simd_init() once before use.
 */
#ifndef RANKLY_SIMD_H
#define RANKLY_SIMD_H

#define RK_BLOCK 64

#define RK_SCAN_BODY                                              \
    for (; j + RK_BLOCK <= m; j += RK_BLOCK) {                    \
        int hits = 0;                                             \
        for (int t = 0; t < RK_BLOCK; t++) hits += s[j + t] > thr; \
        if (hits) return j;                                       \
    }                                                             \
    return j;

typedef Py_ssize_t (*rk_scan_fn)(const float *, Py_ssize_t, Py_ssize_t, float);

static Py_ssize_t rk_scan_generic(const float *s, Py_ssize_t j, Py_ssize_t m, float thr) {
    RK_SCAN_BODY
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define RK_HAVE_AVX2_CLONE 1
__attribute__((target("avx2")))
static Py_ssize_t rk_scan_avx2(const float *s, Py_ssize_t j, Py_ssize_t m, float thr) {
    RK_SCAN_BODY
}
#endif

static rk_scan_fn rk_scan_impl = rk_scan_generic;
static const char *rk_scan_isa = "sse2";

static void rk_simd_init(void) {
#ifdef RK_HAVE_AVX2_CLONE
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        rk_scan_impl = rk_scan_avx2;
        rk_scan_isa = "avx2";
    }
#endif
}

static inline Py_ssize_t rk_scan(const float *s, Py_ssize_t j, Py_ssize_t m, float thr) {
    return rk_scan_impl(s, j, m, thr);
}

#endif
