/*
 * Kernels, portable scalar variant — the reference the SIMD variants are
 * tested against, and the path for CPUs without AVX2.
 */
#include "kernels.h"
#include "kernels_exp.h"
#include "kernels_gelu.h"

#include <string.h>

float qw_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        if (man == 0) {
            v.u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { e++; man <<= 1; } while ((man & 0x400) == 0);
            v.u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        v.u = sign | 0x7f800000u | (man << 13);
    } else {
        v.u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    return v.f;
}

static float load_w(const void *W, qw_dtype wt, size_t i) {
    switch (wt) {
    case QW_BF16: return qw_bf16_to_f32(((const uint16_t *)W)[i]);
    case QW_F16: return qw_f16_to_f32(((const uint16_t *)W)[i]);
    default: return ((const float *)W)[i];
    }
}

static void to_f32_scalar(float *dst, const void *src, qw_dtype dt, int n) {
    if (dt == QW_KV8) {
        qw_kv8_to_f32(dst, src, n);
        return;
    }
    if (dt == QW_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int i = 0; i < n; i++) dst[i] = load_w(src, dt, (size_t)i);
}

static float dot_scalar(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float alpha, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* out[r] = dot(q, rows + r * ld, n): four rows at a time, each its own sum in
 * increasing i, as dot_scalar. */
static void dot_rows_scalar(float *out, const float *q, const float *rows, int ld, int n_rows, int n) {
    int r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const float *r0 = rows + (size_t)r * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (int i = 0; i < n; i++) {
            s0 += q[i] * r0[i];
            s1 += q[i] * r1[i];
            s2 += q[i] * r2[i];
            s3 += q[i] * r3[i];
        }
        out[r] = s0, out[r + 1] = s1, out[r + 2] = s2, out[r + 3] = s3;
    }
    for (; r < n_rows; r++) out[r] = dot_scalar(q, rows + (size_t)r * ld, n);
}

/* axpy(y, alpha[r], rows + r * ld, n) for r in order: per element, the same
 * updates in the same order, blocks of 32 elements of y kept local (in
 * registers) across the rows, then each element of the tail likewise. */
static void axpy_rows_scalar(float *y, const float *alpha, const float *rows, int ld, int n_rows, int n) {
    int i0 = 0;
    for (; i0 + 32 <= n; i0 += 32) {
        float v[32];
        memcpy(v, y + i0, sizeof(v));
        for (int r = 0; r < n_rows; r++) {
            const float *x = rows + (size_t)r * ld + i0;
            for (int i = 0; i < 32; i++) v[i] += alpha[r] * x[i];
        }
        memcpy(y + i0, v, sizeof(v));
    }
    for (; i0 < n; i0++) {
        float v = y[i0];
        for (int r = 0; r < n_rows; r++) v += alpha[r] * rows[(size_t)r * ld + i0];
        y[i0] = v;
    }
}

/* C[M,N] = A[M,K] @ W[N,K]^T (+ bias), columns [n0, n1). One weight row is
 * widened once into a small buffer and reused for every row of A. Each
 * element's order is fixed whatever M, m or the slice: bias (or 0), then
 * plus the float sum, in increasing k, of each chunk of 1024 columns, so
 * the same function is matmul_rows (batch-invariant) too. */
static void matmul_scalar(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                          const float *bias, int M, int K, int n0, int n1) {
    float wrow[1024];
    for (int n = n0; n < n1; n++) {
        const size_t base = (size_t)n * (size_t)K;
        for (int m = 0; m < M; m++) C[(size_t)m * ldc + n] = bias ? bias[n] : 0.0f;
        for (int k0 = 0; k0 < K; k0 += 1024) {
            int kb = K - k0 < 1024 ? K - k0 : 1024;
            for (int k = 0; k < kb; k++) wrow[k] = load_w(W, wt, base + (size_t)(k0 + k));
            for (int m = 0; m < M; m++) {
                const float *a = A + (size_t)m * lda + k0;
                float s = 0.0f;
                for (int k = 0; k < kb; k++) s += a[k] * wrow[k];
                C[(size_t)m * ldc + n] += s;
            }
        }
    }
}

static void gelu_scalar(float *x, int n) { qw_gelu_erf_row(x, n); }
static void softmax_scalar(float *x, int n) { qw_softmax_row(x, n); }
static void swiglu_scalar(float *g, const float *u, int n) { qw_swiglu_row(g, u, n); }

const qw_kernels qw_kernels_scalar = {
    .name = "scalar",
    .matmul = matmul_scalar,
    .matmul_rows = matmul_scalar,
    .dot = dot_scalar,
    .axpy = axpy_scalar,
    .dot_rows = dot_rows_scalar,
    .axpy_rows = axpy_rows_scalar,
    .to_f32 = to_f32_scalar,
    .gelu = gelu_scalar,
    .softmax = softmax_scalar,
    .swiglu = swiglu_scalar,
    .kv8_quantize = qw_kv8_quantize,
};
