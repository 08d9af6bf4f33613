/*
 * Int8 weights, AVX-512 VNNI product (quant.h has the maths and layout).
 *
 * One 64-byte row of the packed weights holds 4 consecutive k of 16 columns:
 * the B operand of vpdpbusd as it is. A register tile of R rows x 32 columns
 * (2 vectors) keeps R x 2 int32 sums of the current group and R x 2 f32
 * accumulators; per 4 k it takes 2 weight loads, R broadcasts of 4 activation
 * bytes and 2R dot products (64 multiply-adds each), and no horizontal sums.
 * The int32 sums start at zsum (-128 x the group's weight sum), which takes
 * the +128 offset of the activations back out, so they are exactly
 * sum qa * q. Up to 16 rows (a decode step, bound by the bytes it streams)
 * take zsum from the weights instead, one more vpdpbusd of 128s per weight
 * load, and leave the zsum array unread: 64 of every 1152 bytes a step
 * streamed (decode of 0.6B 25.3-26.3 -> 23.7-24.8 ms a token, Intel Xeon
 * with AMX; the LM head at M = 1 5.9-6.1 -> 5.5-5.7 ms). Each group ends with acc = fma(float(d), sw * sa, acc), the
 * order quant.h prescribes: the same bits as the scalar table.
 *
 * A decode step has M = active sequences, so the product streams the weights
 * from memory once and is bound by bandwidth, not by the dot products. Two
 * things keep the loads in flight (bench_kernels -v int8, Zen 5, 2 threads:
 * the LM head at M = 8 took 6.2-8.7 ms before, 2.8-3.9 ms after, M = 1 4.2):
 * 1-16 rows take tiles of up to 8 rows x 16 columns, one pass over the
 * weights for 8 rows (6 + 2 rows read every weight twice, and the short
 * second pass left memory idle; M = 16: 8 + 8, not 6 + 6 + 4), and the tile
 * that first reads a block of weights prefetches 4 KB ahead of itself. With
 * 1-6 rows too, one stream of weights beats two 16 KB apart (the 32-column
 * tile): the LM head at M = 2 / 4 / 6 took 4.5 / 4.1 / 5.0 ms against
 * 5.2 / 4.9 / 5.7 (medians of 3 alternating runs), and at M = 1 a decode
 * step of 0.6B 16.8 against 17.6 ms (medians of 6 alternating runs; 10 of
 * 11 pairs faster; Zen 5).
 * The same tile also fetches 32 KiB ahead into L2: at M = 8 each 64 bytes of
 * weights take 9 dot products, so fewer loads are in flight than memory needs
 * (Intel Xeon with AMX, 2 threads: decode step of 0.6B at batch 8 41.0-41.4 ->
 * 38.4-38.8 ms, batch 1 unchanged; 8-24 KiB ahead within the noise of it).
 * Tiles of one row do without it: their dot products keep up with memory, and
 * on a Zen 5 streaming 74-78 GB/s a batch-1 step's products went from
 * 0.90-0.98 of the LM head screen's pace (in the same process) to 0.99-1.04
 * without it (alternating rounds), batch 8 unchanged.
 */
#include "kernels_avx512_tile.h" /* lanes, bf16_to_f32x16 */
#include "quant.h"

#define Q8_MR 6       /* rows of C per register tile of 32 columns */
#define Q8_MR_DEC 8   /* rows of C per register tile of 16 columns, for M of 1-16 */
#define Q8_PREFETCH 64 /* 64-byte weight rows ahead of the first tile over a block, into L1 */
#define Q8_PREFETCH_L2 512 /* and into L2, 32 KiB ahead */

/* acc + the u8 x s8 dot products of a and w (vpdpbusd), the sums updated in place. With the
 * intrinsic GCC 12 copied a tile's int32 sums to other registers every 4 k (the 6 x 32 tile: 24
 * moves and a spill for 12 dot products, 41 instructions with the asm): bench_kernels -v int8
 * at M = 16-145, 2 threads, Zen 5: 0.95-1.53 -> 1.13-1.62 TOP/s, a prefill of 145 tokens
 * 130-140 -> 118-120 ms. The emulated test takes the intrinsic (SIMDe). */
QW_INLINE __m512i q8_dp(__m512i acc, __m512i a, __m512i w) {
#ifdef QW_TEST_EMULATE_AVX512
    return _mm512_dpbusd_epi32(acc, a, w);
#else
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w));
    return acc;
#endif
}

/* 16 of the weights' bf16 scales, widened to f32 (exactly). */
QW_INLINE __m512 q8_scales16(const uint16_t *s) { return bf16_to_f32x16(_mm256_loadu_si256((const __m256i *)(const void *)s)); }

