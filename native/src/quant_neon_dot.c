/*
 * Int8 weights, AArch64 dot-product product (quant.h has the maths and
 * layout), for CPUs with the Armv8.2 dot-product instructions (FEAT_DotProd:
 * Neoverse N1 / V1 / N2 / V2, so AWS Graviton 2-4, Ampere Altra, Apple M1
 * and later); the baseline NEON table (quant_neon.c) otherwise.
 *
 * A 16-byte quarter of a 64-byte row of the packed weights is 4 consecutive
 * k of 4 columns: SDOT's operand as it is, each int32 lane one column's sum
 * over those 4 k. The activation bytes go back to signed qa (xor 0x80), 16 at
 * a time (4 steps of 4 k), and the lane-indexed SDOT takes each step's 4
 * bytes from that one register, so a row costs one load and one xor per 16 k
 * and then 4 SDOT per step (16 multiply-adds each) for its 16 columns: the
 * sums are exactly sum qa * q (no zsum), where the baseline table spends 6
 * instructions on 32 multiply-adds. Each group ends with
 * acc = fma(float(d), sw * sa, acc), quant.h's order: the same bits as the
 * scalar table. Register tile: up to 4 rows x 16 columns (16 int32 sums, 4
 * activation and 4 weight registers); a batch takes passes of equal rows
 * (the weights are streamed once a pass), the f32 accumulators live in
 * memory between groups.
 *
 * On x86 the tests compile this file over SIMDe's NEON emulation
 * (QW_NEON_SIMDE), as quant_neon.c; natively it is checked under qemu
 * (native/tests/run_aarch64_qemu.sh) and on AArch64 machines.
 */
#include "quant.h"

#include <string.h>

#if defined(__linux__) && !defined(QW_NEON_SIMDE)
#include <sys/auxv.h>
#elif defined(__APPLE__) && !defined(QW_NEON_SIMDE)
#include <sys/sysctl.h>
#endif

#ifdef QW_NEON_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#else
#include <arm_neon.h>
#endif

#ifndef QW_INLINE
#ifdef QW_TEST_EMULATE_NEON /* as in kernels_x86.h: keep the emulated test's compile quick */
#define QW_INLINE static inline
#else
#define QW_INLINE static inline __attribute__((always_inline))
#endif
#endif

#define Q8D_MR 4 /* rows of C per register tile */

/* 16 activation bytes (4 steps of 4 k) as signed qa. */
QW_INLINE int8x16_t q8d_act16(const uint8_t *qa) {
    return veorq_s8(vreinterpretq_s8_u8(vld1q_u8(qa)), vdupq_n_s8((int8_t)0x80));
}

/* 4 activation bytes (one step of 4 k) as signed qa, in lane 0 (the others the same). */
QW_INLINE int8x16_t q8d_act4(const uint8_t *qa) {
    int32_t a4;
    __builtin_memcpy(&a4, qa, 4);
    return veorq_s8(vreinterpretq_s8_s32(vdupq_n_s32(a4)), vdupq_n_s8((int8_t)0x80));
}

