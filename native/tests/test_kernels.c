/*
 * Kernel tests — every SIMD kernel table against the scalar reference (and
 * matmul also against a double-precision sum), on random data:
 *
 *   matmul   decode (M = 1), the rows path (M < 8) and the packed path
 *            (M >= 8, across its M, N and K blocks), K with and without SIMD
 *            tails, column slices [n0, n1) with n0 > 0 and n1 < N, all three
 *            weight dtypes, bias or not, row strides larger than the rows;
 *            M == 0 and n0 == n1 must leave C untouched.
 *   matmul_rows the same way over M = 1..33 and K around every vector width,
 *            and bit for bit batch-invariant: each row of a call with M rows
 *            equals the row computed alone (M = 1), also through column
 *            slices split at odd points, and matmul for M < 8 equals it.
 *   dot, axpy, to_f32 on lengths around every vector width.
 *   dot_rows, axpy_rows bit for bit each table's dot per row and its axpy row
 *            after row, over n around every vector width and 1..9, 37 rows
 *            with a row stride larger than n; y past [0, n) untouched.
 *            kv8_dot_rows, kv8_axpy_rows (tables that have them; 1-3 heads) bit for bit
 *            dot_rows / axpy_rows over the int8 rows' to_f32 widening.
 *   f16 / bf16 conversions: every f16 and bf16 value (subnormals, inf, NaN)
 *            against an independent formula and against each table's to_f32;
 *            f32 -> bf16 round-to-nearest-even on ties, overflow, NaN.
 *
 * Tolerance. A is uniform in [-1, 1), W uniform in [-1, 1) / sqrt(K) (then
 * rounded to its dtype), bias uniform in [-1, 1): outputs are of order one.
 * Two float sums of K terms in different orders may differ by about
 * eps * sqrt(K) each (eps = 6e-8), so the check is
 *     |simd - reference| <= 1e-5 * sqrt(K) * (1 + |reference|)
 * with reference = the scalar table, and separately the double-precision sum
 * of the same widened weights. Buffers are allocated to the exact size the
 * kernel may touch, so AddressSanitizer sees any read or write past them.
 *
 * Tables the CPU cannot run are reported as skipped (not a failure). Built
 * with -DQW_TEST_EMULATE_AVX512 (and SIMDe), the AVX-512 table is compiled
 * from portable intrinsics and tested on any CPU; with -DQW_TEST_EMULATE_NEON
 * the same holds for the NEON table (SIMDe's NEON emulation).
 *
 * Exit status is non-zero on any failure; the last line reads
 * "kernels: N passed, M failed".
 */
#include "../include/qwen.h"
#include "kernels.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simde_exact.h" /* QW_TEST_EMULATE_*: SIMDe, lane-exact where the kernels rely on it */

#ifdef QW_TEST_EMULATE_AVX512
/* ==== AVX-512 through SIMDe (CPUs without AVX-512) ==== */
#include "kernels_avx512.c"
#include "kernels_avx512bf16.c"
#endif

#ifdef QW_TEST_EMULATE_NEON
/* ==== NEON through SIMDe (CPUs other than AArch64) ==== */
#include "kernels_neon.c"
#endif

/* ==== Reporting and data ==== */

#define TEST_SEED 12345u
#include "test_util.h"

/* f32 -> f16, round to nearest even, for finite test data. */
static uint16_t to_f16(float f) {
    const uint32_t u = f2u(f), sign = (u >> 16) & 0x8000u;
    const float a = fabsf(f);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);
    if (a < ldexpf(1.0f, -14)) return (uint16_t)(sign | (uint32_t)lrintf(a * ldexpf(1.0f, 24))); /* subnormal */
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    uint32_t man = (uint32_t)lrintf(m * 2048.0f); /* 11 significant bits, ties to even */
    if (man == 2048) man = 1024, e++;
    return (uint16_t)(sign | ((uint32_t)(e + 14) << 10) | (man - 1024));
}

/* The value of an f16 from its fields (independent of qw_f16_to_f32). */
static double f16_value(uint16_t h) {
    const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    const double s = (h & 0x8000) ? -1.0 : 1.0;
    if (exp == 0) return s * ldexp(man, -24);
    if (exp == 31) return man ? NAN : s * INFINITY;
    return s * ldexp(1024 + man, exp - 25);
}

/* ==== Conversions ==== */

static void test_conversions(const qw_kernels *const *tables, int n_tables) {
    /* Every f16 value: scalar vs the formula, and each table's to_f32 vs scalar. */
    uint16_t *h = malloc(65536 * sizeof(uint16_t));
    float *f = malloc(65536 * sizeof(float));
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        h[i] = (uint16_t)i;
        const double want = f16_value((uint16_t)i);
        const float got = qw_f16_to_f32((uint16_t)i);
        if (isnan(want) ? !isnan(got) || !!signbit(got) != !!(i & 0x8000) : got != want || !!signbit(got) != !!(i & 0x8000))
            bad++;
    }
    check(!bad, "scalar", "f16 -> f32 for all 65536 values (%d wrong)", bad);
    check(qw_f16_to_f32(0x0001) == ldexpf(1.0f, -24) && qw_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24) &&
              qw_f16_to_f32(0x8001) == -ldexpf(1.0f, -24),
          "scalar", "f16 subnormals");
    check(qw_f16_to_f32(0x7bff) == 65504.0f && qw_f16_to_f32(0x0400) == ldexpf(1.0f, -14), "scalar", "f16 max / min normal");
    check(isinf(qw_f16_to_f32(0x7c00)) && qw_f16_to_f32(0xfc00) < 0 && isnan(qw_f16_to_f32(0x7e00)) &&
              isnan(qw_f16_to_f32(0x7c01)),
          "scalar", "f16 inf / NaN");
    check(f2u(qw_f16_to_f32(0x8000)) == 0x80000000u, "scalar", "f16 -0");

    /* Every bf16 value: exactly the top half of the f32. */
    bad = 0;
    for (int i = 0; i < 65536; i++) bad += f2u(qw_bf16_to_f32((uint16_t)i)) != (uint32_t)i << 16;
    check(!bad, "scalar", "bf16 -> f32 for all 65536 values (%d wrong)", bad);

    /* f32 -> bf16: round to nearest, ties to even, NaN stays NaN. */
    check(qw_f32_to_bf16(1.5f) == 0x3fc0 && qw_f32_to_bf16(-2.0f) == 0xc000, "scalar", "bf16 exact");
    check(qw_f32_to_bf16(u2f(0x3f808000u)) == 0x3f80, "scalar", "bf16 tie, even below: down");
    check(qw_f32_to_bf16(u2f(0x3f818000u)) == 0x3f82, "scalar", "bf16 tie, odd below: up");
    check(qw_f32_to_bf16(u2f(0x3f808001u)) == 0x3f81 && qw_f32_to_bf16(u2f(0x3f807fffu)) == 0x3f80, "scalar",
          "bf16 above / below the tie");
    check(qw_f32_to_bf16(u2f(0x7f7fffffu)) == 0x7f80, "scalar", "bf16 overflow to inf (FLT_MAX rounds up)");
    check(qw_f32_to_bf16(INFINITY) == 0x7f80 && qw_f32_to_bf16(-INFINITY) == 0xff80, "scalar", "bf16 inf");
    check(isnan(qw_bf16_to_f32(qw_f32_to_bf16(NAN))) && isnan(qw_bf16_to_f32(qw_f32_to_bf16(u2f(0x7f800001u)))),
          "scalar", "bf16 NaN (also one whose payload is only in the low bits)");
    check(qw_f32_to_bf16(u2f(0x00010000u)) == 0x0001 && qw_f32_to_bf16(u2f(0x80008000u)) == 0x8000, "scalar",
          "bf16 subnormals (tie to even rounds to -0)");
    /* Random values: the result is the nearest bf16 (or a tie broken to even). */
    bad = 0;
    for (int i = 0; i < 100000; i++) {
        uint32_t u = rand32();
        if (((u >> 23) & 0xff) == 0xff) continue; /* inf / NaN covered above */
        const uint16_t b = qw_f32_to_bf16(u2f(u));
        const uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u, r = u & 0xffffu;
        const uint32_t want = r < 0x8000u ? lo : r > 0x8000u ? hi : ((lo >> 16) & 1u) ? hi : lo;
        bad += ((uint32_t)b << 16) != want;
    }
    check(!bad, "scalar", "f32 -> bf16 nearest-even on 100000 random values (%d wrong)", bad);

    /* Each table's to_f32 on every f16 / bf16 value (NaNs: both NaN, same sign). */
    float *g = malloc(65536 * sizeof(float));
    for (int t = 0; t < n_tables; t++) {
        for (int dt = QW_BF16; dt <= QW_F16; dt++) {
            qw_kernels_scalar.to_f32(f, h, (qw_dtype)dt, 65536);
            tables[t]->to_f32(g, h, (qw_dtype)dt, 65536);
            bad = 0;
            for (int i = 0; i < 65536; i++)
                bad += isnan(f[i]) ? !isnan(g[i]) || !!signbit(f[i]) != !!signbit(g[i]) : f2u(f[i]) != f2u(g[i]);
            check(!bad, tables[t]->name, "to_f32 %s on all 65536 values (%d differ)", dt == QW_BF16 ? "bf16" : "f16", bad);
        }
    }
    free(g);
    free(h);
    free(f);
}

