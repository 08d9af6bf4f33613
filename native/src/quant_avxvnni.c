/*
 * Int8 weights, AVX-VNNI product (quant.h has the maths and layout), for CPUs
 * with the 256-bit vpdpbusd but without AVX-512 VNNI (Intel client cores
 * since Alder Lake, E-core Xeons; the AVX2 table otherwise).
 *
 * The VNNI kernel's arithmetic on half-width vectors: half a 64-byte row of
 * the packed weights is 4 consecutive k of 8 columns, the B operand of
 * vpdpbusd as it is; the activations stay offset by 128 (u8), and the int32
 * sums start at zsum, which takes the offset back out, so they are exactly
 * sum qa * q; each group ends with acc = fma(float(d), sw * sa, acc): the
 * same bits as the scalar table. One vpdpbusd per 32 multiply-adds, where
 * the AVX2 table spends five instructions (sign fix-ups, vpmaddubsw,
 * vpmaddwd, add), so a decode batch stays bound by memory, not by the dot
 * products. Register tile: up to 6 rows x 16 columns, one weight stream; a
 * batch takes passes of equal rows (8: 4 + 4, which beat 6 + 2).
 */
#include "kernels_x86.h"
#include "quant.h"
#include "quant_screen256.h"

#define Q8V_MR 6 /* rows of C per tile: 12 int32 sums in registers */

/* acc + the u8 x s8 dot products of a and w (vpdpbusd), updated in place: with the intrinsic GCC 12
 * copied the tile's sums between registers and spilled them (quant_avx512vnni.c's q8_dp).
 * bench_kernels -v int8 at M = 8-145, 2 threads, Zen 5: 0.30-0.54 -> 0.36-0.85 TOP/s; a prefill of
 * 145 tokens with isa=avx2 357 -> 245 ms. */
QW_INLINE __m256i q8v_dp(__m256i acc, __m256i a, __m256i w) {
#ifdef QW_TEST_EMULATE_AVX512
    return _mm256_dpbusd_avx_epi32(acc, a, w);
#else
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(w));
    return acc;
#endif
}

QW_INLINE void q8v_tile(int R, float *C, int ldc, const uint8_t *qa, const float *sa, const qw_q8 *W, int b, int nr,
                        const float *bias, int ZS) {
    const int Kp = W->Kp, ng = W->ng, kq4 = Kp / 4;
    const int8_t *qb = W->q + (size_t)b * 16 * Kp;
    const uint16_t *sb = W->scale + (size_t)b * ng * 16;
    const int32_t *zb = W->zsum + (size_t)b * ng * 16;
    __m256 f[Q8V_MR][2];
    for (int r = 0; r < R; r++) f[r][0] = f[r][1] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        const int kq0 = g * (QW_Q8_GROUP / 4), kq1 = kq0 + QW_Q8_GROUP / 4 < kq4 ? kq0 + QW_Q8_GROUP / 4 : kq4;
        /* ZS: zsum from the weights on the way (as the AVX-512 VNNI table's decode steps) */
        const __m256i z0 = ZS ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(const void *)(zb + g * 16));
        const __m256i z1 = ZS ? z0 : _mm256_loadu_si256((const __m256i *)(const void *)(zb + g * 16 + 8));
        const __m256i c128 = _mm256_set1_epi8((char)0x80); /* unsigned 128 */
        __m256i d[Q8V_MR][2], zs0 = _mm256_setzero_si256(), zs1 = zs0;
        for (int r = 0; r < R; r++) d[r][0] = z0, d[r][1] = z1;
        for (int kq = kq0; kq < kq1; kq++) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(qb + (size_t)kq * 64));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(qb + (size_t)kq * 64 + 32));
            if (ZS) {
                zs0 = q8v_dp(zs0, c128, w0);
                zs1 = q8v_dp(zs1, c128, w1);
            }
            for (int r = 0; r < R; r++) {
                int32_t a4;
                __builtin_memcpy(&a4, qa + (size_t)r * Kp + (size_t)kq * 4, 4);
                const __m256i a = _mm256_set1_epi32(a4);
                d[r][0] = q8v_dp(d[r][0], a, w0);
                d[r][1] = q8v_dp(d[r][1], a, w1);
            }
        }
        if (ZS) /* sum (qa + 128) q - 128 sum q = sum qa q, exactly */
            for (int r = 0; r < R; r++) d[r][0] = _mm256_sub_epi32(d[r][0], zs0), d[r][1] = _mm256_sub_epi32(d[r][1], zs1);
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