/* C[0:R, 0:nr] for R rows from the packed column block b. */
QW_INLINE void q8d_tile(int R, float *C, int ldc, const uint8_t *qa, const float *sa, const qw_q8 *W, int b, int nr,
                        const float *bias) {
    const int Kp = W->Kp, ng = W->ng, kq4 = Kp / 4;
    const int8_t *qb = W->q + (size_t)b * 16 * Kp;
    const uint16_t *sb = W->scale + (size_t)b * ng * 16;
    float f[Q8D_MR][16]; /* the first group starts them */
    if (!ng) memset(f, 0, sizeof(f)); /* no group to start them (K = 0) */
    for (int g = 0; g < ng; g++) {
        const int kq0 = g * (QW_Q8_GROUP / 4), kq1 = kq0 + QW_Q8_GROUP / 4 < kq4 ? kq0 + QW_Q8_GROUP / 4 : kq4;
        int32x4_t d[Q8D_MR][4]; /* d[r][j]: columns 4j .. 4j+3 */
        for (int r = 0; r < R; r++)
            for (int j = 0; j < 4; j++) d[r][j] = vdupq_n_s32(0);
        int kq = kq0;
        for (; kq + 4 <= kq1; kq += 4) { /* 16 k: one activation register a row */
            int8x16_t a[Q8D_MR];
            for (int r = 0; r < R; r++) a[r] = q8d_act16(qa + (size_t)r * Kp + (size_t)kq * 4);
            const int8_t *w = qb + (size_t)kq * 64;
#define Q8D_STEP(t)                                                                                                    \
    do {                                                                                                               \
        const int8x16_t w0 = vld1q_s8(w + 64 * (t)), w1 = vld1q_s8(w + 64 * (t) + 16);                                 \
        const int8x16_t w2 = vld1q_s8(w + 64 * (t) + 32), w3 = vld1q_s8(w + 64 * (t) + 48);                            \
        for (int r = 0; r < R; r++) {                                                                                  \
            d[r][0] = vdotq_laneq_s32(d[r][0], w0, a[r], t);                                                           \
            d[r][1] = vdotq_laneq_s32(d[r][1], w1, a[r], t);                                                           \
            d[r][2] = vdotq_laneq_s32(d[r][2], w2, a[r], t);                                                           \
            d[r][3] = vdotq_laneq_s32(d[r][3], w3, a[r], t);                                                           \
        }                                                                                                              \
    } while (0)
            Q8D_STEP(0);
            Q8D_STEP(1);
            Q8D_STEP(2);
            Q8D_STEP(3);
#undef Q8D_STEP
        }
        for (; kq < kq1; kq++) { /* the last group's last steps (fewer than 4) */
            const int8_t *w = qb + (size_t)kq * 64;
            for (int r = 0; r < R; r++) {
                const int8x16_t a = q8d_act4(qa + (size_t)r * Kp + (size_t)kq * 4);
                for (int j = 0; j < 4; j++) d[r][j] = vdotq_laneq_s32(d[r][j], vld1q_s8(w + 16 * j), a, 0);
            }
        }
        for (int r = 0; r < R; r++) {
            const float32x4_t s = vdupq_n_f32(sa[(size_t)r * ng + g]);
            for (int j = 0; j < 4; j++) {
                const float32x4_t sw = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(sb + g * 16 + 4 * j), 16));
                const float32x4_t acc = g ? vld1q_f32(f[r] + 4 * j) : vdupq_n_f32(0.0f);
                vst1q_f32(f[r] + 4 * j, vfmaq_f32(acc, vcvtq_f32_s32(d[r][j]), vmulq_f32(sw, s)));
            }
        }
    }
    for (int r = 0; r < R; r++) {
        float *c = C + (size_t)r * ldc;
        for (int j = 0; j < nr; j++) c[j] = bias ? f[r][j] + bias[j] : f[r][j];
    }
}

static void matmul_q8_neondot(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M,
                              int n0, int n1) {
    /* passes of equal rows (at most Q8D_MR): 5 rows take 3 + 2, not 4 + 1 */
    const int passes = (M + Q8D_MR - 1) / Q8D_MR, per = passes ? (M + passes - 1) / passes : 0;
    for (int n = n0; n < n1; n += 16) {
        const int nr = n1 - n < 16 ? n1 - n : 16;
        const float *bn = bias ? bias + n : NULL;
        for (int m = 0; m < M; m += per) {
            const int rows = M - m < per ? M - m : per;
            float *c = C + (size_t)m * ldc + n;
            const uint8_t *qa = A->q + (size_t)m * A->Kp;
            const float *sa = A->scale + (size_t)m * A->ng;
            switch (rows) {
            case 1: q8d_tile(1, c, ldc, qa, sa, W, n / 16, nr, bn); break;
            case 2: q8d_tile(2, c, ldc, qa, sa, W, n / 16, nr, bn); break;
            case 3: q8d_tile(3, c, ldc, qa, sa, W, n / 16, nr, bn); break;
            default: q8d_tile(4, c, ldc, qa, sa, W, n / 16, nr, bn); break;
            }
        }
    }
}

/* ==== The LM head's screen (quant.h) ====
 * A 16-byte quarter of a 64-byte row of the screen is 8 k of 4 columns: its low nibbles (q4 + 8 at
 * 4 k) and high nibbles (the next 4), as signed bytes once masked, are SDOT operands as they are. A
 * row's 16 activation bytes cover two rows of the screen: lane 0 the first's low nibbles' k, lane 1
 * its high ones', lanes 2 and 3 the second's. The sums start at -8 sum qa of the row's group: exactly
 * sum q4 qa. Register tile: up to 4 rows x 16 columns; the f32 accumulators in memory. */