/* ==== FAST's int8 KV rows (QW_KV8) ==== */

/* qw_kv8_quantize of rows of 32-256 values: each value within half a step (its block's scale / 2) of the
 * input, the block's largest magnitude at +-127 exactly, an all-zero block all zero with scale 0, a NaN
 * stored as 0; every table's to_f32 gives bit for bit the C dequantization (q * scale). */
static void test_kv8(const qw_kernels *const *tables, int n_tables) {
    enum { NMAX = 256 };
    float x[NMAX], y[NMAX], z[NMAX];
    unsigned char row[NMAX + NMAX / QW_KV8_BLOCK * sizeof(float)];
    int bad_round = 0, bad_peak = 0, bad_zero = 0, bad_nan = 0, bad_same = 0;
    for (int n = 32; n <= NMAX; n += 32)
        for (int rep = 0; rep < 50; rep++) {
            for (int i = 0; i < n; i++) x[i] = frand() * (float)(1 + (i / 32 + rep) % 5) * (rep % 3 ? 1.0f : 1e-3f);
            if (n >= 64 && rep % 2) memset(x + 32, 0, 32 * sizeof(float)); /* a block of zeros */
            qw_kv8_quantize(row, x, n);
            qw_kv8_to_f32(y, row, n);
            for (int b = 0; b < n; b += QW_KV8_BLOCK) {
                float amax = 0.0f;
                const float scale = qw_kv8_scale(row, n, b);
                int peak = 0;
                for (int i = b; i < b + QW_KV8_BLOCK; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
                for (int i = b; i < b + QW_KV8_BLOCK; i++) {
                    bad_round += fabsf(y[i] - x[i]) > 0.5f * scale * (1.0f + 1e-5f) + 1e-30f;
                    peak |= fabsf(x[i]) == amax && abs(((const int8_t *)row)[i]) == 127;
                }
                if (amax == 0.0f)
                    for (int i = b; i < b + QW_KV8_BLOCK; i++) bad_zero += ((const int8_t *)row)[i] != 0 || scale != 0.0f;
                else
                    bad_peak += !peak;
            }
            for (int t = 0; t < n_tables; t++) {
                tables[t]->to_f32(z, row, QW_KV8, n);
                for (int i = 0; i < n; i++) bad_round += f2u(z[i]) != f2u(y[i]);
                unsigned char row2[sizeof(row)];
                tables[t]->kv8_quantize(row2, x, n);
                bad_same += memcmp(row, row2, qw_kv8_row_bytes(n)) != 0;
            }
        }
    x[5] = NAN;
    qw_kv8_quantize(row, x, 32);
    bad_nan = ((const int8_t *)row)[5] != 0;
    for (int t = 0; t < n_tables; t++) {
        unsigned char row2[sizeof(row)];
        tables[t]->kv8_quantize(row2, x, 32);
        bad_same += memcmp(row, row2, qw_kv8_row_bytes(32)) != 0;
    }
    check(!bad_same, "kv8", "every table's kv8_quantize gives qw_kv8_quantize's bytes (%d rows differ)", bad_same);
    check(!bad_round, "kv8", "values within half a step, every table's to_f32 bitwise (%d bad)", bad_round);
    check(!bad_peak, "kv8", "each block's largest magnitude at +-127 (%d blocks not)", bad_peak);
    check(!bad_zero, "kv8", "zero blocks: zeros and scale 0 (%d bad)", bad_zero);
    check(!bad_nan, "kv8", "a NaN stored as 0");
}

/* ==== Vector kernels ==== */

static void test_vectors(const qw_kernels *t) {
    static const int sizes[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 1031};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        const int n = sizes[s];
        const size_t bytes = (size_t)(n ? n : 1) * sizeof(float);
        float *a = malloc(bytes), *b = malloc(bytes), *y0 = malloc(bytes), *y1 = malloc(bytes);
        float *f0 = malloc(bytes), *f1 = malloc(bytes);
        for (int i = 0; i < n; i++) a[i] = frand(), b[i] = frand(), y0[i] = y1[i] = frand();

        const float d0 = qw_kernels_scalar.dot(a, b, n), d1 = t->dot(a, b, n);
        check(fabsf(d0 - d1) <= 1e-5f * sqrtf((float)n + 1.0f) * (1.0f + fabsf(d0)), t->name, "dot n=%d: %g vs %g", n, d1, d0);

        /* FMA vs multiply-then-add: at most one rounding apart. */
        qw_kernels_scalar.axpy(y0, 0.37f, a, n);
        t->axpy(y1, 0.37f, a, n);
        int ok = 1;
        for (int i = 0; i < n; i++) ok &= fabsf(y0[i] - y1[i]) <= 1e-6f * (1.0f + fabsf(y0[i]));
        check(ok, t->name, "axpy n=%d", n);

        for (int dt = 0; dt < 3; dt++) {
            const size_t esize = dt == QW_F32 ? 4 : 2;
            void *src = malloc((n ? n : 1) * esize); /* exact size: ASan sees over-reads */
            for (int i = 0; i < n; i++) {
                if (dt == QW_F32) ((float *)src)[i] = frand();
                else ((uint16_t *)src)[i] = (uint16_t)rand32();
            }
            qw_kernels_scalar.to_f32(f0, src, (qw_dtype)dt, n);
            t->to_f32(f1, src, (qw_dtype)dt, n);
            ok = 1;
            for (int i = 0; i < n; i++) ok &= isnan(f0[i]) ? isnan(f1[i]) : f2u(f0[i]) == f2u(f1[i]);
            check(ok, t->name, "to_f32 n=%d dtype=%d", n, dt);
            free(src);
        }
        free(a), free(b), free(y0), free(y1), free(f0), free(f1);
    }
}

/* ==== matmul ==== */

static const char *dt_name(qw_dtype dt) { return dt == QW_F32 ? "f32" : dt == QW_BF16 ? "bf16" : "f16"; }

