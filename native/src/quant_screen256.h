/*
 * The LM head's screen (quant.h) on 256-bit vectors: the tile shared by the
 * AVX2 and AVX-VNNI int8 tables (quant_avx2.c, quant_avxvnni.c), each of which
 * passes its own dot product. Included by those two files only (AVX2 + FMA).
 */
#ifndef QWEN_QUANT_SCREEN256_H
#define QWEN_QUANT_SCREEN256_H

#include "kernels_x86.h"
#include "quant.h"

#define Q4_MR256 4 /* rows a pass: 8 int32 accumulators of 16 registers */

/* d + the u8 x s8 products of lo, al and of hi, ah, per column (4 k each, int32, exact). */
typedef __m256i (*q4_dot256)(__m256i d, __m256i lo, __m256i al, __m256i hi, __m256i ah);

/* A group's end for 16 columns in memory (quant.h's order): f[j] = fma(float(d[j]), sw[j] * sa,
 * f[j]), d the int32 sums of columns 0-7 (d0) and 8-15 (d1), sw their bf16 scales. */
QW_INLINE void q4_group_end16(float *f, __m256i d0, __m256i d1, const uint16_t *sw, float sa) {
    const __m256 s = _mm256_set1_ps(sa);
    const __m256 s0 = _mm256_mul_ps(bf16_to_f32x8(_mm_loadu_si128((const __m128i *)(const void *)sw)), s);
    const __m256 s1 = _mm256_mul_ps(bf16_to_f32x8(_mm_loadu_si128((const __m128i *)(const void *)(sw + 8))), s);
    _mm256_storeu_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), s0, _mm256_loadu_ps(f)));
    _mm256_storeu_ps(f + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), s1, _mm256_loadu_ps(f + 8)));
}

/* R rows x 16 columns (block b) of the screen. Half a 64-byte row of it is 8 k of 8 columns: its
 * low nibbles (q4 + 8 at 4 k) and high nibbles (the next 4), masked, are the unsigned operands,
 * against the rows' signed activations of those k (qs: 4 bytes broadcast); the sums start at -8 sum qa
 * of the row's group (qw_q4_act_sums), so they are exactly sum q4 qa. Up to 4 rows share each
 * unpacked row of weights; the f32 accumulators stay in memory between groups. `dot` is a
 * constant in each caller and inlined with the tile. */
QW_INLINE void q4_tile256(q4_dot256 dot, int R, float *C, int ldc, const int8_t *qs, int K, const float *sa,
                          const int32_t *sums, const qw_q4 *S, int b, int nr) {
    const int ng = S->ng, k8 = K / 8;
    const uint8_t *qb = S->q + (size_t)b * 8 * K;
    const uint16_t *sb = S->scale + (size_t)b * ng * 16;
    const __m256i nib = _mm256_set1_epi8(15);
    float f[Q4_MR256][16] = {{0.0f}};
    for (int g = 0; g < ng; g++) {
        __m256i d[Q4_MR256][2];
        for (int r = 0; r < R; r++) d[r][0] = d[r][1] = _mm256_set1_epi32(-sums[r * QW_Q4_MAX_NG + g]);
        const int i1 = (g + 1) * (QW_Q8_GROUP / 8) < k8 ? (g + 1) * (QW_Q8_GROUP / 8) : k8;
        for (int i = g * (QW_Q8_GROUP / 8); i < i1; i++) {
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(const void *)(qb + (size_t)i * 64));
            const __m256i v1 = _mm256_loadu_si256((const __m256i *)(const void *)(qb + (size_t)i * 64 + 32));
            const __m256i lo0 = _mm256_and_si256(v0, nib), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nib);
            const __m256i lo1 = _mm256_and_si256(v1, nib), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nib);
            for (int r = 0; r < R; r++) {
                int32_t a[2];
                __builtin_memcpy(&a[0], qs + (size_t)r * K + (size_t)i * 8, 4);
                __builtin_memcpy(&a[1], qs + (size_t)r * K + (size_t)i * 8 + 4, 4);
                const __m256i al = _mm256_set1_epi32(a[0]), ah = _mm256_set1_epi32(a[1]);
                d[r][0] = dot(d[r][0], lo0, al, hi0, ah);
                d[r][1] = dot(d[r][1], lo1, al, hi1, ah);
            }
        }
        for (int r = 0; r < R; r++) q4_group_end16(f[r], d[r][0], d[r][1], sb + g * 16, sa[(size_t)r * ng + g]);
    }
    for (int r = 0; r < R; r++) __builtin_memcpy(C + (size_t)r * ldc, f[r], (size_t)nr * sizeof(float));
}

#endif /* QWEN_QUANT_SCREEN256_H */
