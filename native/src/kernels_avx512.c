/*
 * Kernels, AVX-512 (F/BW/VL/DQ) variant (16 floats per vector).
 *
 * The same two regimes and blocking as the AVX2 variant (see
 * kernels_avx2.c): a streaming matvec for decode, and for M > 1 a blocked
 * matmul whose weight tiles are widened once into an f32 buffer and reused
 * through a 3x4 micro-kernel. Tails use mask registers.
 */
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

#define MB 48  /* rows of A per block (multiple of 3) */
#define KB 512 /* columns of K per block (multiple of 16) */

/* ==== Loads ==== */

static inline __m512 load16_w(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)W + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case QW_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)W + i)));
    default: return _mm512_loadu_ps((const float *)W + i);
    }
}

/* The first n (< 16) elements, zeros after. */
static inline __m512 load16_w_tail(const void *W, qw_dtype dt, size_t i, int n) {
    const __mmask16 m = (__mmask16)((1u << n) - 1u);
    switch (dt) {
    case QW_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)W + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case QW_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)W + i));
    default: return _mm512_maskz_loadu_ps(m, (const float *)W + i);
    }
}

/* ==== Vector helpers ==== */

static void to_f32_avx512(float *dst, const void *src, qw_dtype dt, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16_w(src, dt, (size_t)i));
    if (i < n) _mm512_mask_storeu_ps(dst + i, (__mmask16)((1u << (n - i)) - 1u), load16_w_tail(src, dt, (size_t)i, n - i));
}

/* sum_i a[i] * b[i] */
static float dot_avx512(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* y[i] += alpha * x[i] */
static void axpy_avx512(float *y, float alpha, const float *x, int n) {
    __m512 a = _mm512_set1_ps(alpha);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* ==== Decode: y[n] = W[n, :] . x (+ bias), n in [n0, n1) ==== */

/* bf16 rows, K a multiple of 32: one 64-byte load holds 32 weights; even k
 * become floats by a shift, odd k by a mask, against x split once into even
 * (xe) and odd (xo) lanes. One row at a time keeps one sequential stream. */
static void matvec_bf16(float *y, const float *xe, const float *xo, const uint16_t *W, const float *bias, int K, int n0,
                        int n1) {
    const __m512i hi_mask = _mm512_set1_epi32((int)0xffff0000u);
    for (int n = n0; n < n1; n++) {
        const uint16_t *w = W + (size_t)n * K;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 32) {
            __m512i v = _mm512_loadu_si512((const void *)(w + k));
            a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(xe + k / 2), a0);
            a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi_mask)), _mm512_loadu_ps(xo + k / 2), a1);
        }
        y[n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + (bias ? bias[n] : 0.0f);
    }
}

static void matvec(float *y, const float *x, const void *W, qw_dtype wt, const float *bias, int K, int n0, int n1) {
    const int K16 = K & ~15, kt = K - K16;
    const __mmask16 mt = (__mmask16)((1u << kt) - 1u);
    const __m512 xt = _mm512_maskz_loadu_ps(mt, x + K16);
    int n = n0;
    for (; n + 4 <= n1; n += 4) {
        const size_t r0 = (size_t)n * K, r1 = r0 + K, r2 = r1 + K, r3 = r2 + K;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (int k = 0; k < K16; k += 16) {
            __m512 xv = _mm512_loadu_ps(x + k);
            a0 = _mm512_fmadd_ps(load16_w(W, wt, r0 + k), xv, a0);
            a1 = _mm512_fmadd_ps(load16_w(W, wt, r1 + k), xv, a1);
            a2 = _mm512_fmadd_ps(load16_w(W, wt, r2 + k), xv, a2);
            a3 = _mm512_fmadd_ps(load16_w(W, wt, r3 + k), xv, a3);
        }
        if (kt) {
            a0 = _mm512_fmadd_ps(load16_w_tail(W, wt, r0 + K16, kt), xt, a0);
            a1 = _mm512_fmadd_ps(load16_w_tail(W, wt, r1 + K16, kt), xt, a1);
            a2 = _mm512_fmadd_ps(load16_w_tail(W, wt, r2 + K16, kt), xt, a2);
            a3 = _mm512_fmadd_ps(load16_w_tail(W, wt, r3 + K16, kt), xt, a3);
        }
        y[n] = _mm512_reduce_add_ps(a0) + (bias ? bias[n] : 0.0f);
        y[n + 1] = _mm512_reduce_add_ps(a1) + (bias ? bias[n + 1] : 0.0f);
        y[n + 2] = _mm512_reduce_add_ps(a2) + (bias ? bias[n + 2] : 0.0f);
        y[n + 3] = _mm512_reduce_add_ps(a3) + (bias ? bias[n + 3] : 0.0f);
    }
    for (; n < n1; n++) {
        const size_t r = (size_t)n * K;
        __m512 a = _mm512_setzero_ps();
        for (int k = 0; k < K16; k += 16) a = _mm512_fmadd_ps(load16_w(W, wt, r + k), _mm512_loadu_ps(x + k), a);
        if (kt) a = _mm512_fmadd_ps(load16_w_tail(W, wt, r + K16, kt), xt, a);
        y[n] = _mm512_reduce_add_ps(a) + (bias ? bias[n] : 0.0f);
    }
}

