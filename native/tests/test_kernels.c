/*
 * Kernel tests — every SIMD table against the scalar table on random data:
 * matmul (decode M = 1 and blocked M > 1, column slices, bias or not, all
 * weight dtypes, K with and without SIMD tails), dot, axpy, to_f32, and the
 * f16/bf16 conversions on special values. Tables the CPU cannot run are
 * reported as skipped. Tolerance: |simd - scalar| <= 1e-5 * sqrt(K) * (1 + |scalar|)
 * for values of order one (the two sum in different orders).
 */
#include "../include/qwen.h"
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

static void check(int ok, const char *what, const char *table, int M, int K, int n0, int n1, int dt) {
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL %s [%s] M=%d K=%d n=[%d,%d) dtype=%d\n", what, table, M, K, n0, n1, dt);
    }
}

static uint32_t rng = 12345u;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}

static uint16_t to_f16(float f) { /* round to nearest, normal range only (test data) */
    union { float f; uint32_t u; } v = {f};
    uint32_t sign = (v.u >> 16) & 0x8000, exp = (v.u >> 23) & 0xff, man = v.u & 0x7fffff;
    if (exp < 113) return (uint16_t)sign; /* tiny -> 0 */
    uint32_t h = sign | ((exp - 112) << 10) | (man >> 13);
    if (man & 0x1000) h++;
    return (uint16_t)h;
}

static void *make_weights(int N, int K, qw_dtype dt, float *ref) {
    size_t n = (size_t)N * K;
    void *w = malloc(n * (dt == QW_F32 ? 4 : 2));
    for (size_t i = 0; i < n; i++) {
        float f = frand();
        if (dt == QW_F32) ((float *)w)[i] = ref[i] = f;
        else if (dt == QW_BF16) ref[i] = qw_bf16_to_f32(((uint16_t *)w)[i] = qw_f32_to_bf16(f));
        else ref[i] = qw_f16_to_f32(((uint16_t *)w)[i] = to_f16(f));
    }
    return w;
}

static void test_matmul(const qw_kernels *t, int M, int K, int N, int n0, int n1, qw_dtype dt, int with_bias) {
    float *wref = malloc((size_t)N * K * sizeof(float));
    void *W = make_weights(N, K, dt, wref);
    int lda = K + 3, ldc = N + 5; /* strides larger than the rows */
    float *A = malloc((size_t)(M ? M : 1) * lda * sizeof(float));
    float *bias = malloc((size_t)N * sizeof(float));
    float *c0 = malloc((size_t)(M ? M : 1) * ldc * sizeof(float));
    float *c1 = malloc((size_t)(M ? M : 1) * ldc * sizeof(float));
    for (int i = 0; i < M * lda; i++) A[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    for (int i = 0; i < (M ? M : 1) * ldc; i++) c0[i] = c1[i] = 7.0f; /* sentinel outside the slice */
    qw_kernels_scalar.matmul(c0, ldc, A, lda, W, dt, with_bias ? bias : NULL, M, K, n0, n1);
    t->matmul(c1, ldc, A, lda, W, dt, with_bias ? bias : NULL, M, K, n0, n1);
    int ok = 1;
    float tol = 1e-5f * sqrtf((float)K);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N + 5; n++) {
            float a = c0[(size_t)m * ldc + n], b = c1[(size_t)m * ldc + n];
            if (n < n0 || n >= n1) ok &= b == 7.0f;           /* untouched */
            else ok &= fabsf(a - b) <= tol * (1.0f + fabsf(a)); /* equal maths */
        }
    /* And against a double-precision reference on the widened weights. */
    for (int m = 0; m < M && ok; m++)
        for (int n = n0; n < n1; n++) {
            double s = with_bias ? bias[n] : 0.0;
            for (int k = 0; k < K; k++) s += (double)A[(size_t)m * lda + k] * wref[(size_t)n * K + k];
            ok &= fabs(s - c1[(size_t)m * ldc + n]) <= tol * (1.0 + fabs(s));
        }
    check(ok, "matmul", t->name, M, K, n0, n1, dt);
    free(wref); free(W); free(A); free(bias); free(c0); free(c1);
}

