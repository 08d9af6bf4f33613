/*
 * Kernels, AVX-512 (F/BW/VL/DQ + FMA + F16C) variant (16 floats per vector)
 * — the hot loops under every projection of the encoder and decoder.
 *
 * The same two paths as the AVX2 variant (kernels_avx2.c explains the
 * choices measured there); here, with 32 vector registers and mask
 * registers:
 *
 *   rows path   (matmul_rows for any M; matmul for M < PACK_MIN_M).
 *               Batch-invariant: one fixed order of operations per output
 *               element (two 16-lane chains over alternate blocks of k, a
 *               masked tail block, a fixed horizontal sum, then the bias),
 *               whatever the register tile, so a row's result never depends
 *               on M, on the other rows or on the column slice. M = 1: each
 *               weight row is one sequential stream (software prefetch
 *               ahead of it), widened in registers; M > 1: tiles of 3 weight
 *               rows x 4 rows of A (fewer weight rows for M < 4 use more
 *               weight rows per tile), the next weight rows prefetched while
 *               the tiles of A reuse the current ones from cache.
 *
 *   packed path (M >= PACK_MIN_M; encoder, prefill). Compute-bound. A panel
 *               of 32 weight rows x KB columns is widened once and transposed
 *               into P[KB][32]; a 12x32 register tile of C (24 accumulators)
 *               accumulates A[m, k] (broadcast) * P[k, 0:32] for twelve rows
 *               of A: 2 loads of P and 12 broadcasts per 24 FMAs. A last panel of at most 16
 *               columns uses a 12x16 tile instead of wasting half the FMAs.
 *
 * Exact f32 FMA throughout: A is never rounded to bf16 (no vdpbf16ps), so
 * the results match the scalar reference to float rounding.
 *
 * native/tests/test_kernels.c can also include this file with
 * QW_TEST_EMULATE_AVX512 defined, over portable implementations of the
 * intrinsics (SIMDe), to test this code on CPUs without AVX-512.
 */
#include "kernels_avx512_tile.h"
#include "kernels_exp.h"
#include "kernels_gelu.h"

#define PACK_MIN_M 8   /* M from which the packed path is taken */
#define PF_AHEAD 1024  /* rows path: software prefetch distance along a weight row, bytes */
#define RW1 1          /* rows path: weight rows per register tile for 1, 2, 3 and 4+ rows of A */
#define RW2 6
#define RW3 4
#define RW4 3
#define RA4 4          /* rows path: rows of A per register tile from 4 rows on */
_Static_assert(RW1 <= 6 && RW2 <= 6 && RW3 <= 6 && RW4 <= 6 && RA4 <= 4, "rows_tile's accumulators are s[6][4][2]");
#define NR 32          /* packed path: columns of C per panel (2 vectors) */
#define MR QW_TILE_MR   /* packed path: rows of A per register tile (12) */
#define KB 256         /* packed path: depth of a panel (P = KB x NR floats = 32 KiB) */
#define MB 192         /* packed path: rows of A per block (MB x KB floats = 192 KiB, in L2) */

/* ==== Loads and reductions ==== */

/* W[i .. i+16) widened to f32. */
QW_INLINE __m512 widen16(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: {
        return bf16_to_f32x16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)W + i)));
    }
    case QW_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)W + i)));
    default: return _mm512_loadu_ps((const float *)W + i);
    }
}

/* W[i .. i+t) widened, zeros after (t in 0..16); masked loads read nothing past i + t. */
QW_INLINE __m512 widen16_tail(const void *W, qw_dtype dt, size_t i, int t) {
    switch (dt) {
    case QW_BF16: {
        return bf16_to_f32x16(_mm256_maskz_loadu_epi16(lanes(t), (const uint16_t *)W + i));
    }
    case QW_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes(t), (const uint16_t *)W + i));
    default: return _mm512_maskz_loadu_ps(lanes(t), (const float *)W + i);
    }
}

/* W[i .. i+8) widened to f32 (for packing 8 x 8 blocks). */
QW_INLINE __m256 widen8(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: {
        return bf16_to_f32x8(_mm_loadu_si128((const __m128i *)((const uint16_t *)W + i)));
    }
    case QW_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)W + i)));
    default: return _mm256_loadu_ps((const float *)W + i);
    }
}

QW_INLINE float load1(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: return qw_bf16_to_f32(((const uint16_t *)W)[i]);
    case QW_F16: return qw_f16_to_f32(((const uint16_t *)W)[i]);
    default: return ((const float *)W)[i];
    }
}

