/* Threshold scan for the top-k selector (_select.pxi) and the dot-product block of score_topk
 * (topk.pyx), each with a runtime-dispatched AVX2 copy.
 *
 * rk_scan(s, j, m, thr) returns the start of the first 64-score block at or after j that holds
 * a score > thr, or the first j with fewer than 64 scores left. The loop is a branch-free count
 * per block, which the compiler vectorizes. The extension is built for the generic x86-64
 * baseline (SSE2), so wheels run anywhere; on GCC/Clang for x86 the same loop is also compiled
 * with target("avx2") and picked at import time when the CPU has AVX2 (no FMA is involved, so
 * results are identical). Call rk_simd_init() once before use.
 *
 * rk_score_block(items, u, d, start, m, out) writes out[t] = items[start + t] . u for t < m, with
 * eight partial sums per dot product (lanes j mod 8; the tail goes to lane 0), added as
 * ((p0 + p4) + (p1 + p5)) + ((p2 + p6) + (p3 + p7)). The order of every addition is fixed by
 * the source, and target("avx2") allows no FMA contraction, so both copies give identical
 * floats: one 8-wide register per dot product instead of two 4-wide ones when the factors are
 * in cache (compute-bound), no change once memory bandwidth is the limit.
 */
#ifndef RANKLY_SIMD_H
#define RANKLY_SIMD_H

#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#define RK_BLOCK 64
#define RK_FOUR_ROWS_MAX_D 64

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

/* One dot product in the fixed order described above. */
#define RK_DOT_REDUCE(p) (((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7])))

#if defined(__GNUC__) || defined(__clang__)
/* GCC/Clang vector extensions, for the AVX2 copy: one 8-lane value (one AVX register) per
 * accumulator; the lanes' operations are exactly the scalar loop's. Four items
 * at a time, so four independent accumulators keep the adders busy (one item's sums form a
 * dependency chain); each item's additions keep the single-item order. */
typedef float rk_v8 __attribute__((vector_size(32)));

static inline rk_v8 rk_load8(const float *p) {
    rk_v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

#define RK_SCORE_V8                                                                       \
    Py_ssize_t t = 0;                                                                     \
    for (; t + 4 <= m; t += 4) {                                                          \
        const float *a0 = items + (start + t) * d, *a1 = a0 + d, *a2 = a1 + d,            \
                    *a3 = a2 + d;                                                         \
        rk_v8 p0 = {0}, p1 = {0}, p2 = {0}, p3 = {0};                                     \
        Py_ssize_t j = 0;                                                                 \
        for (; j + 8 <= d; j += 8) {                                                      \
            rk_v8 uj = rk_load8(u + j);                                                   \
            p0 += rk_load8(a0 + j) * uj;                                                  \
            p1 += rk_load8(a1 + j) * uj;                                                  \
            p2 += rk_load8(a2 + j) * uj;                                                  \
            p3 += rk_load8(a3 + j) * uj;                                                  \
        }                                                                                 \
        for (; j < d; j++) {                                                              \
            p0[0] += a0[j] * u[j];                                                        \
            p1[0] += a1[j] * u[j];                                                        \
            p2[0] += a2[j] * u[j];                                                        \
            p3[0] += a3[j] * u[j];                                                        \
        }                                                                                 \
        out[t] = RK_DOT_REDUCE(p0);                                                       \
        out[t + 1] = RK_DOT_REDUCE(p1);                                                   \
        out[t + 2] = RK_DOT_REDUCE(p2);                                                   \
        out[t + 3] = RK_DOT_REDUCE(p3);                                                   \
    }                                                                                     \
    for (; t < m; t++) {                                                                  \
        const float *a = items + (start + t) * d;                                         \
        rk_v8 p = {0};                                                                    \
        Py_ssize_t j = 0;                                                                 \
        for (; j + 8 <= d; j += 8) p += rk_load8(a + j) * rk_load8(u + j);                \
        for (; j < d; j++) p[0] += a[j] * u[j];                                           \
        out[t] = RK_DOT_REDUCE(p);                                                        \
    }
#endif

/* The baseline: GCC vectorizes the lane loop itself; with SSE2 this beats the 4-item version. */
#define RK_SCORE_BODY                                                                     \
    for (Py_ssize_t t = 0; t < m; t++) {                                                  \
        const float *a = items + (start + t) * d;                                         \
        float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                            \
        Py_ssize_t j = 0;                                                                 \
        for (; j + 8 <= d; j += 8)                                                        \
            for (int l = 0; l < 8; l++) p[l] += a[j + l] * u[j + l];                      \
        for (; j < d; j++) p[0] += a[j] * u[j];                                           \
        out[t] = RK_DOT_REDUCE(p);                                                        \
    }

typedef void (*rk_score_fn)(const float *, const float *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                            float *);

static void rk_score_generic(const float *items, const float *u, Py_ssize_t d,
                             Py_ssize_t start, Py_ssize_t m, float *out) {
    RK_SCORE_BODY
}

#ifdef RK_HAVE_AVX2_CLONE
__attribute__((target("avx2")))
static void rk_score_avx2(const float *items, const float *u, Py_ssize_t d,
                          Py_ssize_t start, Py_ssize_t m, float *out) {
    /* Four rows at a time pays up to d = 64 (30k x 64: 0.115 vs 0.14 ms one row at a time);
     * from d = 96 it was 1.6-2.8x slower than one row at a time (1e5 x 128: 4.4 vs 1.6 ms),
     * so wider rows stream one at a time, the loop vectorized by the compiler. */
    if (d <= RK_FOUR_ROWS_MAX_D) {
        RK_SCORE_V8
    } else {
        RK_SCORE_BODY
    }
}
#endif

static rk_scan_fn rk_scan_impl = rk_scan_generic;
static rk_score_fn rk_score_impl = rk_score_generic;
static const char *rk_scan_isa = "sse2";

static void rk_simd_init(void) {
#ifdef RK_HAVE_AVX2_CLONE
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && !getenv("RANKLY_NO_AVX2")) {
        rk_scan_impl = rk_scan_avx2;
        rk_score_impl = rk_score_avx2;
        rk_scan_isa = "avx2";
    }
#endif
}

static inline void rk_score_block(const float *items, const float *u, Py_ssize_t d,
                                  Py_ssize_t start, Py_ssize_t m, float *out) {
    rk_score_impl(items, u, d, start, m, out);
}

/* An order-preserving unsigned key of a non-NaN float: a > b exactly when key(a) > key(b),
 * and equal floats share a key (-0.0 is made +0.0 first, so both zeros tie as they compare). */
static inline uint32_t rk_key(float x) {
    uint32_t u;
    x += 0.0f;
    memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline Py_ssize_t rk_scan(const float *s, Py_ssize_t j, Py_ssize_t m, float thr) {
    return rk_scan_impl(s, j, m, thr);
}

#endif