/* A tile of `rows` rows (a compile-time count in each case); ZS a constant too. */
#define Q8V_ROWS(rows, ZS)                                                                                             \
    switch (rows) {                                                                                                    \
    case 1: q8v_tile(1, c, ldc, qa, sa, W, n / 16, nr, bn, ZS); break;                                                 \
    case 2: q8v_tile(2, c, ldc, qa, sa, W, n / 16, nr, bn, ZS); break;                                                 \
    case 3: q8v_tile(3, c, ldc, qa, sa, W, n / 16, nr, bn, ZS); break;                                                 \
    case 4: q8v_tile(4, c, ldc, qa, sa, W, n / 16, nr, bn, ZS); break;                                                 \
    case 5: q8v_tile(5, c, ldc, qa, sa, W, n / 16, nr, bn, ZS); break;                                                 \
    default: q8v_tile(6, c, ldc, qa, sa, W, n / 16, nr, bn, ZS); break;                                                \
    }

static void matmul_q8_avxvnni(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M, int n0,
                              int n1) {
    for (int n = n0; n < n1; n += 16) {
        const int nr = n1 - n < 16 ? n1 - n : 16;
        const float *bn = bias ? bias + n : NULL;
        const int passes = (M + Q8V_MR - 1) / Q8V_MR, per = (M + passes - 1) / passes; /* 8 rows: 4 + 4 */
        const int zs = M <= 16; /* a decode step: bound by the bytes, where zsum's are 6% */
        for (int m = 0; m < M; m += per) {
            float *c = C + (size_t)m * ldc + n;
            const uint8_t *qa = A->q + (size_t)m * A->Kp;
            const float *sa = A->scale + (size_t)m * A->ng;
            if (zs)
                Q8V_ROWS(M - m < per ? M - m : per, 1)
            else
                Q8V_ROWS(M - m < per ? M - m : per, 0)
        }
    }
}

/* ==== The LM head's screen (quant.h, quant_screen256.h) ==== */
QW_INLINE __m256i q4v_dot(__m256i d, __m256i lo, __m256i al, __m256i hi, __m256i ah) {
    return q8v_dp(q8v_dp(d, lo, al), hi, ah);
}

QW_INLINE void q4v_tile(int R, float *C, int ldc, const int8_t *qs, int K, const float *sa, const int32_t *sums,
                        const qw_q4 *S, int b, int nr) {
    q4_tile256(q4v_dot, R, C, ldc, qs, K, sa, sums, S, b, nr);
}

_Static_assert(Q4_MR256 == 4, "the screen's passes are the rows the tile holds");
QW_Q4_SCREEN(screen_avxvnni, q4v_tile, 4)

/* CPUID leaf 7 subleaf 1, EAX bit 4 (GCC 12's __builtin_cpu_supports does not know it). The
 * table is chosen only where AVX2 is (ymm state enabled by the OS). */
int qw_cpu_has_avxvnni(void) {
    unsigned a, b, c, d;
    __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0u), "c"(0u));
    if (a < 7) return 0;
    __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7u), "c"(1u));
    return (a >> 4) & 1u;
}

const qw_q8_kernels qw_q8_avxvnni = {"avxvnni", matmul_q8_avxvnni, qw_q8_quantize_rows, qw_q8_quantize_group,
                                     screen_avxvnni, 8};