/* Asks for the `bytes` of weights PF_AHEAD bytes past w[k], a line at a time. */
QW_INLINE void prefetch_w(const void *w, qw_dtype dt, int k, int bytes) {
    const char *p = (const char *)w + (size_t)k * (dt == QW_F32 ? 4 : 2) + PF_AHEAD;
    for (int o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

QW_INLINE float hsum(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ==== Vector helpers ==== */

/* dst[i] = (float)src[i] */
static void to_f32_avx512(float *dst, const void *src, qw_dtype dt, int n) {
    if (dt == QW_KV8) { /* 16 values: sign-extended, converted, times their block's scale */
        const int8_t *q = (const int8_t *)src;
        for (int i = 0; i < n; i += 16) {
            /* int8 -> int16 -> int32 (SIMDe, the emulated tests' AVX-512, has no one-step form) */
            const __m512i w = _mm512_cvtepi16_epi32(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + i))));
            _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_set1_ps(qw_kv8_scale(src, n, i))));
        }
        return;
    }
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        _mm512_storeu_ps(dst + i, widen16(src, dt, (size_t)i));
        _mm512_storeu_ps(dst + i + 16, widen16(src, dt, (size_t)i + 16));
        _mm512_storeu_ps(dst + i + 32, widen16(src, dt, (size_t)i + 32));
        _mm512_storeu_ps(dst + i + 48, widen16(src, dt, (size_t)i + 48));
    }
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, widen16(src, dt, (size_t)i));
    if (i < n) _mm512_mask_storeu_ps(dst + i, lanes(n - i), widen16_tail(src, dt, (size_t)i, n - i));
}

/* qw_kv8_quantize, a block of 32 (two vectors) at a time: the same products, clamps and rounding
 * (halves away from zero: + copysign(0.5), then truncation), so the same bytes. */
static void kv8_quantize_avx512(void *row, const float *x, int n) {
    const __m512 sign = _mm512_set1_ps(-0.0f), half = _mm512_set1_ps(0.5f), hi = _mm512_set1_ps(127.0f);
    for (int b = 0; b < n; b += QW_KV8_BLOCK) {
        const __m512 a0 = _mm512_loadu_ps(x + b), a1 = _mm512_loadu_ps(x + b + 16);
        /* max(|x|, m) keeps m for a NaN |x| (the second operand), as the C comparison does */
        const __m512 m = _mm512_max_ps(_mm512_andnot_ps(sign, a1), _mm512_max_ps(_mm512_andnot_ps(sign, a0), _mm512_setzero_ps()));
        const float amax = _mm512_reduce_max_ps(m);
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f, scale = amax / 127.0f;
        const __m512 iv = _mm512_set1_ps(inv);
        for (int h = 0; h < 2; h++) {
            __m512 v = _mm512_mul_ps(h ? a1 : a0, iv);
            v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); /* NaN -> 0 */
            v = _mm512_max_ps(_mm512_min_ps(v, hi), _mm512_sub_ps(_mm512_setzero_ps(), hi));
            v = _mm512_add_ps(v, _mm512_or_ps(_mm512_and_ps(v, sign), half));
            _mm_storeu_si128((__m128i *)((int8_t *)row + b + 16 * h), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(v)));
        }
        qw_kv8_set_scale(row, n, b, scale);
    }
}

/* sum_i a[i] * b[i] */
static float dot_avx512(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        const __mmask16 m = lanes(n - i);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* y[i] += alpha * x[i] */
static void axpy_avx512(float *y, float alpha, const float *x, int n) {
    const __m512 a = _mm512_set1_ps(alpha);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
        _mm512_storeu_ps(y + i + 16, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16)));
    }
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        const __mmask16 m = lanes(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* ==== Many rows against one vector (attention of one query) ==== */

/* [hsum(a), hsum(b), hsum(c), hsum(d)], each bitwise hsum's: the same pairs
 * of lanes added in the same tree, four vectors per instruction. */
QW_INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    /* 512 -> 256: [a.lo + a.hi | b.lo + b.hi] (h_i = v_i + v_{i+8}), the same for c, d */
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
    /* 256 -> 128: s_i = h_i + h_{i+4}, one 128-bit lane per vector: [s(a), s(b), s(c), s(d)] */
    const __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
    /* [s0 + s2, s1 + s3, ..], then (s0 + s2) + (s1 + s3) in lanes 0, 4, 8, 12 */
    const __m512 u = _mm512_add_ps(s, _mm512_shuffle_ps(s, s, 0x4e));
    const __m512 w = _mm512_add_ps(u, _mm512_shuffle_ps(u, u, 0xb1));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, w));
}

