/*
 * Kernels, AVX-512 BF16 variant — opt-in (QWEN_ISA_AVX512BF16), never AUTO.
 *
 * For bf16 weights and M >= 8 (encoder, prefill) matmul uses the BF16 dot
 * product: vdpbf16ps accumulates, per f32 lane, a[2i] * w[2i] + a[2i+1] * w[2i+1]
 * in f32. The weights are used exactly as stored; the activations A are
 * rounded to bf16 (nearest even) once per block. That rounding (8 bits of
 * mantissa) is why this set is opt-in: results differ from the f32 sets by
 * about 1e-3 relative, so greedy tokens can differ from the reference on
 * near ties. Everything else (decode, f16/f32 weights, dot, axpy, to_f32)
 * runs the AVX-512 table.
 *
 * C[m, n] = sum_k bf16(A[m, k]) * W[n, k] (+ bias[n]), 3x4 tiles of C, each
 * a 512-bit accumulator over pairs of k; both operands are read contiguously
 * along K, so no packing is needed.
 */
#include "kernels.h"

#include <string.h>

#ifndef QW_TEST_EMULATE_AVX512 /* else the test program provides the intrinsics */
#include <immintrin.h>
#endif

#define BF_MB 48  /* rows of A per block (multiple of 3) */
#define BF_KB 512 /* columns of K per block (multiple of 32) */

/* Sum of the 16 lanes. */
static inline float bf_hsum(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Reinterprets 32 bf16 values as the dot product's operand type. */
static inline __m512bh bf_as_bh(__m512i v) {
    __m512bh r;
    memcpy(&r, &v, sizeof(r));
    return r;
}

/* dst[i] = bf16(src[i]) for i < n (round to nearest even, NaN kept quiet), zeros up to np. */
static void bf_round_row(uint16_t *dst, const float *src, int n, int np) {
    int i = 0;
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    for (; i + 16 <= n; i += 16) {
        __m512i u = _mm512_castps_si512(_mm512_loadu_ps(src + i));
        __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
        __mmask16 nan = _mm512_cmp_ps_mask(_mm512_castsi512_ps(u), _mm512_castsi512_ps(u), _CMP_UNORD_Q);
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
        uint32_t lanes[16];
        _mm512_storeu_si512((void *)lanes, _mm512_srli_epi32(r, 16));
        for (int j = 0; j < 16; j++) dst[i + j] = (uint16_t)lanes[j];
    }
    for (; i < n; i++) dst[i] = qw_f32_to_bf16(src[i]);
    for (; i < np; i++) dst[i] = 0;
}

/* out[i][j] = sum over k < kp of A[i][k] * W_j[k]; A rows of bf16 (stride lda, zero-padded to kp),
 * W_j rows of bf16 (stride ldw) whose last kb - (kp - 32) values are read with a mask. */
static inline void bf_micro(const uint16_t *A, int lda, const uint16_t *W, size_t ldw, int kb, int mr, int nr,
                         float out[3][4]) {
    __m512 c[3][4];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) c[i][j] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= kb; k += 32) {
        __m512i w[4];
        for (int j = 0; j < 4; j++) w[j] = _mm512_loadu_si512((const void *)(W + (size_t)(j < nr ? j : 0) * ldw + k));
        for (int i = 0; i < mr; i++) {
            __m512bh a = bf_as_bh(_mm512_loadu_si512((const void *)(A + (size_t)i * lda + k)));
            for (int j = 0; j < 4; j++) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, bf_as_bh(w[j]));
        }
    }
    if (k < kb) { /* K tail: masked weight loads; A is zero-padded */
        const __mmask32 m = (__mmask32)((1ull << (kb - k)) - 1ull);
        __m512i w[4];
        for (int j = 0; j < 4; j++) w[j] = _mm512_maskz_loadu_epi16(m, W + (size_t)(j < nr ? j : 0) * ldw + k);
        for (int i = 0; i < mr; i++) {
            __m512bh a = bf_as_bh(_mm512_loadu_si512((const void *)(A + (size_t)i * lda + k)));
            for (int j = 0; j < 4; j++) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, bf_as_bh(w[j]));
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < 4; j++) out[i][j] = bf_hsum(c[i][j]);
}

static void matmul_avx512bf16(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                              const float *bias, int M, int K, int n0, int n1) {
    if (wt != QW_BF16 || M < 8) {
        qw_kernels_avx512.matmul(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
        return;
    }
    if (n1 <= n0) return;
    uint16_t Ab[BF_MB * BF_KB]; /* 48 KiB: the block of A, rounded to bf16 */
    const uint16_t *Wb = (const uint16_t *)W;
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) C[(size_t)m * ldc + n] = bias ? bias[n] : 0.0f;
    for (int m0 = 0; m0 < M; m0 += BF_MB) {
        const int mb = M - m0 < BF_MB ? M - m0 : BF_MB;
        for (int k0 = 0; k0 < K; k0 += BF_KB) {
            const int kb = K - k0 < BF_KB ? K - k0 : BF_KB;
            const int kp = (kb + 31) & ~31;
            for (int i = 0; i < mb; i++) bf_round_row(Ab + (size_t)i * kp, A + (size_t)(m0 + i) * lda + k0, kb, kp);
            for (int n = n0; n < n1; n += 4) {
                const int nr = n1 - n < 4 ? n1 - n : 4;
                const uint16_t *w = Wb + (size_t)n * K + k0;
                for (int i = 0; i < mb; i += 3) {
                    const int mr = mb - i < 3 ? mb - i : 3;
                    float out[3][4];
                    const uint16_t *a = Ab + (size_t)i * kp;
                    if (mr == 3) bf_micro(a, kp, w, (size_t)K, kb, 3, nr, out);
                    else if (mr == 2) bf_micro(a, kp, w, (size_t)K, kb, 2, nr, out);
                    else bf_micro(a, kp, w, (size_t)K, kb, 1, nr, out);
                    for (int r = 0; r < mr; r++)
                        for (int j = 0; j < nr; j++) C[(size_t)(m0 + i + r) * ldc + n + j] += out[r][j];
                }
            }
        }
    }
}

static float dot_bf16set(const float *a, const float *b, int n) { return qw_kernels_avx512.dot(a, b, n); }
static void axpy_bf16set(float *y, float alpha, const float *x, int n) { qw_kernels_avx512.axpy(y, alpha, x, n); }
static void to_f32_bf16set(float *dst, const void *src, qw_dtype dt, int n) { qw_kernels_avx512.to_f32(dst, src, dt, n); }

const qw_kernels qw_kernels_avx512bf16 = {
    .name = "avx512bf16",
    .matmul = matmul_avx512bf16,
    .dot = dot_bf16set,
    .axpy = axpy_bf16set,
    .to_f32 = to_f32_bf16set,
};