/* W[N, K] in dtype dt; wref gets the widened values. */
static void *make_weights(int N, int K, qw_dtype dt, float *wref) {
    const size_t n = (size_t)N * K;
    const float scale = 1.0f / sqrtf((float)(K ? K : 1));
    void *w = malloc((n ? n : 1) * (dt == QW_F32 ? 4 : 2));
    for (size_t i = 0; i < n; i++) {
        const float f = frand() * scale;
        if (dt == QW_F32) ((float *)w)[i] = wref[i] = f;
        else if (dt == QW_BF16) wref[i] = qw_bf16_to_f32(((uint16_t *)w)[i] = qw_f32_to_bf16(f));
        else wref[i] = qw_f16_to_f32(((uint16_t *)w)[i] = to_f16(f));
    }
    return w;
}

/* One matmul (rows: matmul_rows) call of table t against the scalar table's
 * and a double sum. lda = K + 3 and ldc = N + 3; A and C end exactly where
 * the kernel's reach ends (the last row of A is K long), so ASan catches any
 * overrun. */
static void test_matmul_fn(const qw_kernels *t, int rows_fn, int M, int K, int N, int n0, int n1, qw_dtype dt,
                           int with_bias) {
    const int lda = K + 3, ldc = N + 3;
    float *wref = malloc(((size_t)N * K + 1) * sizeof(float));
    void *W = make_weights(N, K, dt, wref);
    const int rows = M ? M : 1; /* with M = 0, one row of C must stay untouched */
    const size_t a_len = M ? (size_t)(M - 1) * lda + K : 0, c_len = (size_t)rows * ldc;
    float *A = malloc((a_len + 1) * sizeof(float)), *bias = malloc((size_t)N * sizeof(float) + 1);
    float *c0 = malloc((c_len + 1) * sizeof(float)), *c1 = malloc((c_len + 1) * sizeof(float));
    for (size_t i = 0; i < a_len; i++) A[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    for (size_t i = 0; i < c_len; i++) c0[i] = c1[i] = SENTINEL;
    const float *b = with_bias ? bias : NULL;

    if (rows_fn) {
        qw_kernels_scalar.matmul_rows(c0, ldc, A, lda, W, dt, b, M, K, n0, n1);
        t->matmul_rows(c1, ldc, A, lda, W, dt, b, M, K, n0, n1);
    } else {
        qw_kernels_scalar.matmul(c0, ldc, A, lda, W, dt, b, M, K, n0, n1);
        t->matmul(c1, ldc, A, lda, W, dt, b, M, K, n0, n1);
    }

    const float tol = 1e-5f * sqrtf((float)(K ? K : 1));
    int untouched = 1, vs_scalar = 1, vs_double = 1;
    double worst = 0.0;
    for (int m = 0; m < rows; m++)
        for (int n = 0; n < ldc; n++) {
            const float s = c0[(size_t)m * ldc + n], v = c1[(size_t)m * ldc + n];
            if (m >= M || n < n0 || n >= n1) {
                untouched &= v == SENTINEL && s == SENTINEL;
                continue;
            }
            vs_scalar &= fabsf(v - s) <= tol * (1.0f + fabsf(s)); /* NaN fails too */
            double ref = b ? b[n] : 0.0;
            for (int k = 0; k < K; k++) ref += (double)A[(size_t)m * lda + k] * wref[(size_t)n * K + k];
            const double err = fabs(ref - v) / (1.0 + fabs(ref));
            vs_double &= err <= tol;
            if (err > worst) worst = err;
        }
    check(untouched && vs_scalar && vs_double, t->name,
          "%s M=%d K=%d N=%d n=[%d,%d) %s bias=%d: untouched=%d vs_scalar=%d vs_double=%d (worst rel. err %.3g, tol %.3g)",
          rows_fn ? "matmul_rows" : "matmul", M, K, N, n0, n1, dt_name(dt), with_bias, untouched, vs_scalar, vs_double,
          worst, tol);
    free(wref), free(W), free(A), free(bias), free(c0), free(c1);
}

static void test_matmul(const qw_kernels *t, int M, int K, int N, int n0, int n1, qw_dtype dt, int with_bias) {
    test_matmul_fn(t, 0, M, K, N, n0, n1, dt, with_bias);
}

static void test_matmuls(const qw_kernels *t) {
    static const int Ms[] = {1, 2, 3, 4, 5, 7, 8, 13, 16, 33};
    static const int Ks[] = {1, 7, 8, 15, 16, 17, 24, 40, 64, 96, 100, 120, 200, 257, 1024, 3072};
    const int N = 37;
    /* Column slices: all, inner (n0 > 0, n1 < N), one aligned panel, one column. */
    static const int slices[][2] = {{0, 37}, {3, 29}, {16, 32}, {36, 37}};
    for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++)
        for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
            for (int dt = 0; dt < 3; dt++)
                for (size_t s = 0; s < sizeof(slices) / sizeof(slices[0]); s++)
                    test_matmul(t, Ms[mi], Ks[ki], N, slices[s][0], slices[s][1], (qw_dtype)dt, (int)((s + dt) & 1));
    /* Across the packed path's blocks (MB = 192 rows of A; KB = 512 columns
     * of K for AVX2, 256 for AVX-512) and several panels, ragged slices. */
    test_matmul(t, 200, 600, 70, 5, 66, QW_BF16, 1);
    test_matmul(t, 197, 513, 48, 0, 48, QW_F16, 0);
    test_matmul(t, 64, 896, 40, 8, 40, QW_F32, 1);
    /* Decode shapes with many rows and a slice at the end of W. */
    test_matmul(t, 1, 1024, 300, 0, 300, QW_BF16, 0);
    test_matmul(t, 1, 3072, 64, 48, 64, QW_BF16, 1);
    test_matmul(t, 1, 896, 35, 17, 35, QW_F16, 1);
    /* Edge cases: empty slice, no rows, reversed slice, no columns of K. */
    test_matmul(t, 4, 64, 8, 5, 5, QW_BF16, 1);
    test_matmul(t, 40, 64, 8, 8, 8, QW_F32, 1);
    test_matmul(t, 0, 64, 8, 0, 8, QW_BF16, 1);
    test_matmul(t, 3, 64, 8, 6, 2, QW_F16, 0);
    test_matmul(t, 3, 0, 8, 1, 7, QW_F32, 1);
    test_matmul(t, 9, 0, 8, 0, 8, QW_BF16, 0);
}

/* ==== matmul_rows: exact like matmul, and batch-invariant bit for bit ==== */

/* Bitwise: C = matmul_rows(A[M, K]) over [0, N) at once must equal, row by
 * row, matmul_rows of that row alone (copied to a buffer of its own, M = 1),
 * also when computed through column slices split at odd points; and
 * matmul for M < 8 (below the packed path of every SIMD set) must equal it. */