/* Lanes i .. i + 15 of a row: f32 (x + i), or a QW_KV8 row of n values widened in registers as
 * to_f32 widens it (sign-extended, converted, times the block's scale), i a multiple of 16. */
QW_INLINE __m512 row16(const void *x, int kv8, int n, int i) {
    if (!kv8) return _mm512_loadu_ps((const float *)x + i);
    const __m128i b = _mm_loadu_si128((const __m128i *)((const int8_t *)x + i));
#ifdef QW_TEST_EMULATE_AVX512 /* SIMDe has no one-step int8 -> int32 */
    const __m512i w = _mm512_cvtepi16_epi32(_mm256_cvtepi8_epi16(b));
#else
    const __m512i w = _mm512_cvtepi8_epi32(b);
#endif
    return _mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_set1_ps(qw_kv8_scale(x, n, i)));
}

/* out[r] = dot_avx512(q, row r, n) for R (1..4) rows side by side, row r at rows + r * ldb bytes,
 * f32 or (kv8) QW_KV8 rows widened in registers: each row its own four chains, fed as dot_avx512
 * feeds them (4R + 1 registers), then one hsum4. A QW_KV8 row's n is a multiple of 32 (no tail). */
QW_INLINE void dot_tile(int R, int kv8, float *out, const float *q, const char *rows, size_t ldb, int n) {
    __m512 s[4][4];
    const char *x[4];
    for (int r = 0; r < R; r++) {
        x[r] = rows + (size_t)r * ldb;
        for (int j = 0; j < 4; j++) s[r][j] = _mm512_setzero_ps();
    }
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 4; j++) {
            const __m512 qv = _mm512_loadu_ps(q + i + 16 * j);
            for (int r = 0; r < R; r++) s[r][j] = _mm512_fmadd_ps(qv, row16(x[r], kv8, n, i + 16 * j), s[r][j]);
        }
    for (; i + 16 <= n; i += 16) {
        const __m512 qv = _mm512_loadu_ps(q + i);
        for (int r = 0; r < R; r++) s[r][0] = _mm512_fmadd_ps(qv, row16(x[r], kv8, n, i), s[r][0]);
    }
    if (i < n) {
        const __mmask16 m = lanes(n - i);
        const __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
        for (int r = 0; r < R; r++)
            s[r][1] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, (const float *)(const void *)x[r] + i), s[r][1]);
    }
    __m512 c[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int r = 0; r < R; r++) c[r] = _mm512_add_ps(_mm512_add_ps(s[r][0], s[r][1]), _mm512_add_ps(s[r][2], s[r][3]));
    float t[4];
    _mm_storeu_ps(t, hsum4(c[0], c[1], c[2], c[3]));
    for (int r = 0; r < R; r++) out[r] = t[r];
}

/* dot_tile over n_rows rows, four at a time. */
QW_INLINE void dot_rows_any(int kv8, float *out, const float *q, const char *rows, size_t ldb, int n_rows, int n) {
    int r = 0;
    for (; r + 4 <= n_rows; r += 4) dot_tile(4, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n);
    switch (n_rows - r) {
    case 3: dot_tile(3, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n); break;
    case 2: dot_tile(2, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n); break;
    case 1: dot_tile(1, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n); break;
    default: break;
    }
}

/* out[r] = dot_avx512(q, rows + r * ld, n), bitwise, four rows at a time. */
static void dot_rows_avx512(float *out, const float *q, const float *rows, int ld, int n_rows, int n) {
    dot_rows_any(0, out, q, (const char *)rows, (size_t)ld * sizeof(float), n_rows, n);
}

/* dot_tile's four chains of R (1..2) QW_KV8 rows for two heads (q and q + ldq) side by side: each
 * widened vector of a row meets both heads' queries, so a row is widened once for the pair, and
 * each (row, head) has its own four chains fed in dot_tile's order, then one hsum4 for all four:
 * out[h * ldo + r] bitwise dot_tile's for head h. n is a multiple of 32 (no masked tail). */
