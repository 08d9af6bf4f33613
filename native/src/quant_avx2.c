/*
 * Int8 weights, AVX2 product (quant.h has the maths and layout), for CPUs
 * without AVX-512 VNNI.
 *
 * Half a 64-byte row of the packed weights is 4 consecutive k of 8 columns.
 * vpmaddubsw multiplies unsigned by signed bytes and adds pairs into int16,
 * saturating: with the activations offset by 128 (up to 255) that could
 * overflow, so the activation bytes go back to signed qa (|qa| <= 127) and
 * the sign moves onto the weights: |qa| * (sign(qa) * q) is at most
 * 2 * 127 * 127 per pair, which fits. vpmaddwd by ones then adds the pairs
 * into one int32 per column and 4 k, the dot-product lanes of the VNNI
 * kernel; the sums are exactly sum qa * q, and each group ends with
 * acc = fma(float(d), sw * sa, acc): the same bits as the scalar table.
 * Register tile: 2 rows x 16 columns.
 */
#include "kernels_x86.h"
#include "quant.h"
#include "quant_screen256.h"

#define Q8_MR 2

QW_INLINE void q8_tile_avx2(int R, float *C, int ldc, const uint8_t *qa, const float *sa, const qw_q8 *W, int b, int nr,
                            const float *bias) {
    const int Kp = W->Kp, ng = W->ng, kq4 = Kp / 4;
    const int8_t *qb = W->q + (size_t)b * 16 * Kp;
    const uint16_t *sb = W->scale + (size_t)b * ng * 16;
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    __m256 f[Q8_MR][2];
    for (int r = 0; r < R; r++) f[r][0] = f[r][1] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        const int kq0 = g * (QW_Q8_GROUP / 4), kq1 = kq0 + QW_Q8_GROUP / 4 < kq4 ? kq0 + QW_Q8_GROUP / 4 : kq4;
        __m256i d[Q8_MR][2];
        for (int r = 0; r < R; r++) d[r][0] = d[r][1] = _mm256_setzero_si256();
        for (int kq = kq0; kq < kq1; kq++) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(qb + (size_t)kq * 64));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(qb + (size_t)kq * 64 + 32));
            for (int r = 0; r < R; r++) {
                int32_t a4;
                __builtin_memcpy(&a4, qa + (size_t)r * Kp + (size_t)kq * 4, 4);
                const __m256i s = _mm256_xor_si256(_mm256_set1_epi32(a4), flip); /* qa, signed */
                const __m256i u = _mm256_abs_epi8(s);
                d[r][0] = _mm256_add_epi32(d[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(w0, s)), ones));
                d[r][1] = _mm256_add_epi32(d[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(w1, s)), ones));
            }
        }
        const __m256 sw0 = bf16_to_f32x8(_mm_loadu_si128((const __m128i *)(const void *)(sb + g * 16)));
        const __m256 sw1 = bf16_to_f32x8(_mm_loadu_si128((const __m128i *)(const void *)(sb + g * 16 + 8)));
        for (int r = 0; r < R; r++) {
            const __m256 s = _mm256_set1_ps(sa[(size_t)r * ng + g]);
            f[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r][0]), _mm256_mul_ps(sw0, s), f[r][0]);
            f[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r][1]), _mm256_mul_ps(sw1, s), f[r][1]);
        }
    }
    for (int r = 0; r < R; r++) {
        float out[16];
        _mm256_storeu_ps(out, f[r][0]);
        _mm256_storeu_ps(out + 8, f[r][1]);
        float *c = C + (size_t)r * ldc;
        for (int j = 0; j < nr; j++) c[j] = bias ? out[j] + bias[j] : out[j];
    }
}

static void matmul_q8_avx2(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M, int n0,
                           int n1) {
    for (int n = n0; n < n1; n += 16) {
        const int nr = n1 - n < 16 ? n1 - n : 16;
        const float *bn = bias ? bias + n : NULL;
        for (int m = 0; m < M; m += Q8_MR) {
            float *c = C + (size_t)m * ldc + n;
            const uint8_t *qa = A->q + (size_t)m * A->Kp;
            const float *sa = A->scale + (size_t)m * A->ng;
            if (M - m >= 2) q8_tile_avx2(2, c, ldc, qa, sa, W, n / 16, nr, bn);
            else q8_tile_avx2(1, c, ldc, qa, sa, W, n / 16, nr, bn);
        }
    }
}

/* ==== The LM head's screen (quant.h, quant_screen256.h) ====
 * vpmaddubsw takes the nibbles as its unsigned operand as they are: the low and the high products of
 * a row add up in int16 lanes (4 products of at most 15 * 127 each: no saturation), vpmaddwd by
 * ones into int32 per column. */
QW_INLINE __m256i q4_dot_avx2(__m256i d, __m256i lo, __m256i al, __m256i hi, __m256i ah) {
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, al), _mm256_maddubs_epi16(hi, ah));
    return _mm256_add_epi32(d, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

QW_INLINE void q4_tile_avx2(int R, float *C, int ldc, const int8_t *qs, int K, const float *sa, const int32_t *sums,
                            const qw_q4 *S, int b, int nr) {
    q4_tile256(q4_dot_avx2, R, C, ldc, qs, K, sa, sums, S, b, nr);
}

_Static_assert(Q4_MR256 == 4, "the screen's passes are the rows the tile holds");
QW_Q4_SCREEN(screen_avx2, q4_tile_avx2, 4)

const qw_q8_kernels qw_q8_avx2 = {"avx2", matmul_q8_avx2, qw_q8_quantize_rows, qw_q8_quantize_group, screen_avx2,
                                  8};