static void test_rows_invariance(const qw_kernels *t, int M, int K, int N, qw_dtype dt, int with_bias) {
    const int lda = K + 5, ldc = N + 2;
    float *wref = malloc(((size_t)N * K + 1) * sizeof(float));
    void *W = make_weights(N, K, dt, wref);
    const size_t a_len = (size_t)(M - 1) * lda + K, c_len = (size_t)M * ldc;
    float *A = malloc(a_len * sizeof(float)), *bias = malloc((size_t)N * sizeof(float));
    float *full = malloc(c_len * sizeof(float)), *split = malloc(c_len * sizeof(float));
    float *one = malloc((size_t)K * sizeof(float)), *c1 = malloc((size_t)N * sizeof(float));
    for (size_t i = 0; i < a_len; i++) A[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    for (size_t i = 0; i < c_len; i++) full[i] = split[i] = SENTINEL;
    const float *b = with_bias ? bias : NULL;

    t->matmul_rows(full, ldc, A, lda, W, dt, b, M, K, 0, N);
    /* Slices [0, 1), [1, s1), [s1, s2), [s2, N) at odd points. */
    const int s1 = N / 3 | 1, s2 = s1 + (N - s1) / 2 + 1 < N ? s1 + (N - s1) / 2 + 1 : N;
    const int cuts[5] = {0, 1 < N ? 1 : N, s1 > 1 && s1 < N ? s1 : 1 < N ? 1 : N, s2, N};
    for (int i = 0; i < 4; i++) t->matmul_rows(split, ldc, A, lda, W, dt, b, M, K, cuts[i], cuts[i + 1]);
    int alone = 1, slices = 1, mm = 1;
    for (int m = 0; m < M; m++) {
        memcpy(one, A + (size_t)m * lda, (size_t)K * sizeof(float));
        t->matmul_rows(c1, N, one, K, W, dt, b, 1, K, 0, N);
        alone &= !memcmp(c1, full + (size_t)m * ldc, (size_t)N * sizeof(float));
        slices &= !memcmp(split + (size_t)m * ldc, full + (size_t)m * ldc, (size_t)N * sizeof(float));
    }
    if (M < 8) {
        for (size_t i = 0; i < c_len; i++) split[i] = SENTINEL;
        t->matmul(split, ldc, A, lda, W, dt, b, M, K, 0, N);
        for (int m = 0; m < M; m++) mm &= !memcmp(split + (size_t)m * ldc, full + (size_t)m * ldc, (size_t)N * sizeof(float));
    }
    check(alone && slices && mm, t->name,
          "matmul_rows bitwise invariance M=%d K=%d N=%d %s bias=%d: each row alone=%d, sliced=%d, matmul=%d", M, K, N,
          dt_name(dt), with_bias, alone, slices, mm);
    free(wref), free(W), free(A), free(bias), free(full), free(split), free(one), free(c1);
}

static void test_matmuls_rows(const qw_kernels *t) {
    static const int Ms[] = {1, 2, 3, 4, 5, 7, 8, 12, 13, 16, 17, 20, 33};
    static const int Ks[] = {1, 15, 16, 17, 31, 33, 63, 64, 65, 100, 1000, 1024};
    const int N = 37;
    /* Column slices: all, inner with odd bounds, one column at the end. */
    static const int slices[][2] = {{0, 37}, {3, 29}, {5, 36}, {36, 37}};
    for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++)
        for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
            for (int dt = 0; dt < 3; dt++) {
                for (size_t s = 0; s < sizeof(slices) / sizeof(slices[0]); s++)
                    test_matmul_fn(t, 1, Ms[mi], Ks[ki], N, slices[s][0], slices[s][1], (qw_dtype)dt,
                                   (int)((s + dt) & 1));
                test_rows_invariance(t, Ms[mi], Ks[ki], N, (qw_dtype)dt, (int)((mi + dt) & 1));
            }
    /* Decoder shapes (a slice of them), with N not a multiple of any tile. */
    test_matmul_fn(t, 1, 16, 3072, 50, 7, 49, QW_BF16, 1);
    test_rows_invariance(t, 9, 3072, 29, QW_BF16, 0);
    test_rows_invariance(t, 32, 1024, 41, QW_BF16, 1);
    test_rows_invariance(t, 6, 1024, 53, QW_F16, 1);
    /* Edge cases: empty slice, no rows, reversed slice, no columns of K. */
    test_matmul_fn(t, 1, 4, 64, 8, 5, 5, QW_BF16, 1);
    test_matmul_fn(t, 1, 0, 64, 8, 0, 8, QW_BF16, 1);
    test_matmul_fn(t, 1, 3, 64, 8, 6, 2, QW_F16, 0);
    test_matmul_fn(t, 1, 3, 0, 8, 1, 7, QW_F32, 1);
    test_matmul_fn(t, 1, 20, 0, 8, 0, 8, QW_BF16, 0);
}

/* ==== dot_rows, axpy_rows: the table's dot and axpy, bitwise ==== */

/* One (n, n_rows) case: dot_rows against dot on each row, axpy_rows against
 * n_rows axpy calls in order, on exact-size buffers (rows end where the last
 * row ends; out, alpha and one y of exactly n_rows, n_rows, n floats), and on
 * a y inside guards that must stay untouched. */
static void test_rows_case(const qw_kernels *t, int n, int n_rows, int ld) {
    enum { G = 17 }; /* guard floats either side of y */
    const size_t len = (size_t)(n_rows - 1) * ld + n, nn = n ? (size_t)n : 1;
    float *rows = malloc((len ? len : 1) * sizeof(float)), *q = malloc(nn * sizeof(float));
    float *out = malloc((size_t)n_rows * sizeof(float)), *alpha = malloc((size_t)n_rows * sizeof(float));
    float *y0 = malloc(nn * sizeof(float)), *y1 = malloc(nn * sizeof(float)), *yg = malloc((nn + 2 * G) * sizeof(float));
    for (size_t i = 0; i < len; i++) rows[i] = frand();
    for (int i = 0; i < n; i++) q[i] = frand(), y0[i] = y1[i] = yg[G + i] = frand();
    for (int r = 0; r < n_rows; r++) alpha[r] = frand();
    for (int i = 0; i < G; i++) yg[i] = yg[G + n + i] = SENTINEL;

    t->dot_rows(out, q, rows, ld, n_rows, n);
    int dots = 1;
    for (int r = 0; r < n_rows; r++) dots &= f2u(out[r]) == f2u(t->dot(q, rows + (size_t)r * ld, n));
    check(dots, t->name, "dot_rows n=%d rows=%d ld=%d: bitwise dot per row", n, n_rows, ld);

    for (int r = 0; r < n_rows; r++) t->axpy(y0, alpha[r], rows + (size_t)r * ld, n);
    t->axpy_rows(y1, alpha, rows, ld, n_rows, n);
    t->axpy_rows(yg + G, alpha, rows, ld, n_rows, n);
    int guards = 1;
    for (int i = 0; i < G; i++) guards &= yg[i] == SENTINEL && yg[G + n + i] == SENTINEL;
    check(!memcmp(y0, y1, (size_t)n * sizeof(float)) && !memcmp(y0, yg + G, (size_t)n * sizeof(float)) && guards,
          t->name, "axpy_rows n=%d rows=%d ld=%d: bitwise sequential axpy (exact y %d, guarded y %d, guards %d)", n,
          n_rows, ld, !memcmp(y0, y1, (size_t)n * sizeof(float)), !memcmp(y0, yg + G, (size_t)n * sizeof(float)),
          guards);
    free(rows), free(q), free(out), free(alpha), free(y0), free(y1), free(yg);
}

/* kv8_dot_rows, kv8_axpy_rows (where the table has them) for `heads` query heads sharing the rows,
 * each head against dot_rows and axpy_rows over the rows' to_f32 widening, bitwise; the int8 rows
 * end where the last row ends, and every head's y has guards on both sides. */