QW_INLINE void kv8_dot_tile2(int R, float *out, int ldo, const float *q, int ldq, const char *rows, size_t ldb, int n) {
    __m512 s[2][2][4];
    for (int r = 0; r < R; r++)
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 4; j++) s[r][h][j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 4; j++) {
            const __m512 q0 = _mm512_loadu_ps(q + i + 16 * j), q1 = _mm512_loadu_ps(q + ldq + i + 16 * j);
            for (int r = 0; r < R; r++) {
                const __m512 w = row16(rows + (size_t)r * ldb, 1, n, i + 16 * j);
                s[r][0][j] = _mm512_fmadd_ps(q0, w, s[r][0][j]);
                s[r][1][j] = _mm512_fmadd_ps(q1, w, s[r][1][j]);
            }
        }
    for (; i + 16 <= n; i += 16) {
        const __m512 q0 = _mm512_loadu_ps(q + i), q1 = _mm512_loadu_ps(q + ldq + i);
        for (int r = 0; r < R; r++) {
            const __m512 w = row16(rows + (size_t)r * ldb, 1, n, i);
            s[r][0][0] = _mm512_fmadd_ps(q0, w, s[r][0][0]);
            s[r][1][0] = _mm512_fmadd_ps(q1, w, s[r][1][0]);
        }
    }
    __m512 c[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int r = 0; r < R; r++)
        for (int h = 0; h < 2; h++)
            c[2 * r + h] = _mm512_add_ps(_mm512_add_ps(s[r][h][0], s[r][h][1]), _mm512_add_ps(s[r][h][2], s[r][h][3]));
    float t[4];
    _mm_storeu_ps(t, hsum4(c[0], c[1], c[2], c[3]));
    for (int r = 0; r < R; r++) out[r] = t[2 * r], out[(size_t)ldo + r] = t[2 * r + 1];
}

/* The scores of two heads (kv8_in_pairs' pair): kv8_dot_tile2 over the rows, two at a time (a
 * decode step's attention is bound by the widening, which the pair shares), the rows a few ahead
 * prefetched. */
static void kv8_dot_pair(float *o, int ldo, const float *q, int ldq, const char *x, size_t ldb, int n_rows, int n) {
    int r = 0;
    for (; r + 2 <= n_rows; r += 2) {
        qw_prefetch_kv_row(x, ldb, r, 2 * ldb);
        kv8_dot_tile2(2, o + r, ldo, q, ldq, x + (size_t)r * ldb, ldb, n);
    }
    if (r < n_rows) kv8_dot_tile2(1, o + r, ldo, q, ldq, x + (size_t)r * ldb, ldb, n);
}

/* The scores of one head (kv8_in_pairs' one). */
static void kv8_dot_one(float *o, int ldo, const float *q, int ldq, const char *x, size_t ldb, int n_rows, int n) {
    (void)ldo, (void)ldq;
    dot_rows_any(1, o, q, x, ldb, n_rows, n);
}

/* dot_rows over QW_KV8 rows: bitwise dot_rows over their to_f32 widening, per head; heads in pairs. */
static void kv8_dot_rows_avx512(float *out, int ldo, const float *q, int ldq, int heads, const void *rows, int n_rows,
                                int n) {
    kv8_in_pairs(kv8_dot_pair, kv8_dot_one, out, ldo, q, ldq, heads, rows, n_rows, n);
}

/* y[0 : 16V + t) += alpha[r] * rows[r][i0 : i0 + 16V + t) for every row r in order (row r at
 * rows + r * ldb bytes: f32, or a QW_KV8 row of n values widened in registers, t = 0), the V
 * vectors (and a masked one of t < 16 lanes) of y in registers throughout; per lane the FMA
 * axpy_avx512 does, in the same order. */
QW_INLINE void axpy_block(int V, int kv8, float *y, const float *alpha, const char *rows, size_t ldb, int n_rows,
                          int n, int i0, int t) {
    __m512 v[8], vt = _mm512_setzero_ps();
    const __mmask16 m = lanes(t);
    for (int j = 0; j < V; j++) v[j] = _mm512_loadu_ps(y + 16 * j);
    if (t) vt = _mm512_maskz_loadu_ps(m, y + 16 * V);
    for (int r = 0; r < n_rows; r++) {
        const __m512 a = _mm512_set1_ps(alpha[r]);
        const char *x = rows + (size_t)r * ldb;
        for (int j = 0; j < V; j++) v[j] = _mm512_fmadd_ps(a, row16(x, kv8, n, i0 + 16 * j), v[j]);
        if (t) vt = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, (const float *)(const void *)x + i0 + 16 * V), vt);
    }
    for (int j = 0; j < V; j++) _mm512_storeu_ps(y + 16 * j, v[j]);
    if (t) _mm512_mask_storeu_ps(y + 16 * V, m, vt);
}

