/*
 * Int8 weights, AArch64 NEON product (quant.h has the maths and layout), on
 * baseline Advanced SIMD: no dot-product extension needed.
 *
 * A 16-byte quarter of a 64-byte row of the packed weights is 4 consecutive
 * k of 4 columns. The activation bytes go back to signed qa (xor 0x80,
 * |qa| <= 127) and are broadcast 4 at a time; smull / smull2 multiply 8
 * weight bytes (2 columns x 4 k) by them into int16 lanes, and smlal adds
 * the products of the next 4 k on top: two products of at most 127 * 127
 * per lane, which fits int16. sadalp then adds lane pairs into int32 (per
 * column, k 0-1 and k 2-3 of each step), and at the group's end one addp
 * per 4 columns leaves one int32 per column: exactly sum qa * q, so no zsum
 * is needed. Each group ends with acc = fma(float(d), sw * sa, acc), the
 * order quant.h prescribes: the same bits as the scalar table.
 * Register tile: 2 rows x 16 columns (8 int32 sums and 4 f32 accumulators
 * per row).
 *
 * On x86 the tests compile this file over SIMDe's NEON emulation
 * (QW_NEON_SIMDE), as kernels_neon.c.
 */
#include "quant.h"

#ifdef QW_NEON_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#else
#include <arm_neon.h>
#endif

#ifdef QW_TEST_EMULATE_NEON /* as in kernels_x86.h: keep the emulated test's compile quick */
#define QW_INLINE static inline
#else
#define QW_INLINE static inline __attribute__((always_inline))
#endif

#define Q8_NEON_MR 2 /* rows of C per register tile */

/* 4 signed activation bytes (the screen's qs), repeated over the 16 lanes. */
QW_INLINE int8x16_t q4_act4(const int8_t *qs) {
    int32_t a4;
    __builtin_memcpy(&a4, qs, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(a4));
}

/* qa[4 kq .. 4 kq + 4) as signed bytes, repeated over the 16 lanes. */
QW_INLINE int8x16_t q8_act4(const uint8_t *qa) {
    return veorq_s8(q4_act4((const int8_t *)(const void *)qa), vdupq_n_s8((int8_t)0x80));
}

/* C[0:R, 0:nr] for R rows from the packed column block b. */
QW_INLINE void q8_tile_neon(int R, float *C, int ldc, const uint8_t *qa, const float *sa, const qw_q8 *W, int b, int nr,
                            const float *bias) {
    const int Kp = W->Kp, ng = W->ng, kq4 = Kp / 4;
    const int8_t *qb = W->q + (size_t)b * 16 * Kp;
    const uint16_t *sb = W->scale + (size_t)b * ng * 16;
    float32x4_t f[Q8_NEON_MR][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) f[r][j] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        const int kq0 = g * (QW_Q8_GROUP / 4), kq1 = kq0 + QW_Q8_GROUP / 4 < kq4 ? kq0 + QW_Q8_GROUP / 4 : kq4;
        /* d[r][2j] lanes: columns 4j, 4j+1 x (k 0-1, k 2-3); d[r][2j+1]: columns 4j+2, 4j+3 */
        int32x4_t d[Q8_NEON_MR][8];
        for (int r = 0; r < R; r++)
            for (int j = 0; j < 8; j++) d[r][j] = vdupq_n_s32(0);
        int kq = kq0;
        for (; kq + 2 <= kq1; kq += 2) { /* two steps of 4 k per int16 product */
            const int8_t *w = qb + (size_t)kq * 64;
            int8x16_t a0[Q8_NEON_MR], a1[Q8_NEON_MR];
            for (int r = 0; r < R; r++) {
                a0[r] = q8_act4(qa + (size_t)r * Kp + (size_t)kq * 4);
                a1[r] = q8_act4(qa + (size_t)r * Kp + (size_t)kq * 4 + 4);
            }
            for (int j = 0; j < 4; j++) {
                const int8x16_t w0 = vld1q_s8(w + 16 * j), w1 = vld1q_s8(w + 64 + 16 * j);
                for (int r = 0; r < R; r++) {
                    int16x8_t lo = vmull_s8(vget_low_s8(w0), vget_low_s8(a0[r]));
                    int16x8_t hi = vmull_high_s8(w0, a0[r]);
                    lo = vmlal_s8(lo, vget_low_s8(w1), vget_low_s8(a1[r]));
                    hi = vmlal_high_s8(hi, w1, a1[r]);
                    d[r][2 * j] = vpadalq_s16(d[r][2 * j], lo);
                    d[r][2 * j + 1] = vpadalq_s16(d[r][2 * j + 1], hi);
                }
            }
        }
        if (kq < kq1) { /* an odd last step (a short last group) */
            const int8_t *w = qb + (size_t)kq * 64;
            int8x16_t a0[Q8_NEON_MR];
            for (int r = 0; r < R; r++) a0[r] = q8_act4(qa + (size_t)r * Kp + (size_t)kq * 4);
            for (int j = 0; j < 4; j++) {
                const int8x16_t w0 = vld1q_s8(w + 16 * j);
                for (int r = 0; r < R; r++) {
                    d[r][2 * j] = vpadalq_s16(d[r][2 * j], vmull_s8(vget_low_s8(w0), vget_low_s8(a0[r])));
                    d[r][2 * j + 1] = vpadalq_s16(d[r][2 * j + 1], vmull_high_s8(w0, a0[r]));
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float32x4_t s = vdupq_n_f32(sa[(size_t)r * ng + g]);
            for (int j = 0; j < 4; j++) {
                const int32x4_t dj = vpaddq_s32(d[r][2 * j], d[r][2 * j + 1]); /* columns 4j .. 4j+3 */
                f[r][j] = vfmaq_f32(f[r][j], vcvtq_f32_s32(dj), vmulq_f32(vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(sb + g * 16 + 4 * j), 16)), s));
            }
        }
    }
    for (int r = 0; r < R; r++) {
        float *c = C + (size_t)r * ldc;
        if (nr == 16) {
            for (int j = 0; j < 4; j++)
                vst1q_f32(c + 4 * j, bias ? vaddq_f32(f[r][j], vld1q_f32(bias + 4 * j)) : f[r][j]);
        } else { /* the last, partial block: only nr columns of C (and of bias) exist */
            float out[16];
            for (int j = 0; j < 4; j++) vst1q_f32(out + 4 * j, f[r][j]);
            for (int j = 0; j < nr; j++) c[j] = bias ? out[j] + bias[j] : out[j];
        }
    }
}