static void test_kv8_rows_case(const qw_kernels *t, int n, int n_rows, int heads) {
    enum { G = 17 };
    const size_t rb = qw_kv8_row_bytes(n);
    const int ldq = n + 3, ldo = n_rows + 5, lda = n_rows + 2, ldy = n + 2 * G;
    unsigned char *rows = malloc((size_t)n_rows * rb);
    float *wide = malloc((size_t)n_rows * n * sizeof(float)), *x = malloc((size_t)n * sizeof(float));
    float *q = malloc((size_t)heads * ldq * sizeof(float)), *alpha = malloc((size_t)heads * lda * sizeof(float));
    float *want = malloc((size_t)n_rows * sizeof(float)), *got = malloc((size_t)heads * ldo * sizeof(float));
    float *y0 = malloc((size_t)n * sizeof(float)), *yg = malloc((size_t)heads * ldy * sizeof(float));
    for (int r = 0; r < n_rows; r++) {
        for (int i = 0; i < n; i++) x[i] = frand() * (float)(1 + (i / 32 + r) % 4);
        t->kv8_quantize(rows + (size_t)r * rb, x, n);
        t->to_f32(wide + (size_t)r * n, rows + (size_t)r * rb, QW_KV8, n);
    }
    for (size_t i = 0; i < (size_t)heads * ldq; i++) q[i] = frand();
    for (size_t i = 0; i < (size_t)heads * lda; i++) alpha[i] = frand();
    for (size_t i = 0; i < (size_t)heads * ldy; i++) yg[i] = (i % ldy) < G || (i % ldy) >= (size_t)G + n ? SENTINEL : frand();
    t->kv8_dot_rows(got, ldo, q, ldq, heads, rows, n_rows, n);
    for (int h = 0; h < heads; h++) {
        t->dot_rows(want, q + (size_t)h * ldq, wide, n, n_rows, n);
        check(!memcmp(want, got + (size_t)h * ldo, (size_t)n_rows * sizeof(float)), t->name,
              "kv8_dot_rows n=%d rows=%d head %d of %d: bitwise dot_rows widened", n, n_rows, h, heads);
    }
    float *yh0 = malloc((size_t)heads * n * sizeof(float));
    for (int h = 0; h < heads; h++) memcpy(yh0 + (size_t)h * n, yg + (size_t)h * ldy + G, (size_t)n * sizeof(float));
    t->kv8_axpy_rows(yg + G, ldy, alpha, lda, heads, rows, n_rows, n);
    for (int h = 0; h < heads; h++) {
        memcpy(y0, yh0 + (size_t)h * n, (size_t)n * sizeof(float));
        t->axpy_rows(y0, alpha + (size_t)h * lda, wide, n, n_rows, n);
        const float *yh = yg + (size_t)h * ldy;
        int guards = 1;
        for (int i = 0; i < G; i++) guards &= yh[i] == SENTINEL && yh[G + n + i] == SENTINEL;
        check(!memcmp(y0, yh + G, (size_t)n * sizeof(float)) && guards, t->name,
              "kv8_axpy_rows n=%d rows=%d head %d of %d: bitwise axpy_rows widened, y's neighbours untouched", n, n_rows,
              h, heads);
    }
    free(rows), free(wide), free(x), free(q), free(alpha), free(want), free(got), free(y0), free(yg), free(yh0);
}

static void test_rows_vectors(const qw_kernels *t) {
    static const int counts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 37};
    for (int n = 0; n <= 129; n++) {
        if (n > 70 && n < 128) continue;
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
            test_rows_case(t, n, counts[c], n + 1 + (int)(c % 4) * 5); /* ld = n + 1, + 6, + 11, + 16 */
    }
    /* Decode shape: head dim 128 in a KV cache row of 8 heads, a long sequence. */
    test_rows_case(t, 128, 1001, 1024);
    if (t->kv8_dot_rows) { /* FAST's int8 cache: head sizes that are multiples of 32 */
        static const int kv_rows[] = {1, 2, 3, 4, 5, 9, 37, 1001};
        for (int n = 32; n <= 256; n += 32)
            for (size_t c = 0; c < sizeof(kv_rows) / sizeof(kv_rows[0]); c++)
                for (int heads = 1; heads <= 3; heads++) test_kv8_rows_case(t, n, kv_rows[c], heads);
    }
    /* No rows: nothing written. */
    float out = SENTINEL, y[3] = {SENTINEL, SENTINEL, SENTINEL}, x[3] = {1.0f, 2.0f, 3.0f}, a = 1.0f;
    t->dot_rows(&out, x, x, 3, 0, 3);
    t->axpy_rows(y, &a, x, 3, 0, 3);
    check(out == SENTINEL && y[0] == SENTINEL && y[1] == SENTINEL && y[2] == SENTINEL, t->name,
          "dot_rows, axpy_rows with no rows leave out and y untouched");
}

/* ==== GELU: against the exact erf in double precision ==== */

static void test_gelu(const qw_kernels *t) {
    enum { N = 48011 };
    static float x[N];
    for (int i = 0; i < N - 11; i++) x[i] = -12.0f + 24.0f * (float)i / (float)(N - 12); /* odd length: vector tails */
    const float special[11] = {0.0f, -0.0f, 1e-30f, -1e-30f, 3.925f * 1.41421356f, -3.925f * 1.41421356f, 1e4f, -1e4f,
                               INFINITY, 0.5f, -0.5f};
    for (int i = 0; i < 11; i++) x[N - 11 + i] = special[i];
    static float y[N];
    memcpy(y, x, sizeof(x));
    t->gelu(y, N);
    int bad = 0;
    double worst = 0.0;
    for (int i = 0; i < N; i++) {
        const double v = x[i], exact = isinf(v) ? (v > 0 ? v : 0.0) : 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
        const double err = isinf(exact) ? (y[i] == exact ? 0.0 : INFINITY) : fabs(y[i] - exact);
        const double tol = 2.2e-7 * fabs(v) + 2e-7 * fabs(exact); /* erf within 4.2e-7, times v/2 */
        if (!(err <= tol)) bad++;
        if (!isinf(err) && err > worst) worst = err;
    }
    check(!bad, t->name, "gelu on %d values in [-12, 12] and special ones (%d off; largest error %.2g)", N, bad, worst);
    float nan = NAN;
    t->gelu(&nan, 1);
    check(isnan(nan), t->name, "gelu(NaN) is NaN");
    check(fabs(y[N - 4]) == 0.0f && y[N - 5] == 1e4f, t->name, "gelu(-1e4) = 0 and gelu(1e4) = 1e4 exactly");
}

/* ==== softmax and SwiGLU (kernels_exp.h): against exp in double precision ==== */