/* axpy_avx512(y, alpha[r], row r, n) for r in order, bitwise: blocks of 128 columns (8 registers:
 * a head of 128 in one pass over the rows), then the rest in one block. */
QW_INLINE void axpy_rows_any(int kv8, float *y, const float *alpha, const char *rows, size_t ldb, int n_rows, int n) {
    if (n_rows <= 0) return;
    int i = 0;
    for (; i + 128 <= n; i += 128) axpy_block(8, kv8, y + i, alpha, rows, ldb, n_rows, n, i, 0);
    /* the rest in one block: whole vectors, and a masked one for a part of one */
    if (i < n) QW_VECTORS((n - i) >> 4, axpy_block, kv8, y + i, alpha, rows, ldb, n_rows, n, i, (n - i) & 15);
}

static void axpy_rows_avx512(float *y, const float *alpha, const float *rows, int ld, int n_rows, int n) {
    axpy_rows_any(0, y, alpha, (const char *)rows, (size_t)ld * sizeof(float), n_rows, n);
}

/* axpy_block's V vectors of QW_KV8 rows for two heads (y, alpha and y + ldy, alpha + lda) side by
 * side: each widened vector of a row goes into both heads' FMAs, in axpy_block's order per head;
 * the rows a few ahead prefetched. n is a multiple of 32 (no masked part). */
QW_INLINE void kv8_axpy_block2(int V, float *y, int ldy, const float *alpha, int lda, const char *rows, size_t ldb,
                               int n_rows, int n, int i0) {
    __m512 v0[8], v1[8];
    for (int j = 0; j < V; j++) v0[j] = _mm512_loadu_ps(y + 16 * j), v1[j] = _mm512_loadu_ps(y + ldy + 16 * j);
    for (int r = 0; r < n_rows; r++) {
        const __m512 a0 = _mm512_set1_ps(alpha[r]), a1 = _mm512_set1_ps(alpha[(size_t)lda + r]);
        const char *x = rows + (size_t)r * ldb;
        if (i0 == 0) qw_prefetch_kv_row(rows, ldb, r, ldb);
        for (int j = 0; j < V; j++) {
            const __m512 w = row16(x, 1, n, i0 + 16 * j);
            v0[j] = _mm512_fmadd_ps(a0, w, v0[j]);
            v1[j] = _mm512_fmadd_ps(a1, w, v1[j]);
        }
    }
    for (int j = 0; j < V; j++) _mm512_storeu_ps(y + 16 * j, v0[j]), _mm512_storeu_ps(y + ldy + 16 * j, v1[j]);
}

/* QW_VECTORS' form of kv8_axpy_block2 (the block's vector count first). */
#define KV8_AXPY2(V, ...) kv8_axpy_block2(V, __VA_ARGS__)

/* P V of two heads (kv8_in_pairs' pair): kv8_axpy_block2 over blocks of 128 columns, then the rest. */
static void kv8_axpy_pair(float *y, int ldy, const float *alpha, int lda, const char *x, size_t ldb, int n_rows,
                          int n) {
    if (n_rows <= 0) return;
    int i = 0;
    for (; i + 128 <= n; i += 128) kv8_axpy_block2(8, y + i, ldy, alpha, lda, x, ldb, n_rows, n, i);
    if (i < n) QW_VECTORS((n - i) >> 4, KV8_AXPY2, y + i, ldy, alpha, lda, x, ldb, n_rows, n, i);
}

/* P V of one head (kv8_in_pairs' one). */
static void kv8_axpy_one(float *y, int ldy, const float *alpha, int lda, const char *x, size_t ldb, int n_rows,
                         int n) {
    (void)ldy, (void)lda;
    axpy_rows_any(1, y, alpha, x, ldb, n_rows, n);
}

/* axpy_rows over QW_KV8 rows: bitwise axpy_rows over their to_f32 widening, per head; heads in pairs. */
static void kv8_axpy_rows_avx512(float *y, int ldy, const float *alpha, int lda, int heads, const void *rows,
                                 int n_rows, int n) {
    kv8_in_pairs(kv8_axpy_pair, kv8_axpy_one, y, ldy, alpha, lda, heads, rows, n_rows, n);
}