QW_INLINE void q4d_tile(int R, float *C, int ldc, const int8_t *qs, int K, const float *sa, const int32_t *sums,
                        const qw_q4 *S, int b, int nr) {
    const int ng = S->ng, k8 = K / 8;
    const uint8_t *qb = S->q + (size_t)b * 8 * K;
    const uint16_t *sb = S->scale + (size_t)b * ng * 16;
    const uint8x16_t nib = vdupq_n_u8(15);
    float f[Q8D_MR][16] = {{0.0f}};
    for (int g = 0; g < ng; g++) {
        int32x4_t d[Q8D_MR][4]; /* d[r][j]: columns 4j .. 4j+3 */
        for (int r = 0; r < R; r++)
            for (int j = 0; j < 4; j++) d[r][j] = vdupq_n_s32(-sums[r * QW_Q4_MAX_NG + g]);
        const int i1 = (g + 1) * (QW_Q8_GROUP / 8) < k8 ? (g + 1) * (QW_Q8_GROUP / 8) : k8;
        for (int i = g * (QW_Q8_GROUP / 8); i < i1; i += 2) {
            const int two = i + 1 < i1; /* a short last group may end on an odd row */
            int8x16_t a[Q8D_MR];
            for (int r = 0; r < R; r++) {
                const int8_t *p = qs + (size_t)r * K + (size_t)i * 8;
                a[r] = two ? vld1q_s8(p) : vcombine_s8(vld1_s8(p), vdup_n_s8(0));
            }
            for (int j = 0; j < 4; j++) {
                const uint8x16_t v0 = vld1q_u8(qb + (size_t)i * 64 + 16 * j);
                const int8x16_t lo0 = vreinterpretq_s8_u8(vandq_u8(v0, nib)), hi0 = vreinterpretq_s8_u8(vshrq_n_u8(v0, 4));
                for (int r = 0; r < R; r++) d[r][j] = vdotq_laneq_s32(vdotq_laneq_s32(d[r][j], lo0, a[r], 0), hi0, a[r], 1);
                if (two) {
                    const uint8x16_t v1 = vld1q_u8(qb + (size_t)(i + 1) * 64 + 16 * j);
                    const int8x16_t lo1 = vreinterpretq_s8_u8(vandq_u8(v1, nib));
                    const int8x16_t hi1 = vreinterpretq_s8_u8(vshrq_n_u8(v1, 4));
                    for (int r = 0; r < R; r++)
                        d[r][j] = vdotq_laneq_s32(vdotq_laneq_s32(d[r][j], lo1, a[r], 2), hi1, a[r], 3);
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float32x4_t s = vdupq_n_f32(sa[(size_t)r * ng + g]);
            for (int j = 0; j < 4; j++) {
                const float32x4_t sw = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(sb + g * 16 + 4 * j), 16));
                vst1q_f32(f[r] + 4 * j, vfmaq_f32(vld1q_f32(f[r] + 4 * j), vcvtq_f32_s32(d[r][j]), vmulq_f32(sw, s)));
            }
        }
    }
    for (int r = 0; r < R; r++) __builtin_memcpy(C + (size_t)r * ldc, f[r], (size_t)nr * sizeof(float));
}

_Static_assert(Q8D_MR == 4, "the screen's passes are the rows the tile holds");
QW_Q4_SCREEN(screen_neondot, q4d_tile, 4)

const qw_q8_kernels qw_q8_neondot = {"neondot", matmul_q8_neondot, qw_q8_quantize_rows, qw_q8_quantize_group,
                                     screen_neondot, 4};

/* FEAT_DotProd, as the OS reports it (its instructions are not baseline Armv8.0). */
int qw_cpu_has_dotprod(void) {
#if defined(QW_NEON_SIMDE)
    return 1; /* the emulation has them */
#elif defined(__linux__)
    return (getauxval(AT_HWCAP) & (1ul << 20)) != 0; /* HWCAP_ASIMDDP */
#elif defined(__APPLE__)
    int v = 0;
    size_t n = sizeof(v);
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, NULL, 0) == 0 && v;
#else
    return 0;
#endif
}