/* C[0:R, n:n+nr] for R rows from the packed column blocks b (and b + 1 when V == 2). ZS (a decode
 * step's tiles) takes one vector of columns: V == 1. */
QW_INLINE void q8_tile(int R, float *C, int ldc, const uint8_t *qa, const float *sa, const qw_q8 *W, int b, int V,
                       int nr, const float *bias, int prefetch, int ZS) {
    const int Kp = W->Kp, ng = W->ng, kq4 = Kp / 4;
    const int8_t *q0 = W->q + (size_t)b * 16 * Kp, *q1 = q0 + (size_t)16 * Kp;
    const uint16_t *s0 = W->scale + (size_t)b * ng * 16;
    const int32_t *z0 = W->zsum + (size_t)b * ng * 16;
    __m512 f[Q8_MR_DEC][2];
    for (int r = 0; r < R; r++) f[r][0] = f[r][1] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        const int kq0 = g * (QW_Q8_GROUP / 4), kq1 = kq0 + QW_Q8_GROUP / 4 < kq4 ? kq0 + QW_Q8_GROUP / 4 : kq4;
        /* ZS: -128 x the group's weight sums (zsum) taken from the weights on the way, one more dot
         * product per weight load, instead of read from memory: 6% fewer bytes for a decode step */
        const __m512i zg0 = ZS ? _mm512_setzero_si512() : _mm512_loadu_si512((const void *)(z0 + g * 16));
        const __m512i zg1 = V != 2 ? zg0 : _mm512_loadu_si512((const void *)(z0 + (size_t)ng * 16 + g * 16));
        __m512i d[Q8_MR_DEC][2], zs = _mm512_setzero_si512();
        const __m512i c128 = _mm512_set1_epi8((char)0x80); /* unsigned 128 */
        for (int r = 0; r < R; r++) d[r][0] = zg0, d[r][1] = zg1;
        for (int kq = kq0; kq < kq1; kq++) {
            const __m512i w0 = _mm512_loadu_si512((const void *)(q0 + (size_t)kq * 64));
            const __m512i w1 = V == 2 ? _mm512_loadu_si512((const void *)(q1 + (size_t)kq * 64)) : w0;
            if (prefetch) { /* past the block's end it reads the next one's start; it never faults */
                _mm_prefetch((const char *)(q0 + (size_t)(kq + Q8_PREFETCH) * 64), _MM_HINT_T0);
                if (R > 1) _mm_prefetch((const char *)(q0 + (size_t)(kq + Q8_PREFETCH_L2) * 64), _MM_HINT_T1);
                if (V == 2) _mm_prefetch((const char *)(q1 + (size_t)(kq + Q8_PREFETCH) * 64), _MM_HINT_T0);
            }
            if (ZS) zs = q8_dp(zs, c128, w0);
            for (int r = 0; r < R; r++) {
                int32_t a4;
                __builtin_memcpy(&a4, qa + (size_t)r * Kp + (size_t)kq * 4, 4);
                const __m512i a = _mm512_set1_epi32(a4);
                d[r][0] = q8_dp(d[r][0], a, w0);
                if (V == 2) d[r][1] = q8_dp(d[r][1], a, w1);
            }
        }
        if (ZS) /* sum (qa + 128) q - 128 sum q = sum qa q, exactly */
            for (int r = 0; r < R; r++) d[r][0] = _mm512_sub_epi32(d[r][0], zs);
        const __m512 sw0 = q8_scales16(s0 + g * 16);
        const __m512 sw1 = V == 2 ? q8_scales16(s0 + (size_t)ng * 16 + g * 16) : sw0;
        for (int r = 0; r < R; r++) {
            const __m512 s = _mm512_set1_ps(sa[(size_t)r * ng + g]);
            f[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[r][0]), _mm512_mul_ps(sw0, s), f[r][0]);
            if (V == 2) f[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[r][1]), _mm512_mul_ps(sw1, s), f[r][1]);
        }
    }
    const __mmask16 m0 = lanes(nr < 16 ? nr : 16), m1 = lanes(nr > 16 ? nr - 16 : 0);
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (bias) {
        b0 = _mm512_maskz_loadu_ps(m0, bias);
        if (V == 2) b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    }
    for (int r = 0; r < R; r++) {
        _mm512_mask_storeu_ps(C + (size_t)r * ldc, m0, bias ? _mm512_add_ps(f[r][0], b0) : f[r][0]);
        if (V == 2) _mm512_mask_storeu_ps(C + (size_t)r * ldc + 16, m1, bias ? _mm512_add_ps(f[r][1], b1) : f[r][1]);
    }
}

#define Q8_TILE(R, ...) q8_tile(R, __VA_ARGS__)

/* A tile of `rows` rows (a compile-time count in each case) of the columns of block b (and b + 1 when V == 2);
 * pf: the first tile over these weights, which prefetches them. */