static void test_exp_rows(const qw_kernels *t) {
    enum { N = 40013 }; /* odd: vector tails */
    static float x[N], y[N], u[N];
    /* softmax of one long row (a 60 s prefill's scores): -100..10, so that many underflow */
    for (int i = 0; i < N; i++) x[i] = -100.0f + 110.0f * (float)((i * 7919) % N) / (float)N;
    memcpy(y, x, sizeof(x));
    t->softmax(y, N);
    float mx = -INFINITY;
    double sum = 0.0;
    for (int i = 0; i < N; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < N; i++) sum += exp((double)(x[i] - mx)); /* of the float difference, as computed */
    int bad = 0;
    double worst = 0.0, total = 0.0;
    for (int i = 0; i < N; i++) {
        const double exact = exp((double)(x[i] - mx)) / sum, err = fabs(y[i] - exact);
        if (!(err <= 6e-7 * exact + 1e-37)) bad++; /* 2 ulp of exp, the sum's rounding, the scaling */
        if (exact > 1e-30 && err / exact > worst) worst = err / exact;
        total += y[i];
    }
    check(!bad && fabs(total - 1.0) < 1e-5, t->name,
          "softmax of %d scores in [-100, 10] (%d off; largest relative error %.2g; sum %.7f)", N, bad, worst, total);
    bad = 0;
    for (int n = 1; n <= 40; n++) { /* short rows: every tail length; a constant row is uniform */
        float r[40];
        for (int i = 0; i < n; i++) r[i] = 3.0f;
        t->softmax(r, n);
        int off = 0;
        for (int i = 0; i < n; i++) off += fabsf(r[i] - 1.0f / (float)n) > 1e-7f;
        if (off) bad++;
    }
    check(!bad, t->name, "softmax of constant rows of 1..40 is uniform");
    bad = 0;
    for (int n = 1; n <= 70; n++) { /* a row's tail gives what whole vectors give: the row padded with -inf */
        float r[70], w[80];
        const int n16 = (n + 15) / 16 * 16;
        for (int i = 0; i < n16; i++) w[i] = i < n ? (r[i] = frand() * 30.0f) : -INFINITY;
        t->softmax(r, n);
        t->softmax(w, n16);
        for (int i = 0; i < n16; i++) bad += i < n ? f2u(r[i]) != f2u(w[i]) : w[i] != 0.0f;
    }
    check(!bad, t->name, "softmax of rows of 1..70: bit for bit the row padded to whole vectors (%d differ)", bad);
    float big[3] = {-INFINITY, 0.0f, -1e30f};
    t->softmax(big, 3);
    check(big[0] == 0.0f && big[1] == 1.0f && big[2] == 0.0f, t->name, "softmax gives 0 to -inf and far scores");

    /* SwiGLU over gates in [-100, 100] */
    for (int i = 0; i < N; i++) {
        x[i] = -100.0f + 200.0f * (float)i / (float)(N - 1);
        u[i] = 0.5f + (float)(i % 13) * 0.25f;
    }
    memcpy(y, x, sizeof(x));
    t->swiglu(y, u, N);
    bad = 0;
    worst = 0.0;
    for (int i = 0; i < N; i++) {
        const double v = x[i], exact = v / (1.0 + exp(-v)) * u[i], err = fabs(y[i] - exact);
        if (!(err <= 4e-7 * fabs(exact) + 1e-35)) bad++; /* libm's expf overflows below -88.7 too: -0 */
        if (fabs(exact) > 1e-30 && err / fabs(exact) > worst) worst = err / fabs(exact);
    }
    check(!bad, t->name, "swiglu on %d gates in [-100, 100] (%d off; largest relative error %.2g)", N, bad, worst);
    float g[4] = {NAN, 1e4f, -1e4f, 0.0f}, one[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    t->swiglu(g, one, 4);
    check(isnan(g[0]) && g[1] == 1e4f && g[2] == 0.0f && g[3] == 0.0f, t->name,
          "swiglu: NaN stays NaN, SiLU(1e4) = 1e4, SiLU(-1e4) = 0, SiLU(0) = 0");
}

/* ==== The BF16 set: C = bf16(A) @ W^T, exact in its inputs ==== */

/* M >= 8 with bf16 weights takes the BF16 dot product, whose A is rounded to
 * bf16: compared with a double-precision sum of the same rounded inputs.
 * Everything else is delegated to the AVX-512 table and compared as usual. */
static void test_matmul_bf16act(const qw_kernels *t, int M, int K, int N, int n0, int n1, qw_dtype dt, int with_bias) {
    float *wref = malloc((size_t)N * K * sizeof(float));
    void *W = make_weights(N, K, dt, wref);
    const int lda = K + 3, ldc = N + 5;
    float *A = malloc((size_t)(M ? M : 1) * lda * sizeof(float));
    float *bias = malloc((size_t)N * sizeof(float));
    float *C = malloc((size_t)(M ? M : 1) * ldc * sizeof(float));
    for (int i = 0; i < M * lda; i++) A[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    for (int i = 0; i < (M ? M : 1) * ldc; i++) C[i] = 7.0f;
    t->matmul(C, ldc, A, lda, W, dt, with_bias ? bias : NULL, M, K, n0, n1);
    const int rounded = dt == QW_BF16 && M >= 8;
    const double tol = 1e-5 * sqrt((double)(K > 0 ? K : 1));
    int ok = 1;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N + 5; n++) {
            float got = C[(size_t)m * ldc + n];
            if (n < n0 || n >= n1) {
                ok &= got == 7.0f;
                continue;
            }
            double s = with_bias ? bias[n] : 0.0;
            for (int k = 0; k < K; k++) {
                float a = A[(size_t)m * lda + k];
                if (rounded) a = qw_bf16_to_f32(qw_f32_to_bf16(a));
                s += (double)a * wref[(size_t)n * K + k];
            }
            ok &= fabs(s - got) <= tol * (1.0 + fabs(s));
        }
    check(ok, t->name, "matmul (bf16 activations) M=%d K=%d N=%d n=[%d,%d) %s bias=%d", M, K, N, n0, n1, dt_name(dt),
          with_bias);
    free(wref); free(W); free(A); free(bias); free(C);
}

static void test_matmuls_bf16act(const qw_kernels *t) {
    static const int Ms[] = {1, 3, 7, 8, 9, 13, 48, 50, 101};
    static const int Ks[] = {1, 7, 16, 31, 32, 33, 64, 96, 257, 512, 513, 1030};
    for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++)
        for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
            for (int dt = 0; dt < 3; dt++) {
                test_matmul_bf16act(t, Ms[mi], Ks[ki], 13, 0, 13, (qw_dtype)dt, 1);
                test_matmul_bf16act(t, Ms[mi], Ks[ki], 13, 3, 10, (qw_dtype)dt, 0);
            }
    /* Several panels of 32 columns (full, partial, under 16), blocks of rows
     * and of K (odd tails), a slice [n0, n1) that starts inside a panel. */
    test_matmul_bf16act(t, 12, 256, 64, 0, 64, QW_BF16, 1);
    test_matmul_bf16act(t, 200, 601, 70, 0, 70, QW_BF16, 1);
    test_matmul_bf16act(t, 109, 513, 83, 5, 81, QW_BF16, 0);
    test_matmul_bf16act(t, 25, 1030, 49, 17, 49, QW_BF16, 1);
    test_matmul_bf16act(t, 0, 64, 8, 0, 8, QW_BF16, 1);
    test_matmul_bf16act(t, 16, 64, 8, 5, 5, QW_BF16, 1);
}

#if defined(QW_X86) || defined(QW_TEST_EMULATE_AVX512) /* the BF16 set's packed products: x86-64 only */
/* Weights packed once (QW_BF16P): the same bits as the table's matmul packing per call, for
 * M >= 8; for M < 8 (the table gives those to the f32 kernels) each row equals that row of a
 * product with more rows (rows are independent in the tiles). Slices start on any multiple of 16,
 * half-way into a panel too. */