/* ==== Prefill / encoder: blocked matmul ==== */

/* acc[i][j] = sum_k A[i][k] * B[j][k], i < MR (1..3), j < 4; B is the widened
 * weight tile [4][kp] (zero beyond kb), A rows are read with a masked tail. */
static inline void micro(const float *A, int lda, const float *B, int kp, int kb, int MR, float out[3][4]) {
    __m512 c[3][4];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) c[i][j] = _mm512_setzero_ps();
    const int k16 = kb & ~15;
    int k = 0;
    for (; k < k16; k += 16) {
        __m512 b0 = _mm512_loadu_ps(B + k), b1 = _mm512_loadu_ps(B + kp + k);
        __m512 b2 = _mm512_loadu_ps(B + 2 * kp + k), b3 = _mm512_loadu_ps(B + 3 * kp + k);
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_loadu_ps(A + (size_t)i * lda + k);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
            c[i][2] = _mm512_fmadd_ps(a, b2, c[i][2]);
            c[i][3] = _mm512_fmadd_ps(a, b3, c[i][3]);
        }
    }
    if (k < kb) {
        __mmask16 m = (__mmask16)((1u << (kb - k)) - 1u);
        __m512 b0 = _mm512_loadu_ps(B + k), b1 = _mm512_loadu_ps(B + kp + k);
        __m512 b2 = _mm512_loadu_ps(B + 2 * kp + k), b3 = _mm512_loadu_ps(B + 3 * kp + k);
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_maskz_loadu_ps(m, A + (size_t)i * lda + k);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
            c[i][2] = _mm512_fmadd_ps(a, b2, c[i][2]);
            c[i][3] = _mm512_fmadd_ps(a, b3, c[i][3]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) out[i][j] = _mm512_reduce_add_ps(c[i][j]);
}

static void matmul_avx512(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt, const float *bias,
                          int M, int K, int n0, int n1) {
    if (M <= 0 || n1 <= n0) return;
    if (M == 1) {
        if (wt == QW_BF16 && K % 32 == 0 && K <= 16384) {
            float xe[8192], xo[8192];
            for (int k = 0; k < K / 2; k++) {
                xe[k] = A[2 * k];
                xo[k] = A[2 * k + 1];
            }
            matvec_bf16(C, xe, xo, (const uint16_t *)W, bias, K, n0, n1);
        } else {
            matvec(C, A, W, wt, bias, K, n0, n1);
        }
        return;
    }
    float B[4 * (KB + 16)] __attribute__((aligned(64)));
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) C[(size_t)m * ldc + n] = bias ? bias[n] : 0.0f;
    for (int m0 = 0; m0 < M; m0 += MB) {
        const int mb = M - m0 < MB ? M - m0 : MB;
        for (int k0 = 0; k0 < K; k0 += KB) {
            const int kb = K - k0 < KB ? K - k0 : KB;
            const int kp = (kb + 15) & ~15;
            for (int n = n0; n < n1; n += 4) {
                const int nr = n1 - n < 4 ? n1 - n : 4;
                for (int j = 0; j < 4; j++) {
                    float *dst = B + j * kp;
                    if (j < nr) {
                        to_f32_avx512(dst, (const char *)W + ((size_t)(n + j) * K + k0) * (wt == QW_F32 ? 4 : 2), wt, kb);
                        memset(dst + kb, 0, (size_t)(kp - kb) * sizeof(float));
                    } else {
                        memset(dst, 0, (size_t)kp * sizeof(float));
                    }
                }
                for (int i = 0; i < mb; i += 3) {
                    const int mr = mb - i < 3 ? mb - i : 3;
                    float out[3][4];
                    const float *a = A + (size_t)(m0 + i) * lda + k0;
                    if (mr == 3) micro(a, lda, B, kp, kb, 3, out);
                    else if (mr == 2) micro(a, lda, B, kp, kb, 2, out);
                    else micro(a, lda, B, kp, kb, 1, out);
                    for (int r = 0; r < mr; r++)
                        for (int j = 0; j < nr; j++) C[(size_t)(m0 + i + r) * ldc + n + j] += out[r][j];
                }
            }
        }
    }
}

const qw_kernels qw_kernels_avx512 = {
    .name = "avx512",
    .matmul = matmul_avx512,
    .dot = dot_avx512,
    .axpy = axpy_avx512,
    .to_f32 = to_f32_avx512,
};