#define Q8_ROWS(rows, c, qa, sa, b, V, nr, bias, pf, zs)                                                                  \
    switch (rows) {                                                                                                    \
    case 1: Q8_TILE(1, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                  \
    case 2: Q8_TILE(2, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                  \
    case 3: Q8_TILE(3, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                  \
    case 4: Q8_TILE(4, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                  \
    case 5: Q8_TILE(5, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                  \
    case 6: Q8_TILE(6, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                  \
    case 7: Q8_TILE(7, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                  \
    default: Q8_TILE(8, c, ldc, qa, sa, W, b, V, nr, bias, pf, zs); break;                                                 \
    }

static void matmul_q8_vnni(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M, int n0,
                           int n1) {
    if (M <= 2 * Q8_MR_DEC) { /* a decode step of 1-16 rows: 16 columns at a time, 1 or 2 passes */
        for (int n = n0; n < n1; n += 16) {
            const int nr = n1 - n < 16 ? n1 - n : 16;
            for (int m = 0; m < M; m += Q8_MR_DEC) {
                const int rows = M - m < Q8_MR_DEC ? M - m : Q8_MR_DEC;
                float *c = C + (size_t)m * ldc + n;
                const uint8_t *qa = A->q + (size_t)m * A->Kp;
                const float *sa = A->scale + (size_t)m * A->ng;
                Q8_ROWS(rows, c, qa, sa, n / 16, 1, nr, bias ? bias + n : NULL, m == 0, 1);
            }
        }
        return;
    }
    for (int n = n0; n < n1; n += 32) {
        const int nr = n1 - n < 32 ? n1 - n : 32;
        const float *bn = bias ? bias + n : NULL;
        for (int m = 0; m < M; m += Q8_MR) {
            float *c = C + (size_t)m * ldc + n;
            const uint8_t *qa = A->q + (size_t)m * A->Kp;
            const float *sa = A->scale + (size_t)m * A->ng;
            const int rows = M - m < Q8_MR ? M - m : Q8_MR;
            /* V a constant in each tile: a variable one left its test in the tile's inner loop */
            if (nr > 16) Q8_ROWS(rows, c, qa, sa, n / 16, 2, nr, bn, m == 0, 0)
            else Q8_ROWS(rows, c, qa, sa, n / 16, 1, nr, bn, m == 0, 0)
        }
    }
}

/* qw_q8_quantize_rows 16 lanes at a time, the same bytes: the group's maximum |a| (vmaxps with
 * the running maximum second keeps it for a NaN a, as absmax does; a maximum's order does not
 * matter), then round(a * inv) with NaN -> 0, clamped, converted under the default rounding
 * (nearest even, as lrintf), narrowed to int8 (in range: no saturation), + 128 as x ^ 0x80. */
/* round(a * inv) in [-127, 127] (a NaN to 0) + 128 in 16 lanes. */
QW_INLINE __m128i q8_lanes16(__m512 a, __m512 inv) {
    __m512 r = _mm512_mul_ps(a, inv);
    r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);
    r = _mm512_max_ps(_mm512_min_ps(r, _mm512_set1_ps(127.0f)), _mm512_set1_ps(-127.0f));
    return _mm_xor_si128(_mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(r)), _mm_set1_epi8((char)0x80));
}

/* qm[k] = round(a[k] * inv) in [-127, 127] (a NaN to 0) + 128 for k < n: qw_q8_quantize_group. */
QW_INLINE void q8_group_avx512(uint8_t *qm, const float *a, int n, __m512 inv) {
    for (int k = 0; k < n; k += 16) {
        const __m128i b = q8_lanes16(_mm512_maskz_loadu_ps(lanes(n - k < 16 ? n - k : 16), a + k), inv);
        if (n - k >= 16) {
            _mm_storeu_si128((__m128i *)(void *)(qm + k), b);
        } else {
            uint8_t tail[16];
            _mm_storeu_si128((__m128i *)(void *)tail, b);
            __builtin_memcpy(qm + k, tail, (size_t)(n - k));
        }
    }
}

static void quantize_group_avx512(uint8_t *u, const float *x, int n, float inv) {
    q8_group_avx512(u, x, n, _mm512_set1_ps(inv));
}

static void quantize_rows_avx512(uint8_t *q, float *scale, const float *A, int lda, int M, int K, int Kp, int ng) {
    for (int m = 0; m < M; m++) {
        const float *a = A + (size_t)m * lda;
        uint8_t *qm = q + (size_t)m * Kp;
        for (int g = 0; g < ng; g++) {
            const int k0 = g * QW_Q8_GROUP, k1 = k0 + QW_Q8_GROUP < K ? k0 + QW_Q8_GROUP : K;
            if (k1 - k0 == QW_Q8_GROUP) { /* a whole group: its 4 vectors loaded once, no lane masks
                                           * (0.16 -> 0.12 ns a value from L2, Zen 5) */
                __m512 v[4], m4[4];
                for (int i = 0; i < 4; i++) { /* each maximum against a number first: a NaN is skipped */
                    v[i] = _mm512_loadu_ps(a + k0 + 16 * i);
                    m4[i] = _mm512_max_ps(_mm512_abs_ps(v[i]), _mm512_setzero_ps());
                }
                const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m4[0], m4[1]), _mm512_max_ps(m4[2], m4[3])));
                const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
                for (int i = 0; i < 4; i++) _mm_storeu_si128((__m128i *)(void *)(qm + k0 + 16 * i), q8_lanes16(v[i], inv));
                scale[(size_t)m * ng + g] = amax / 127.0f;
                continue;
            }
            __m512 mx = _mm512_setzero_ps();
            for (int k = k0; k < k1; k += 16) {
                const __mmask16 in = lanes(k1 - k < 16 ? k1 - k : 16);
                mx = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(in, a + k)), mx);
            }
            const float amax = _mm512_reduce_max_ps(mx);
            q8_group_avx512(qm + k0, a + k0, k1 - k0, _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f));
            scale[(size_t)m * ng + g] = amax / 127.0f;
        }
        for (int k = K; k < Kp; k++) qm[k] = 128;
    }
}