/* ==== Rows path: C[m, n] = bias[n] + W[n, :] . A[m, :], batch-invariant ==== */

/* One order of operations per output element, whatever the tile computing
 * it: the 16-wide blocks of k, b = 0, 1, ... (the last one masked when
 * 16 does not divide K), go to chain b mod 2 in increasing k, each chain an
 * FMA accumulator of 16 lanes starting at zero; then hsum(chain 0 + chain 1)
 * + bias[n]. Every (weight row, row of A) pair of a tile has its own two
 * chains, so the tile shape, M, the row's place in A and the column slice
 * change only which pairs share a loop, never an element's arithmetic.
 *
 * C[j, n + i] = the above for i < RW weight rows and j < RA rows of A
 * (2 RW RA accumulators; RW, RA constants, the loops unrolled). Each
 * widened weight vector meets RA rows of A (FMA memory operands). Software
 * prefetch: pf == 1 (M = 1), PF_AHEAD bytes ahead along the row; pf == 2
 * (the first tile of A of a group), the next group's RW rows, so that they
 * arrive while the other tiles of A reuse this group from cache; pf == 0,
 * none. */
QW_INLINE void rows_tile(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                         const float *bias, int K, int n, int pf) {
    const size_t row = (size_t)K * (dt == QW_F32 ? 4 : 2);
    const char *w = (const char *)W + (size_t)n * row;
    const char *next = w + (size_t)RW * row; /* pf == 2: the next group's rows, at the same offsets */
    __m512 s[6][4][2]; /* the first RW x RA used: RW <= 6, RA <= 4 (rows_path) */
    for (int i = 0; i < RW; i++)
        for (int j = 0; j < RA; j++) s[i][j][0] = s[i][j][1] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        for (int i = 0; i < RW; i++) {
            const void *wi = w + (size_t)i * row;
            if (pf == 1) prefetch_w(wi, dt, k, dt == QW_F32 ? 128 : 64);
            if (pf == 2) prefetch_w(next + (size_t)i * row - PF_AHEAD, dt, k, dt == QW_F32 ? 128 : 64);
            const __m512 w0 = widen16(wi, dt, (size_t)k), w1 = widen16(wi, dt, (size_t)k + 16);
            for (int j = 0; j < RA; j++) {
                s[i][j][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(A + (size_t)j * lda + k), s[i][j][0]);
                s[i][j][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(A + (size_t)j * lda + k + 16), s[i][j][1]);
            }
        }
    }
    if (k + 16 <= K) { /* block k/16, even: chain 0 */
        for (int i = 0; i < RW; i++) {
            const __m512 w0 = widen16(w + (size_t)i * row, dt, (size_t)k);
            for (int j = 0; j < RA; j++)
                s[i][j][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(A + (size_t)j * lda + k), s[i][j][0]);
        }
        k += 16;
    }
    if (k < K) { /* the masked block K/16: chain (K/16) mod 2 (constant indices keep s in registers) */
        const __mmask16 m = lanes(K - k);
        for (int i = 0; i < RW; i++) {
            const __m512 w0 = widen16_tail(w + (size_t)i * row, dt, (size_t)k, K - k);
            for (int j = 0; j < RA; j++) {
                const __m512 a = _mm512_maskz_loadu_ps(m, A + (size_t)j * lda + k);
                if ((K >> 4) & 1) s[i][j][1] = _mm512_fmadd_ps(w0, a, s[i][j][1]);
                else s[i][j][0] = _mm512_fmadd_ps(w0, a, s[i][j][0]);
            }
        }
    }
    for (int j = 0; j < RA; j++)
        for (int i = 0; i < RW; i++)
            C[(size_t)j * ldc + n + i] = hsum(_mm512_add_ps(s[i][j][0], s[i][j][1])) + (bias ? bias[n + i] : 0.0f);
}

/* All rows of A against weight rows [n, n + RW): A in tiles of RA rows,
 * then the M mod RA rows left one tile of that height. The RW weight rows
 * (RW K elements) stay in L1/L2 while every tile of A meets them. */