static void test_vectors(const qw_kernels *t) {
    static const int sizes[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1000};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        int n = sizes[s];
        float a[1000], b[1000], y0[1000], y1[1000], f0[1000], f1[1000];
        uint16_t h[1000];
        for (int i = 0; i < n; i++) {
            a[i] = frand(); b[i] = frand(); y0[i] = y1[i] = frand();
            h[i] = qw_f32_to_bf16(frand());
        }
        float d0 = qw_kernels_scalar.dot(a, b, n), d1 = t->dot(a, b, n);
        check(fabsf(d0 - d1) <= 1e-5f * sqrtf((float)n + 1) * (1 + fabsf(d0)), "dot", t->name, 1, n, 0, 0, 0);
        qw_kernels_scalar.axpy(y0, 0.37f, a, n);
        t->axpy(y1, 0.37f, a, n);
        int same = 1; /* FMA vs multiply-then-add: one rounding apart */
        for (int i = 0; i < n; i++) same &= fabsf(y0[i] - y1[i]) <= 1e-6f * (1.0f + fabsf(y0[i]));
        check(same, "axpy", t->name, 1, n, 0, 0, 0);
        for (int dt = 0; dt < 3; dt++) {
            const void *src = dt == QW_F32 ? (const void *)a : (const void *)h;
            qw_kernels_scalar.to_f32(f0, src, (qw_dtype)dt, n);
            t->to_f32(f1, src, (qw_dtype)dt, n);
            check(memcmp(f0, f1, (size_t)n * sizeof(float)) == 0 || n == 0, "to_f32", t->name, 1, n, 0, 0, dt);
        }
    }
}

static void test_conversions(void) {
    /* f16: zero, one, max, smallest subnormal, inf, NaN, negative */
    check(qw_f16_to_f32(0x0000) == 0.0f && qw_f16_to_f32(0x3c00) == 1.0f, "f16 basic", "scalar", 0, 0, 0, 0, 2);
    check(qw_f16_to_f32(0x7bff) == 65504.0f && qw_f16_to_f32(0xc000) == -2.0f, "f16 max/neg", "scalar", 0, 0, 0, 0, 2);
    check(qw_f16_to_f32(0x0001) == ldexpf(1.0f, -24) && qw_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24), "f16 subnormal",
          "scalar", 0, 0, 0, 0, 2);
    check(isinf(qw_f16_to_f32(0x7c00)) && isnan(qw_f16_to_f32(0x7e00)), "f16 inf/nan", "scalar", 0, 0, 0, 0, 2);
    /* bf16: exact round trip, round to nearest even, NaN stays NaN */
    check(qw_bf16_to_f32(qw_f32_to_bf16(1.5f)) == 1.5f, "bf16 exact", "scalar", 0, 0, 0, 0, 1);
    union { uint32_t u; float f; } v;
    v.u = 0x3f808000u; /* halfway between two bf16 values, even below */
    check(qw_f32_to_bf16(v.f) == 0x3f80, "bf16 ties to even (down)", "scalar", 0, 0, 0, 0, 1);
    v.u = 0x3f818000u; /* halfway, odd below: rounds up */
    check(qw_f32_to_bf16(v.f) == 0x3f82, "bf16 ties to even (up)", "scalar", 0, 0, 0, 0, 1);
    check(isnan(qw_bf16_to_f32(qw_f32_to_bf16(NAN))), "bf16 nan", "scalar", 0, 0, 0, 0, 1);
    check(isinf(qw_bf16_to_f32(qw_f32_to_bf16(INFINITY))), "bf16 inf", "scalar", 0, 0, 0, 0, 1);
}

int main(void) {
    test_conversions();
    static const int Ms[] = {1, 2, 3, 5, 7, 16, 33, 50};
    static const int Ks[] = {1, 7, 8, 15, 16, 17, 24, 32, 40, 64, 100, 513, 1024, 3072};
    int skipped = 0;
    for (int isa = QWEN_ISA_AVX2; isa <= QWEN_ISA_AVX512; isa++) {
        int resolved = 0;
        const qw_kernels *t = qw_kernels_for(isa, &resolved);
        if (!t) {
            printf("kernels: %s not supported by this CPU: skipped\n", isa == QWEN_ISA_AVX2 ? "avx2" : "avx512");
            skipped++;
            continue;
        }
        test_vectors(t);
        for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++)
            for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
                for (int dt = 0; dt < 3; dt++) {
                    int M = Ms[mi], K = Ks[ki], N = 13;
                    if (M > 16 && K > 1024) continue; /* keep the run short */
                    test_matmul(t, M, K, N, 0, N, (qw_dtype)dt, dt != 1);
                    test_matmul(t, M, K, N, 3, 10, (qw_dtype)dt, dt == 1);
                }
        test_matmul(t, 4, 64, 8, 5, 5, QW_BF16, 1); /* empty slice */
        test_matmul(t, 0, 64, 8, 0, 8, QW_BF16, 1); /* no rows */
        test_matmul(t, 1, 1024, 300, 0, 300, QW_BF16, 0);
        test_matmul(t, 100, 896, 40, 8, 40, QW_BF16, 1);
    }
    printf("kernels: %d passed, %d failed (%d kernel sets skipped)\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