static void matmul_q8_neon(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M, int n0,
                           int n1) {
    for (int n = n0; n < n1; n += 16) {
        const int nr = n1 - n < 16 ? n1 - n : 16;
        const float *bn = bias ? bias + n : NULL;
        for (int m = 0; m < M; m += Q8_NEON_MR) {
            float *c = C + (size_t)m * ldc + n;
            const uint8_t *qa = A->q + (size_t)m * A->Kp;
            const float *sa = A->scale + (size_t)m * A->ng;
            if (M - m >= 2) q8_tile_neon(2, c, ldc, qa, sa, W, n / 16, nr, bn);
            else q8_tile_neon(1, c, ldc, qa, sa, W, n / 16, nr, bn);
        }
    }
}

/* ==== The LM head's screen (quant.h) ====
 * A 16-byte quarter of a 64-byte row of the screen is 8 k of 4 columns: its low nibbles (q4 + 8 at
 * 4 k) and high nibbles (the next 4), as signed bytes once masked, go through smull / smlal with the
 * rows' signed activations as the int8 product's do, into int16 lanes that take a whole group (16
 * products of at most 15 * 127 a lane: 30480 fits); at the group's end saddlp and addp leave one
 * int32 per column, started at -8 sum qa of the row's group: exactly sum q4 qa. Passes of up to 2
 * rows over a block (qw_q4_screen_tiles: the second reads its 8 KiB from L1); the f32 accumulators
 * in memory. */
QW_INLINE void q4_tile_neon(int R, float *C, int ldc, const int8_t *qs, int K, const float *sa, const int32_t *sums,
                            const qw_q4 *S, int b, int nr) {
    const int ng = S->ng, k8 = K / 8;
    const uint8_t *qb = S->q + (size_t)b * 8 * K;
    const uint16_t *sb = S->scale + (size_t)b * ng * 16;
    const uint8x16_t nib = vdupq_n_u8(15);
    float f[Q8_NEON_MR][16] = {{0.0f}};
    for (int g = 0; g < ng; g++) {
        int16x8_t e[Q8_NEON_MR][8]; /* e[r][2j]: columns 4j, 4j+1 x 4 k; e[r][2j+1]: 4j+2, 4j+3 */
        for (int r = 0; r < R; r++)
            for (int j = 0; j < 8; j++) e[r][j] = vdupq_n_s16(0);
        const int i1 = (g + 1) * (QW_Q8_GROUP / 8) < k8 ? (g + 1) * (QW_Q8_GROUP / 8) : k8;
        for (int i = g * (QW_Q8_GROUP / 8); i < i1; i++) {
            int8x16_t al[Q8_NEON_MR], ah[Q8_NEON_MR];
            for (int r = 0; r < R; r++) {
                al[r] = q4_act4(qs + (size_t)r * K + (size_t)i * 8);
                ah[r] = q4_act4(qs + (size_t)r * K + (size_t)i * 8 + 4);
            }
            for (int j = 0; j < 4; j++) {
                const uint8x16_t v = vld1q_u8(qb + (size_t)i * 64 + 16 * j);
                const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, nib)), hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                for (int r = 0; r < R; r++) {
                    e[r][2 * j] = vmlal_s8(vmlal_s8(e[r][2 * j], vget_low_s8(lo), vget_low_s8(al[r])), vget_low_s8(hi),
                                           vget_low_s8(ah[r]));
                    e[r][2 * j + 1] = vmlal_high_s8(vmlal_high_s8(e[r][2 * j + 1], lo, al[r]), hi, ah[r]);
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const int32x4_t z = vdupq_n_s32(-sums[r * QW_Q4_MAX_NG + g]);
            const float32x4_t s = vdupq_n_f32(sa[(size_t)r * ng + g]);
            for (int j = 0; j < 4; j++) {
                const int32x4_t dj = vaddq_s32(vpaddq_s32(vpaddlq_s16(e[r][2 * j]), vpaddlq_s16(e[r][2 * j + 1])), z);
                const float32x4_t sw = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(sb + g * 16 + 4 * j), 16));
                vst1q_f32(f[r] + 4 * j, vfmaq_f32(vld1q_f32(f[r] + 4 * j), vcvtq_f32_s32(dj), vmulq_f32(sw, s)));
            }
        }
    }
    for (int r = 0; r < R; r++) __builtin_memcpy(C + (size_t)r * ldc, f[r], (size_t)nr * sizeof(float));
}

_Static_assert(Q8_NEON_MR == 2, "the screen's passes are the rows the tile holds");
QW_Q4_SCREEN(screen_neon, q4_tile_neon, 2)

const qw_q8_kernels qw_q8_neon = {"neon", matmul_q8_neon, qw_q8_quantize_rows, qw_q8_quantize_group, screen_neon, 4};