/* ==== The LM head's screen (quant.h) ====
 * A 64-byte row of the screen is 8 k of 16 columns: its low nibbles are q4 + 8 at 4 k, its high
 * nibbles at the next 4, each an unsigned operand of vpdpbusd as they are once masked; the rows'
 * signed activations (qs, 4 bytes) are its broadcast memory operand. So the sums are
 * sum (q4 + 8) qa, and 8 sum qa of the row's group (qw_q4_act_sums) comes off each: exactly
 * sum q4 qa. Up to 8 rows share each unpacked row of weights (a batch-8 step's head in one pass:
 * 16 accumulators of 32 registers). */
#define Q4_MR 8

/* acc + the u8 x s8 dot products of a and the 4 signed bytes at p, broadcast (vpdpbusd's m32bcst:
 * no broadcast from a general register, which cost 16 vector operations per 64 bytes at 8 rows). */
QW_INLINE __m512i q4_dp(__m512i acc, __m512i a, const int8_t *p) {
#ifdef QW_TEST_EMULATE_AVX512
    int32_t w;
    __builtin_memcpy(&w, p, 4);
    return _mm512_dpbusd_epi32(acc, a, _mm512_set1_epi32(w));
#else
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*(const int32_t *)(const void *)p));
    return acc;
#endif
}

QW_INLINE void q4_tile(int R, float *C, int ldc, const int8_t *qs, int K, const float *sa, const int32_t *sums,
                       const qw_q4 *S, int b, int nr) {
    const int ng = S->ng;
    const uint8_t *qb = S->q + (size_t)b * 8 * K;
    const uint16_t *sb = S->scale + (size_t)b * ng * 16;
    const __m512i nib = _mm512_set1_epi8(15);
    __m512 f[Q4_MR];
    for (int r = 0; r < R; r++) f[r] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512i d[Q4_MR];
        for (int r = 0; r < R; r++) d[r] = _mm512_set1_epi32(-sums[r * QW_Q4_MAX_NG + g]);
        const int i1 = (g + 1) * (QW_Q8_GROUP / 8) < K / 8 ? (g + 1) * (QW_Q8_GROUP / 8) : K / 8;
        for (int i = g * (QW_Q8_GROUP / 8); i < i1; i++) {
            const __m512i v = _mm512_loadu_si512((const void *)(qb + (size_t)i * 64));
            _mm_prefetch((const char *)(qb + (size_t)(i + Q8_PREFETCH) * 64), _MM_HINT_T0);
            const __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
            for (int r = 0; r < R; r++) {
                const int8_t *a = qs + (size_t)r * K + (size_t)i * 8;
                d[r] = q4_dp(q4_dp(d[r], lo, a), hi, a + 4);
            }
        }
        const __m512 s4 = q8_scales16(sb + g * 16);
        for (int r = 0; r < R; r++)
            f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[r]), _mm512_mul_ps(s4, _mm512_set1_ps(sa[(size_t)r * ng + g])), f[r]);
    }
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(C + (size_t)r * ldc, lanes(nr), f[r]);
}

_Static_assert(Q4_MR == 8, "the screen's passes are the rows the tile holds");
QW_Q4_SCREEN(screen_vnni, q4_tile, 8)

const qw_q8_kernels qw_q8_avx512vnni = {"avx512vnni", matmul_q8_vnni, quantize_rows_avx512, quantize_group_avx512,
                                        screen_vnni, 8};