QW_INLINE void rows_group(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                          const float *bias, int M, int K, int n) {
    int m = 0;
    for (; m + RA <= M; m += RA)
        rows_tile(RW, RA, C + (size_t)m * ldc, ldc, A + (size_t)m * lda, lda, W, dt, bias, K, n, M == 1 ? 1 : m ? 0 : 2);
    float *c = C + (size_t)m * ldc;
    const float *a = A + (size_t)m * lda;
    const int pf = m ? 0 : 2;
    switch (M - m) { /* < RA: the guards keep impossible heights uncompiled */
#define QW_ROWS_LEFT(r) case r: if (RA > r) rows_tile(RW, r, c, ldc, a, lda, W, dt, bias, K, n, r == 1 && M == 1 ? 1 : pf); break;
    QW_ROWS_LEFT(1) QW_ROWS_LEFT(2) QW_ROWS_LEFT(3) /* RA <= 4 */
#undef QW_ROWS_LEFT
    default: break;
    }
}

/* Weight rows [n0, n1) in groups of RW (the tile: RW x RA x 2 chains), the
 * last n1 - n0 mod RW rows one at a time. */
QW_INLINE void rows_cols(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                         const float *bias, int M, int K, int n0, int n1) {
    int n = n0;
    for (; n + RW <= n1; n += RW) rows_group(RW, RA, C, ldc, A, lda, W, dt, bias, M, K, n);
    for (; n < n1; n++) rows_group(1, RA, C, ldc, A, lda, W, dt, bias, M, K, n);
}

/* Tiles by M (measured on Zen 4, 2 threads, bf16 K = 1024 N = 3072, weights
 * from DRAM): one row of A meets one weight row at a time, 2 chains: one
 * sequential stream per thread, 31-35 GB/s, where 2, 4, 8 or 12 interleaved
 * rows (4-24 chains) reached 18-20 GB/s. 2 rows of A, 6 weight rows; 3, 4;
 * from 4 rows on 3 x 4 (24 accumulators, 6 widened weight vectors, 14 loads
 * per 24 FMAs: FMA-bound, ~75% of the FMA peak at M = 16 with the next
 * group prefetched; without that prefetch ~50%). */
QW_INLINE void rows_path(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt, const float *bias,
                         int M, int K, int n0, int n1) {
    switch (M) {
    case 1: rows_cols(RW1, 1, C, ldc, A, lda, W, dt, bias, M, K, n0, n1); break;
    case 2: rows_cols(RW2, 2, C, ldc, A, lda, W, dt, bias, M, K, n0, n1); break;
    case 3: rows_cols(RW3, 3, C, ldc, A, lda, W, dt, bias, M, K, n0, n1); break;
    default: rows_cols(RW4, RA4, C, ldc, A, lda, W, dt, bias, M, K, n0, n1); break;
    }
}

static void matmul_rows_avx512(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                               const float *bias, int M, int K, int n0, int n1) {
    if (M <= 0 || n1 <= n0) return;
    if (K <= 0) { /* empty sums */
        for (int m = 0; m < M; m++)
            for (int n = n0; n < n1; n++) C[(size_t)m * ldc + n] = bias ? bias[n] : 0.0f;
        return;
    }
    switch (wt) { /* one specialised copy per dtype */
    case QW_BF16: rows_path(C, ldc, A, lda, W, QW_BF16, bias, M, K, n0, n1); break;
    case QW_F16: rows_path(C, ldc, A, lda, W, QW_F16, bias, M, K, n0, n1); break;
    default: rows_path(C, ldc, A, lda, W, QW_F32, bias, M, K, n0, n1); break;
    }
}

/* ==== Packed path: blocked C = A @ W^T ==== */

/* P[k][j] = W[n + j, k0 + k] widened, for k < kb, j < w (16 or 32, the row
 * length of P); zero for j >= nr. */
QW_INLINE void pack_panel(float *P, int w, const void *W, qw_dtype dt, int K, int n, int nr, int k0, int kb) {
    for (int g = 0; g < w; g += 8) {
        const int rows = nr - g < 0 ? 0 : nr - g < 8 ? nr - g : 8; /* valid rows in this group */
        const size_t base = (size_t)(n + g) * (size_t)K + (size_t)k0;
        int k = 0;
        for (; k + 8 <= kb; k += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = i < rows ? widen8(W, dt, base + (size_t)i * K + k) : _mm256_setzero_ps();
            transpose8(v);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(P + (size_t)(k + j) * w + g, v[j]);
        }
        for (; k < kb; k++)
            for (int i = 0; i < 8; i++) P[(size_t)k * w + g + i] = i < rows ? load1(W, dt, base + (size_t)i * K + k) : 0.0f;
    }
}