static void test_bf16p(const qw_kernels *bf, int M, int K, int N, int n0, int n1, int with_bias) {
    float *wref = malloc((size_t)N * K * sizeof(float));
    uint16_t *W = make_weights(N, K, QW_BF16, wref);
    void *P = aligned_alloc(64, (qw_bf16p_size(N, K) + 63) / 64 * 64);
    qw_bf16p_pack(P, W, N, K, 0, (N + 31) / 32);
    const int Mr = M < 8 ? 8 : M, lda = K + 3, ldc = N + 5;
    float *A = malloc((size_t)Mr * lda * sizeof(float)), *bias = malloc((size_t)N * sizeof(float));
    float *want = malloc((size_t)Mr * ldc * sizeof(float)), *got = malloc((size_t)Mr * ldc * sizeof(float));
    for (int i = 0; i < Mr * lda; i++) A[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    for (int i = 0; i < Mr * ldc; i++) want[i] = got[i] = 7.0f;
    bf->matmul(want, ldc, A, lda, W, QW_BF16, with_bias ? bias : NULL, Mr, K, n0, n1);
    qw_bf16p_matmul(got, ldc, A, lda, P, with_bias ? bias : NULL, M, K, n0, n1);
    check(memcmp(got, want, (size_t)M * ldc * sizeof(float)) == 0, "bf16p",
          "packed once == packed per call, M=%d K=%d N=%d n=[%d,%d) bias=%d", M, K, N, n0, n1, with_bias);
    /* A rounded once (qw_bf16p_round_rows: bf_round_row's bytes, zeros to 32): the product on it, and
     * with its epilogue (act, then bf16), against the product above (slice only; the rest untouched) */
    const int Kp = (K + 31) / 32 * 32, ldcb = N + 7;
    uint16_t *Ab = malloc((size_t)M * Kp * sizeof(uint16_t)), *Cb = malloc((size_t)M * ldcb * sizeof(uint16_t));
    float *rounded = malloc((size_t)M * ldc * sizeof(float));
    for (int i = 0; i < M * ldc; i++) rounded[i] = 7.0f; /* as got: compared whole */
    for (int i = 0; i < M * ldcb; i++) Cb[i] = SENTINEL_BF16;
    qw_bf16p_round_rows(Ab, A, lda, M, K);
    int rows_ok = 1;
    for (int m = 0; m < M; m++)
        for (int k = 0; k < Kp; k++) rows_ok &= Ab[(size_t)m * Kp + k] == (k < K ? qw_f32_to_bf16(A[(size_t)m * lda + k]) : 0);
    qw_bf16p_matmul_rounded(rounded, ldc, Ab, P, with_bias ? bias : NULL, M, K, n0, n1);
    qw_bf16p_matmul_act_bf16(Cb, ldcb, Ab, P, with_bias ? bias : NULL, bf->gelu, M, K, n0, n1);
    int act_ok = 1;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float g = got[(size_t)m * ldc + n];
            bf->gelu(&g, 1);
            act_ok &= Cb[(size_t)m * ldcb + n] == (n >= n0 && n < n1 ? qw_f32_to_bf16(g) : SENTINEL_BF16);
        }
    check(rows_ok && memcmp(rounded, got, (size_t)M * ldc * sizeof(float)) == 0 && act_ok, "bf16p",
          "on A rounded once == packed once (f32; act + bf16), M=%d K=%d N=%d n=[%d,%d): rows=%d act=%d", M, K, N, n0,
          n1, rows_ok, act_ok);
    free(Ab); free(Cb); free(rounded);
    free(wref); free(W); free(P); free(A); free(bias); free(want); free(got);
}

/* qw_bf16p_pack_t of V [K][N] against qw_bf16p_pack of its transposed copy: the same bytes. */
static void test_bf16p_pack_t(int K, int N) {
    uint16_t *V = malloc((size_t)K * N * sizeof(uint16_t)), *Vt = malloc((size_t)K * N * sizeof(uint16_t));
    for (int k = 0; k < K; k++)
        for (int n = 0; n < N; n++) Vt[(size_t)n * K + k] = V[(size_t)k * N + n] = qw_f32_to_bf16(frand());
    const size_t bytes = qw_bf16p_size(N, K);
    void *want = malloc(bytes), *got = malloc(bytes);
    memset(want, 0xab, bytes), memset(got, 0xcd, bytes);
    qw_bf16p_pack(want, Vt, N, K, 0, (N + 31) / 32);
    qw_bf16p_pack_t(got, V, K, N);
    check(!memcmp(want, got, bytes), "bf16p", "pack_t of V [%d][%d] == pack of V^T", K, N);
    free(V), free(Vt), free(want), free(got);
}

static void test_bf16ps(const qw_kernels *bf) {
    static const int pack_K[] = {1, 2, 7, 64, 145}, pack_N[] = {6, 32, 64, 70, 128};
    for (size_t i = 0; i < sizeof(pack_K) / sizeof(pack_K[0]); i++)
        for (size_t j = 0; j < sizeof(pack_N) / sizeof(pack_N[0]); j++) test_bf16p_pack_t(pack_K[i], pack_N[j]);
    static const int Ms[] = {1, 3, 8, 13, 50, 101};
    static const int Ks[] = {1, 9, 31, 256, 257, 600};
    static const int Ns[][3] = {{13, 0, 13}, {64, 0, 64}, {70, 16, 70}, {83, 48, 80}, {100, 32, 48}, {40, 16, 32}};
    for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++)
        for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
            for (size_t ni = 0; ni < sizeof(Ns) / sizeof(Ns[0]); ni++)
                test_bf16p(bf, Ms[mi], Ks[ki], Ns[ni][0], Ns[ni][1], Ns[ni][2], (int)(mi + ni) % 2);
}

/* ==== The stem's convolution on packed weights (qw_bf16p_conv3x3) ==== */

/* qw_bf16p_conv3x3 against im2col + qw_bf16p_matmul + act (+ rounding into the padded layout) on the
 * same bf16 input, bit for bit; everything outside the slice's outputs keeps its sentinel (the bf16
 * output's border included). Explicit rows (the im2col in bf16, zeros to 32) where asked. */
static void test_bf16p_conv_case(const qw_kernels *bf, int Ti, int Fi, int Cin, int Cout, int n0, int n1, int bf16_out,
                                 int with_bias, int explicit_rows) {
    const int To = (Ti + 1) / 2, Fo = (Fi + 1) / 2, M = To * Fo, K = 9 * Cin, Kp = (K + 31) / 32 * 32, ldo = Cout + 3;
    uint16_t *in = calloc((size_t)(Ti + 2) * (Fi + 2) * Cin, sizeof(uint16_t)); /* zero border */
    for (int t = 0; t < Ti; t++)
        for (int f = 0; f < Fi; f++)
            for (int c = 0; c < Cin; c++) in[((size_t)(t + 1) * (Fi + 2) + f + 1) * Cin + c] = qw_f32_to_bf16(frand());
    float *A = malloc((size_t)M * K * sizeof(float)); /* the im2col, of values already bf16 */
    uint16_t *rows = calloc((size_t)M * Kp, sizeof(uint16_t));
    for (int to = 0; to < To; to++)
        for (int fo = 0; fo < Fo; fo++)
            for (int tap = 0; tap < 9; tap++)
                for (int c = 0; c < Cin; c++) {
                    const int m = to * Fo + fo, k = tap * Cin + c;
                    const uint16_t h = in[((size_t)(2 * to + tap % 3) * (Fi + 2) + 2 * fo + tap / 3) * Cin + c];
                    A[(size_t)m * K + k] = qw_bf16_to_f32(h), rows[(size_t)m * Kp + k] = h;
                }
    float *wref = malloc((size_t)Cout * K * sizeof(float));
    uint16_t *W = make_weights(Cout, K, QW_BF16, wref);
    void *P = aligned_alloc(64, (qw_bf16p_size(Cout, K) + 63) / 64 * 64);
    qw_bf16p_pack(P, W, Cout, K, 0, (Cout + 31) / 32);
    float *bias = malloc((size_t)Cout * sizeof(float));
    for (int n = 0; n < Cout; n++) bias[n] = frand();
    void (*act)(float *, int) = with_bias ? act_test : bf->gelu;
    float *R = malloc((size_t)M * ldo * sizeof(float));
    qw_bf16p_matmul(R, ldo, A, K, P, with_bias ? bias : NULL, M, K, n0, n1);
    for (int m = 0; m < M; m++) act(R + (size_t)m * ldo + n0, n1 - n0);
    const size_t out_len = bf16_out ? (size_t)(To + 2) * (Fo + 2) * ldo : (size_t)M * ldo;
    float *of = malloc(out_len * sizeof(float));
    uint16_t *ob = malloc(out_len * sizeof(uint16_t));
    for (size_t i = 0; i < out_len; i++) of[i] = SENTINEL, ob[i] = SENTINEL_BF16;
    const qw_conv3x3 c = {in, explicit_rows ? rows : NULL, Ti, Fi, Cin, P, with_bias ? bias : NULL, Cout, act,
                          bf16_out ? NULL : of, bf16_out ? ob : NULL, ldo};
    qw_bf16p_conv3x3(&c, n0, n1);
    int same, untouched;
    const int n_diff = conv_output_check(R, of, bf16_out ? ob : NULL, out_len, ldo, To, Fo, n0, n1, SENTINEL,
                                         SENTINEL_BF16, &same, &untouched);
    check(same && untouched, "bf16p",
          "conv3x3 Ti=%d Fi=%d Cin=%d Cout=%d n=[%d,%d) %s bias=%d %s: im2col's bits=%d (%d differ) untouched=%d", Ti,
          Fi, Cin, Cout, n0, n1, bf16_out ? "bf16" : "f32", with_bias, explicit_rows ? "explicit" : "implicit", same,
          n_diff, untouched);
    free(in), free(A), free(rows), free(wref), free(W), free(P), free(bias), free(R), free(of), free(ob);
}