/* C[0:R, 0:nr] = (first ? bias[0:nr] : C[0:R, 0:nr]) + A[0:R, 0:kb] @ P[0:kb, 0:16V]
 * for R (1..MR) rows and V (1 or 2) vectors of columns: R*V accumulators;
 * masks keep columns past nr unread and unwritten. */
QW_INLINE void micro_tile(int R, float *C, int ldc, const float *A, int lda, const float *P, int kb, int V, int nr,
                          int first, const float *bias) {
    __m512 c[MR][2];
    tile_load(c, C, ldc, R, V, nr, first, bias);
    for (int k = 0; k < kb; k++) {
        const __m512 p0 = _mm512_loadu_ps(P + (size_t)k * 16 * V);
        const __m512 p1 = V == 2 ? _mm512_loadu_ps(P + (size_t)k * 32 + 16) : p0;
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(A[(size_t)r * lda + k]);
            c[r][0] = _mm512_fmadd_ps(a, p0, c[r][0]);
            if (V == 2) c[r][1] = _mm512_fmadd_ps(a, p1, c[r][1]);
        }
    }
    tile_store(C, ldc, c, R, V, nr);
}

/* All rows [m0, m1) of the block against one packed panel of V vectors. */
QW_INLINE void panel_rows(float *C, int ldc, const float *A, int lda, const float *P, int kb, int V, int nr, int first,
                          const float *bias, int m0, int m1) {
    for (int m = m0; m < m1; m += MR) {
        float *c = C + (size_t)m * ldc;
        const float *a = A + (size_t)m * lda;
        QW_TILE_ROWS(m1 - m, micro_tile, c, ldc, a, lda, P, kb, V, nr, first, bias);
    }
}

static void packed_path(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt, const float *bias, int M,
                        int K, int n0, int n1) {
    float P[KB * NR] __attribute__((aligned(64)));
    for (int mb0 = 0; mb0 < M; mb0 += MB) {
        const int mb1 = M - mb0 < MB ? M : mb0 + MB;
        for (int k0 = 0; k0 < K; k0 += KB) {
            const int kb = K - k0 < KB ? K - k0 : KB;
            for (int n = n0; n < n1; n += NR) {
                const int nr = n1 - n < NR ? n1 - n : NR;
                const int V = nr > 16 ? 2 : 1; /* a narrow last panel packs and multiplies half */
                switch (dt) {                  /* one specialised copy per dtype */
                case QW_BF16: pack_panel(P, 16 * V, W, QW_BF16, K, n, nr, k0, kb); break;
                case QW_F16: pack_panel(P, 16 * V, W, QW_F16, K, n, nr, k0, kb); break;
                default: pack_panel(P, 16 * V, W, QW_F32, K, n, nr, k0, kb); break;
                }
                const float *bn = bias ? bias + n : NULL;
                if (V == 2) panel_rows(C + n, ldc, A + k0, lda, P, kb, 2, nr, k0 == 0, bn, mb0, mb1);
                else panel_rows(C + n, ldc, A + k0, lda, P, kb, 1, nr, k0 == 0, bn, mb0, mb1);
            }
        }
    }
}

/* ==== matmul: C[m, n] = sum_k A[m, k] * W[n, k] (+ bias[n]), m < M, n0 <= n < n1 ==== */

static void matmul_avx512(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt, const float *bias,
                          int M, int K, int n0, int n1) {
    if (M < PACK_MIN_M || K <= 0) {
        matmul_rows_avx512(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
        return;
    }
    if (n1 <= n0) return;
    packed_path(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
}

static void gelu_avx512(float *x, int n) { qw_gelu_erf_row(x, n); }
static void softmax_avx512(float *x, int n) { qw_softmax_row(x, n); }
static void swiglu_avx512(float *g, const float *u, int n) { qw_swiglu_row(g, u, n); }

const qw_kernels qw_kernels_avx512 = {
    .name = "avx512",
    .matmul = matmul_avx512,
    .matmul_rows = matmul_rows_avx512,
    .dot = dot_avx512,
    .axpy = axpy_avx512,
    .dot_rows = dot_rows_avx512,
    .axpy_rows = axpy_rows_avx512,
    .kv8_dot_rows = kv8_dot_rows_avx512,
    .kv8_axpy_rows = kv8_axpy_rows_avx512,
    .to_f32 = to_f32_avx512,
    .gelu = gelu_avx512,
    .softmax = softmax_avx512,
    .swiglu = swiglu_avx512,
    .kv8_quantize = kv8_quantize_avx512,
};