static void test_bf16p_convs(const qw_kernels *bf) {
    test_bf16p_conv_case(bf, 9, 32, 32, 48, 0, 48, 0, 1, 0);    /* Fo = 16: tiles of 12 + 4 a time step */
    test_bf16p_conv_case(bf, 7, 31, 20, 16, 0, 16, 1, 0, 0);    /* odd Fi; one vector of columns; GELU */
    test_bf16p_conv_case(bf, 20, 64, 14, 100, 16, 80, 1, 1, 0); /* Fo = 32, 320 rows: 3 row panels; from 16 */
    test_bf16p_conv_case(bf, 12, 64, 32, 100, 96, 100, 0, 1, 0); /* the last 4 columns */
    test_bf16p_conv_case(bf, 1, 25, 6, 40, 0, 40, 1, 0, 0);     /* one time step, Fo = 13; 32 + 8 columns */
    /* explicit rows: one input channel, as conv1 (K = 9), and an odd Cin */
    test_bf16p_conv_case(bf, 20, 128, 1, 48, 0, 48, 1, 1, 1);   /* Fo = 64 */
    test_bf16p_conv_case(bf, 5, 13, 1, 20, 16, 20, 0, 0, 1);    /* Fo = 7: tiles across time steps */
    test_bf16p_conv_case(bf, 3, 8, 3, 36, 0, 36, 1, 1, 1);      /* K = 27: an odd K, the last pair half zero */
}
#endif

/* ==== Greedy argmax ==== */

/* qw_argmax_row against the one-chain scan it replaces: random rows of every length around the lanes
 * (1..40 and a vocabulary's), the maximum in each lane and the tail, ties (the first wins), NaNs
 * (skipped; at x[0] the answer is 0), -0 against +0, all -inf. */
static int32_t argmax_scan(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void test_argmax(void) {
    enum { N = 151936 };
    float *x = malloc(N * sizeof(float));
    int bad = 0, cases = 0;
    for (int n = 1; n <= 41; n++)
        for (int at = 0; at < n; at++)
            for (int kind = 0; kind < 6; kind++) {
                for (int i = 0; i < n; i++) x[i] = (float)(rand() % 7) - 3.0f; /* many ties */
                if (kind == 1) x[at] = NAN;
                if (kind == 2) x[at] = 100.0f, x[n - 1 - at] = 100.0f; /* two maxima */
                if (kind == 3)
                    for (int i = 0; i < n; i++) x[i] = i == at ? 0.0f : i % 2 ? -0.0f : -1.0f; /* zeros */
                if (kind == 4)
                    for (int i = 0; i < n; i++) x[i] = i == at ? NAN : -INFINITY;
                if (kind == 5) x[0] = NAN, x[at] = 50.0f;
                bad += qw_argmax_row(x, n) != argmax_scan(x, n), cases++;
            }
    for (int r = 0; r < 8; r++) {
        for (int i = 0; i < N; i++) x[i] = frand() * 20.0f;
        if (r % 2) x[(r * 7919) % N] = NAN, x[N - 1 - r] = 30.0f, x[N / 2 + r] = 30.0f;
        bad += qw_argmax_row(x, N) != argmax_scan(x, N), cases++;
    }
    check(!bad, "argmax", "qw_argmax_row is the one-chain scan's index in %d of %d rows", cases - bad, cases);
    free(x);
}

/* ==== Main ==== */

int main(void) {
    test_argmax();
    const qw_kernels *tables[5];
    int n_tables = 0;
    int best = qw_best_isa(), resolved = -1;
    check(qw_kernels_for(QWEN_ISA_AUTO, &resolved) != NULL && resolved == best, "dispatch", "AUTO resolves to the best ISA");
    check(qw_kernels_for(QWEN_ISA_SCALAR, NULL) == &qw_kernels_scalar, "dispatch", "scalar always available");

    static const int sets[] = {QWEN_ISA_AVX2, QWEN_ISA_AVX512, QWEN_ISA_NEON};
    for (int s = 0; s < 3; s++) {
        const int isa = sets[s];
        const char *name = isa == QWEN_ISA_AVX2 ? "avx2" : isa == QWEN_ISA_AVX512 ? "avx512" : "neon";
        const qw_kernels *t = qw_kernels_for(isa, NULL);
        /* x86 sets are ordered (AVX-512 implies AVX2); NEON stands alone. */
        const int has = isa == QWEN_ISA_NEON ? best == QWEN_ISA_NEON : best != QWEN_ISA_NEON && isa <= best;
        check(has ? t != NULL : t == NULL, "dispatch", "%s available iff the CPU has it", name);
#ifdef QW_TEST_EMULATE_AVX512
        if (isa == QWEN_ISA_AVX512 && !t) {
            printf("kernels: avx512 not supported by this CPU: testing the SIMDe-emulated build\n");
            t = &qw_kernels_avx512;
        }
#endif
#ifdef QW_TEST_EMULATE_NEON
        if (isa == QWEN_ISA_NEON && !t) {
            printf("kernels: neon not supported by this CPU: testing the SIMDe-emulated build\n");
            t = &qw_kernels_neon;
        }
#endif
        if (!t) {
            printf("kernels: %s not supported by this CPU: skipped\n", name);
            continue;
        }
        tables[n_tables++] = t;
    }

    /* The opt-in BF16 set rounds activations to bf16 in its GEMM: its own reference below. */
    const qw_kernels *bf = qw_kernels_for(QWEN_ISA_AVX512BF16, NULL);
    check(bf == NULL || best == QWEN_ISA_AVX512, "dispatch", "avx512bf16 only with avx512");
#ifdef QW_TEST_EMULATE_AVX512
    if (!bf) {
        printf("kernels: avx512bf16 not supported by this CPU: testing the SIMDe-emulated build\n");
        bf = &qw_kernels_avx512bf16;
    }
#endif

    test_conversions(tables, n_tables);
    test_kv8(tables, n_tables);
    {
        const int before = failed;
        test_rows_vectors(&qw_kernels_scalar);
        printf("kernels: scalar dot_rows / axpy_rows tested, %d failures\n", failed - before);
    }
    for (int i = 0; i < n_tables; i++) {
        const int before = failed;
        test_vectors(tables[i]);
        test_rows_vectors(tables[i]);
        test_gelu(tables[i]);
        test_exp_rows(tables[i]);
        test_matmuls(tables[i]);
        test_matmuls_rows(tables[i]);
        printf("kernels: %s tested, %d failures\n", tables[i]->name, failed - before);
    }
    if (bf) {
        const int before = failed;
        test_vectors(bf);
        test_rows_vectors(bf);
        test_gelu(bf);
        test_exp_rows(bf);
        test_matmuls_bf16act(bf);
#if defined(QW_X86) || defined(QW_TEST_EMULATE_AVX512)
        test_bf16ps(bf);
        test_bf16p_convs(bf);
#endif
        test_matmuls_rows(bf); /* exact f32 there too: the AVX-512 table's */
        printf("kernels: %s tested, %d failures\n", bf->name, failed - before);
    } else {
        printf("kernels: avx512bf16 not supported by this CPU: skipped\n");
    }
    printf("kernels: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
