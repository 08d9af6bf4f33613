/*
 * Kernels, AVX2 + FMA + F16C variant (8 floats per vector) — the hot loops
 * under every projection of the encoder and decoder.
 *
 * matmul, C = A @ W^T (+ bias), takes one of two paths:
 *
 *   rows path   (matmul_rows for any M; matmul for M < PACK_MIN_M).
 *               Memory-bound: every weight is read from DRAM once and
 *               widened in registers. Batch-invariant: one fixed order of
 *               operations per output element (two 8-lane chains over
 *               alternate blocks of k, a masked tail block, a fixed
 *               horizontal sum, then the bias), whatever the register tile,
 *               so a row's result never depends on M, on the other rows or
 *               on the column slice.
 *               M = 1 (decode): one row at a time, front to back, so each
 *               thread reads one sequential stream, with a software prefetch
 *               PF_AHEAD bytes ahead. Measured here (1 thread, bf16, weights
 *               not in cache): ~19 GB/s, the core's read bandwidth, where
 *               four interleaved rows reached 11-13 GB/s.
 *               M > 1 (decode steps of several sequences batched): tiles of
 *               2 weight rows x 3 rows of A, the next weight rows prefetched
 *               while the tiles of A reuse the current ones from cache.
 *
 *   packed path (M >= PACK_MIN_M; encoder, prefill). Compute-bound. A panel
 *               of 16 weight rows x KB columns is widened once and transposed
 *               into P[KB][16] (32 KiB); a 6x16 register tile of C then
 *               accumulates A[m, k] (broadcast) * P[k, 0:16] for six rows of
 *               A at a time: 12 accumulators, 2 loads of P and 6 broadcasts
 *               per 12 FMAs, every widened weight reused by all MB rows of A.
 *               ~85-90% of the FMA peak on one core here.
 *
 * Weights are widened in the kernel and never converted ahead: bf16 by a
 * 16-bit left shift, f16 with F16C (vcvtph2ps). Tails in M, N and K are
 * handled in place (masks, zero-padded panels), so any shape works.
 */
#include <immintrin.h> /* native even in the emulated AVX-512 test, which defines QW_TEST_EMULATE_AVX512 for all its files */
#include <string.h>

#include "kernels_x86.h"
#include "kernels_exp.h"
#include "kernels_gelu.h"

#define PACK_MIN_M 8 /* M from which the packed path beats the rows path */
#define PF_AHEAD 1024 /* rows path: software prefetch distance along a weight row, bytes */
#define NR 16        /* packed path: columns of C per panel (2 vectors) */
#define MR 6         /* packed path: rows of A per register tile */
#define KB 512       /* packed path: depth of a panel (P = KB x NR floats = 32 KiB) */
#define MB 192       /* packed path: rows of A per block (MB x KB floats = 384 KiB, in L2) */

/* ==== Loads and reductions ==== */

/* Mask of the first t (0..8) lanes. */
QW_INLINE __m256i lane_mask(int t) {
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(m + 8 - t));
}

/* W[i .. i+8) widened to f32. */
QW_INLINE __m256 widen8(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: {
        return bf16_to_f32x8(_mm_loadu_si128((const __m128i *)((const uint16_t *)W + i)));
    }
    case QW_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)W + i)));
    default: return _mm256_loadu_ps((const float *)W + i);
    }
}

/* W[i .. i+t) widened, zeros after (t in 0..8); reads nothing past i + t. */
QW_INLINE __m256 widen8_tail(const void *W, qw_dtype dt, size_t i, int t) {
    if (dt == QW_F32) return _mm256_maskload_ps((const float *)W + i, lane_mask(t));
    uint16_t h[8] = {0}; /* no 16-bit masked load in AVX2: copy the tail */
    memcpy(h, (const uint16_t *)W + i, (size_t)t * sizeof(uint16_t));
    const __m128i v = _mm_loadu_si128((const __m128i *)h);
    if (dt == QW_BF16) return bf16_to_f32x8(v);
    return _mm256_cvtph_ps(v);
}

QW_INLINE float load1(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: return qw_bf16_to_f32(((const uint16_t *)W)[i]);
    case QW_F16: return _cvtsh_ss(((const uint16_t *)W)[i]);
    default: return ((const float *)W)[i];
    }
}

/* Asks for the weights PF_AHEAD bytes past w[k] (one line; two for f32,
 * which is consumed twice as fast). The hardware prefetcher alone left
 * DRAM idle while the FMAs ran; this overlaps the two. */
QW_INLINE void prefetch_w(const void *w, qw_dtype dt, int k) {
    const char *p = (const char *)w + (size_t)k * (dt == QW_F32 ? 4 : 2) + PF_AHEAD;
    _mm_prefetch(p, _MM_HINT_T0);
    if (dt == QW_F32) _mm_prefetch(p + 64, _MM_HINT_T0);
}

QW_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ==== Vector helpers ==== */

/* dst[i] = (float)src[i] */
static void to_f32_avx2(float *dst, const void *src, qw_dtype dt, int n) {
    if (dt == QW_KV8) { /* 8 values: sign-extended, converted, times their block's scale */
        const int8_t *q = (const int8_t *)src;
        for (int i = 0; i < n; i += 8) {
            const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + i))));
            _mm256_storeu_ps(dst + i, _mm256_mul_ps(v, _mm256_set1_ps(qw_kv8_scale(src, n, i))));
        }
        return;
    }
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm256_storeu_ps(dst + i, widen8(src, dt, (size_t)i));
        _mm256_storeu_ps(dst + i + 8, widen8(src, dt, (size_t)i + 8));
        _mm256_storeu_ps(dst + i + 16, widen8(src, dt, (size_t)i + 16));
        _mm256_storeu_ps(dst + i + 24, widen8(src, dt, (size_t)i + 24));
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, widen8(src, dt, (size_t)i));
    if (i < n) _mm256_maskstore_ps(dst + i, lane_mask(n - i), widen8_tail(src, dt, (size_t)i, n - i));
}

/* qw_kv8_quantize, a block of 32 (four vectors) at a time: the same products, clamps and rounding
 * (halves away from zero: + copysign(0.5), then truncation), so the same bytes. */
static void kv8_quantize_avx2(void *row, const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), hi = _mm256_set1_ps(127.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f);
    for (int b = 0; b < n; b += QW_KV8_BLOCK) {
        __m256 a[4], m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            a[j] = _mm256_loadu_ps(x + b + 8 * j);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, a[j]), m); /* a NaN |x| keeps m, as the C comparison */
        }
        __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        r = _mm_max_ps(r, _mm_movehl_ps(r, r));
        r = _mm_max_ss(r, _mm_shuffle_ps(r, r, 1));
        const float amax = _mm_cvtss_f32(r);
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f, scale = amax / 127.0f;
        __m256i q[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_mul_ps(a[j], _mm256_set1_ps(inv));
            v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0 */
            v = _mm256_max_ps(_mm256_min_ps(v, hi), lo);
            v = _mm256_add_ps(v, _mm256_or_ps(_mm256_and_ps(v, sign), half));
            q[j] = _mm256_cvttps_epi32(v);
        }
        /* 32 int32 -> int8 (no saturation needed: |q| <= 127); the packs interleave 128-bit lanes */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)((int8_t *)row + b),
                            _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        qw_kv8_set_scale(row, n, b, scale);
    }
}

/* sum_i a[i] * b[i] */
static float dot_avx2(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        __m256i m = lane_mask(n - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* y[i] += alpha * x[i] */
static void axpy_avx2(float *y, float alpha, const float *x, int n) {
    const __m256 a = _mm256_set1_ps(alpha);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        __m256i m = lane_mask(n - i);
        _mm256_maskstore_ps(y + i, m, _mm256_fmadd_ps(a, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m)));
    }
}

/* ==== Many rows against one vector (attention of one query) ==== */

/* [hsum(a), hsum(b), hsum(c), hsum(d)], each bitwise hsum's: the same pairs
 * of lanes added in the same tree, four vectors per instruction. */
QW_INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    /* lo + hi: [a.lo + a.hi | b.lo + b.hi], [c.. | d..]; s_i = v_i + v_{i+4} */
    const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    /* [s0 + s2, s1 + s3] of a and c (low half), b and d (high half) */
    const __m256 u = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xee));
    /* (s0 + s2) + (s1 + s3): a, c in lanes 0, 2; b, d in lanes 4, 6 */
    const __m256 w = _mm256_add_ps(u, _mm256_permute_ps(u, 0xb1));
    return _mm256_castps256_ps128(_mm256_permutevar8x32_ps(w, _mm256_setr_epi32(0, 4, 2, 6, 0, 0, 0, 0)));
}

/* Lanes i .. i + 7 of a row: f32 (x + i), or a QW_KV8 row of n values widened in registers as
 * to_f32 widens it (sign-extended, converted, times the block's scale), i a multiple of 8. */
QW_INLINE __m256 row8(const void *x, int kv8, int n, int i) {
    if (!kv8) return _mm256_loadu_ps((const float *)x + i);
    const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)x + i))));
    return _mm256_mul_ps(v, _mm256_set1_ps(qw_kv8_scale(x, n, i)));
}

/* out[r] = dot_avx2(q, row r, n) for R (1..3) rows side by side, row r at rows + r * ldb bytes,
 * f32 or (kv8) QW_KV8 rows widened in registers: each row its own four chains, fed as dot_avx2
 * feeds them (4R + 1 registers), then one hsum4. A QW_KV8 row's n is a multiple of 32 (no tail). */
QW_INLINE void dot_tile(int R, int kv8, float *out, const float *q, const char *rows, size_t ldb, int n) {
    __m256 s[3][4];
    const char *x[3];
    for (int r = 0; r < R; r++) {
        x[r] = rows + (size_t)r * ldb;
        for (int j = 0; j < 4; j++) s[r][j] = _mm256_setzero_ps();
    }
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 4; j++) {
            const __m256 qv = _mm256_loadu_ps(q + i + 8 * j);
            for (int r = 0; r < R; r++) s[r][j] = _mm256_fmadd_ps(qv, row8(x[r], kv8, n, i + 8 * j), s[r][j]);
        }
    for (; i + 8 <= n; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        for (int r = 0; r < R; r++) s[r][0] = _mm256_fmadd_ps(qv, row8(x[r], kv8, n, i), s[r][0]);
    }
    if (i < n) {
        const __m256i m = lane_mask(n - i);
        const __m256 qv = _mm256_maskload_ps(q + i, m);
        for (int r = 0; r < R; r++)
            s[r][1] = _mm256_fmadd_ps(qv, _mm256_maskload_ps((const float *)(const void *)x[r] + i, m), s[r][1]);
    }
    __m256 c[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int r = 0; r < R; r++) c[r] = _mm256_add_ps(_mm256_add_ps(s[r][0], s[r][1]), _mm256_add_ps(s[r][2], s[r][3]));
    float t[4];
    _mm_storeu_ps(t, hsum4(c[0], c[1], c[2], c[3]));
    for (int r = 0; r < R; r++) out[r] = t[r];
}

/* dot_tile over n_rows rows, three at a time. */
QW_INLINE void dot_rows_any(int kv8, float *out, const float *q, const char *rows, size_t ldb, int n_rows, int n) {
    int r = 0;
    for (; r + 3 <= n_rows; r += 3) dot_tile(3, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n);
    switch (n_rows - r) {
    case 2: dot_tile(2, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n); break;
    case 1: dot_tile(1, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n); break;
    default: break;
    }
}

/* out[r] = dot_avx2(q, rows + r * ld, n), bitwise, three rows at a time. */
static void dot_rows_avx2(float *out, const float *q, const float *rows, int ld, int n_rows, int n) {
    dot_rows_any(0, out, q, (const char *)rows, (size_t)ld * sizeof(float), n_rows, n);
}

/* dot_tile's four chains of one QW_KV8 row x for two heads (q and q + ldq): each widened vector
 * meets both heads' queries, so the row is widened once for the pair; c[0], c[1] get each head's
 * chains added as dot_tile adds them (8 accumulators: 16 registers hold no more rows). n is a
 * multiple of 32 (no tail). */
QW_INLINE void kv8_dot_row2(__m256 c[2], const float *q, int ldq, const char *x, int n) {
    __m256 s[2][4];
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++) s[h][j] = _mm256_setzero_ps();
    for (int i = 0; i + 32 <= n; i += 32)
        for (int j = 0; j < 4; j++) {
            const __m256 w = row8(x, 1, n, i + 8 * j);
            s[0][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8 * j), w, s[0][j]);
            s[1][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + ldq + i + 8 * j), w, s[1][j]);
        }
    for (int h = 0; h < 2; h++) c[h] = _mm256_add_ps(_mm256_add_ps(s[h][0], s[h][1]), _mm256_add_ps(s[h][2], s[h][3]));
}

/* The scores of two heads (kv8_in_pairs' pair): kv8_dot_row2 over the rows, two rows to an hsum4,
 * the rows a few ahead prefetched. */
static void kv8_dot_pair(float *o, int ldo, const float *q, int ldq, const char *x, size_t ldb, int n_rows, int n) {
    for (int r = 0; r < n_rows; r += 2) {
        __m256 c[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        const int two = r + 1 < n_rows;
        qw_prefetch_kv_row(x, ldb, r, 2 * ldb);
        kv8_dot_row2(c, q, ldq, x + (size_t)r * ldb, n);
        if (two) kv8_dot_row2(c + 2, q, ldq, x + (size_t)(r + 1) * ldb, n);
        float t[4];
        _mm_storeu_ps(t, hsum4(c[0], c[1], c[2], c[3]));
        o[r] = t[0], o[(size_t)ldo + r] = t[1];
        if (two) o[r + 1] = t[2], o[(size_t)ldo + r + 1] = t[3];
    }
}

/* The scores of one head (kv8_in_pairs' one). */
static void kv8_dot_one(float *o, int ldo, const float *q, int ldq, const char *x, size_t ldb, int n_rows, int n) {
    (void)ldo, (void)ldq;
    dot_rows_any(1, o, q, x, ldb, n_rows, n);
}

/* dot_rows over QW_KV8 rows: bitwise dot_rows over their to_f32 widening, per head; heads in pairs. */
static void kv8_dot_rows_avx2(float *out, int ldo, const float *q, int ldq, int heads, const void *rows, int n_rows,
                              int n) {
    kv8_in_pairs(kv8_dot_pair, kv8_dot_one, out, ldo, q, ldq, heads, rows, n_rows, n);
}

/* y[0 : 8V + t) += alpha[r] * rows[r][i0 : i0 + 8V + t) for every row r in order (row r at
 * rows + r * ldb bytes: f32, or a QW_KV8 row of n values widened in registers, t = 0), the V
 * vectors (and a masked one of t < 8 lanes) of y in registers throughout; per lane the FMA
 * axpy_avx2 does, in the same order. */
QW_INLINE void axpy_block(int V, int kv8, float *y, const float *alpha, const char *rows, size_t ldb, int n_rows,
                          int n, int i0, int t) {
    __m256 v[8], vt = _mm256_setzero_ps();
    const __m256i m = lane_mask(t);
    for (int j = 0; j < V; j++) v[j] = _mm256_loadu_ps(y + 8 * j);
    if (t) vt = _mm256_maskload_ps(y + 8 * V, m);
    for (int r = 0; r < n_rows; r++) {
        const __m256 a = _mm256_broadcast_ss(alpha + r);
        const char *x = rows + (size_t)r * ldb;
        for (int j = 0; j < V; j++) v[j] = _mm256_fmadd_ps(a, row8(x, kv8, n, i0 + 8 * j), v[j]);
        if (t) vt = _mm256_fmadd_ps(a, _mm256_maskload_ps((const float *)(const void *)x + i0 + 8 * V, m), vt);
    }
    for (int j = 0; j < V; j++) _mm256_storeu_ps(y + 8 * j, v[j]);
    if (t) _mm256_maskstore_ps(y + 8 * V, m, vt);
}

/* axpy_avx2(y, alpha[r], row r, n) for r in order, bitwise: blocks of 64 columns (8 of the 16
 * registers), then the rest in one block. */
QW_INLINE void axpy_rows_any(int kv8, float *y, const float *alpha, const char *rows, size_t ldb, int n_rows, int n) {
    if (n_rows <= 0) return;
    int i = 0;
    for (; i + 64 <= n; i += 64) axpy_block(8, kv8, y + i, alpha, rows, ldb, n_rows, n, i, 0);
    /* the rest in one block: whole vectors, and a masked one for a part of one */
    if (i < n) QW_VECTORS((n - i) >> 3, axpy_block, kv8, y + i, alpha, rows, ldb, n_rows, n, i, (n - i) & 7);
}

static void axpy_rows_avx2(float *y, const float *alpha, const float *rows, int ld, int n_rows, int n) {
    axpy_rows_any(0, y, alpha, (const char *)rows, (size_t)ld * sizeof(float), n_rows, n);
}

/* axpy_block's 4 vectors of QW_KV8 rows for two heads (y, alpha and y + ldy, alpha + lda) side by
 * side: each widened vector of a row goes into both heads' FMAs, in axpy_block's order per lane
 * (8 accumulators); the rows a few ahead prefetched on the first block. n is a multiple of 32. */
QW_INLINE void kv8_axpy_block2(float *y, int ldy, const float *alpha, int lda, const char *rows, size_t ldb,
                               int n_rows, int n, int i0) {
    __m256 v0[4], v1[4];
    for (int j = 0; j < 4; j++) v0[j] = _mm256_loadu_ps(y + 8 * j), v1[j] = _mm256_loadu_ps(y + ldy + 8 * j);
    for (int r = 0; r < n_rows; r++) {
        const __m256 a0 = _mm256_broadcast_ss(alpha + r), a1 = _mm256_broadcast_ss(alpha + lda + r);
        const char *x = rows + (size_t)r * ldb;
        if (i0 == 0) qw_prefetch_kv_row(rows, ldb, r, ldb);
        for (int j = 0; j < 4; j++) {
            const __m256 w = row8(x, 1, n, i0 + 8 * j);
            v0[j] = _mm256_fmadd_ps(a0, w, v0[j]);
            v1[j] = _mm256_fmadd_ps(a1, w, v1[j]);
        }
    }
    for (int j = 0; j < 4; j++) _mm256_storeu_ps(y + 8 * j, v0[j]), _mm256_storeu_ps(y + ldy + 8 * j, v1[j]);
}

/* P V of two heads (kv8_in_pairs' pair): kv8_axpy_block2, 32 columns a pass. */
static void kv8_axpy_pair(float *y, int ldy, const float *alpha, int lda, const char *x, size_t ldb, int n_rows,
                          int n) {
    if (n_rows <= 0) return;
    for (int i = 0; i < n; i += 32) kv8_axpy_block2(y + i, ldy, alpha, lda, x, ldb, n_rows, n, i);
}

/* P V of one head (kv8_in_pairs' one). */
static void kv8_axpy_one(float *y, int ldy, const float *alpha, int lda, const char *x, size_t ldb, int n_rows,
                         int n) {
    (void)ldy, (void)lda;
    axpy_rows_any(1, y, alpha, x, ldb, n_rows, n);
}

/* axpy_rows over QW_KV8 rows: bitwise axpy_rows over their to_f32 widening, per head; heads in pairs. */
static void kv8_axpy_rows_avx2(float *y, int ldy, const float *alpha, int lda, int heads, const void *rows,
                               int n_rows, int n) {
    kv8_in_pairs(kv8_axpy_pair, kv8_axpy_one, y, ldy, alpha, lda, heads, rows, n_rows, n);
}

/* ==== Rows path: C[m, n] = bias[n] + W[n, :] . A[m, :], batch-invariant ==== */

/* One order of operations per output element, whatever the tile computing
 * it: the 8-wide blocks of k, b = 0, 1, ... (the last one masked when 8 does
 * not divide K), go to chain b mod 2 in increasing k, each chain an FMA
 * accumulator of 8 lanes starting at zero; then hsum(chain 0 + chain 1) +
 * bias[n]. Every (weight row, row of A) pair of a tile has its own two
 * chains, so the tile shape, M, the row's place in A and the column slice
 * change only which pairs share a loop, never an element's arithmetic.
 *
 * C[j, n + i] = the above for i < RW weight rows and j < RA rows of A
 * (2 RW RA accumulators, at most 12 of the 16 registers; RW, RA constants,
 * the loops unrolled). Each widened weight vector meets RA rows of A (FMA
 * memory operands). Software prefetch: pf == 1 (M = 1), PF_AHEAD bytes
 * ahead along the row; pf == 2 (the first tile of A of a group), the next
 * group's RW rows, so that they arrive while the other tiles of A reuse
 * this group from cache; pf == 0, none. */
QW_INLINE void rows_tile(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                         const float *bias, int K, int n, int pf) {
    const size_t row = (size_t)K * (dt == QW_F32 ? 4 : 2);
    const char *w = (const char *)W + (size_t)n * row;
    const char *next = w + (size_t)RW * row; /* pf == 2: the next group's rows, at the same offsets */
    __m256 s[6][3][2];
    for (int i = 0; i < RW; i++)
        for (int j = 0; j < RA; j++) s[i][j][0] = s[i][j][1] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < RW; i++) {
            const void *wi = w + (size_t)i * row;
            if (pf == 1 && !(k & 31)) prefetch_w(wi, dt, k);
            if (pf == 2 && !(k & 31)) prefetch_w(next + (size_t)i * row - PF_AHEAD, dt, k);
            const __m256 w0 = widen8(wi, dt, (size_t)k), w1 = widen8(wi, dt, (size_t)k + 8);
            for (int j = 0; j < RA; j++) {
                s[i][j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(A + (size_t)j * lda + k), s[i][j][0]);
                s[i][j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(A + (size_t)j * lda + k + 8), s[i][j][1]);
            }
        }
    }
    if (k + 8 <= K) { /* block k/8, even: chain 0 */
        for (int i = 0; i < RW; i++) {
            const __m256 w0 = widen8(w + (size_t)i * row, dt, (size_t)k);
            for (int j = 0; j < RA; j++)
                s[i][j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(A + (size_t)j * lda + k), s[i][j][0]);
        }
        k += 8;
    }
    if (k < K) { /* the masked block K/8: chain (K/8) mod 2 (constant indices keep s in registers) */
        const __m256i m = lane_mask(K - k);
        for (int i = 0; i < RW; i++) {
            const __m256 w0 = widen8_tail(w + (size_t)i * row, dt, (size_t)k, K - k);
            for (int j = 0; j < RA; j++) {
                const __m256 a = _mm256_maskload_ps(A + (size_t)j * lda + k, m);
                if ((K >> 3) & 1) s[i][j][1] = _mm256_fmadd_ps(w0, a, s[i][j][1]);
                else s[i][j][0] = _mm256_fmadd_ps(w0, a, s[i][j][0]);
            }
        }
    }
    for (int j = 0; j < RA; j++)
        for (int i = 0; i < RW; i++)
            C[(size_t)j * ldc + n + i] = hsum(_mm256_add_ps(s[i][j][0], s[i][j][1])) + (bias ? bias[n + i] : 0.0f);
}

/* All rows of A against weight rows [n, n + RW): A in tiles of RA rows,
 * then the M mod RA rows left one tile of that height. The RW weight rows
 * stay in L1/L2 while every tile of A meets them. */
QW_INLINE void rows_group(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                          const float *bias, int M, int K, int n) {
    int m = 0;
    for (; m + RA <= M; m += RA)
        rows_tile(RW, RA, C + (size_t)m * ldc, ldc, A + (size_t)m * lda, lda, W, dt, bias, K, n, M == 1 ? 1 : m ? 0 : 2);
    float *c = C + (size_t)m * ldc;
    const float *a = A + (size_t)m * lda;
    const int pf = m ? 0 : 2;
    switch (M - m) {
    case 0: break;
    case 1: rows_tile(RW, 1, c, ldc, a, lda, W, dt, bias, K, n, M == 1 ? 1 : pf); break;
    default: if (RA > 2) rows_tile(RW, 2, c, ldc, a, lda, W, dt, bias, K, n, pf); break;
    }
}

/* Weight rows [n0, n1) in groups of RW, the last n1 - n0 mod RW one at a time. */
QW_INLINE void rows_cols(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                         const float *bias, int M, int K, int n0, int n1) {
    int n = n0;
    for (; n + RW <= n1; n += RW) rows_group(RW, RA, C, ldc, A, lda, W, dt, bias, M, K, n);
    for (; n < n1; n++) rows_group(1, RA, C, ldc, A, lda, W, dt, bias, M, K, n);
}

/* Tiles by M: one row of A meets one weight row at a time (2 chains, one
 * sequential stream per thread, as measured best for the AVX-512 set and as
 * the old matvec found here); 2 rows of A, 3 weight rows; from 3 rows on
 * 2 x 3 (12 accumulators, 4 widened weight vectors, A as memory operands:
 * 10 loads per 12 FMAs). */
QW_INLINE void rows_path(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt, const float *bias,
                         int M, int K, int n0, int n1) {
    switch (M) {
    case 1: rows_cols(1, 1, C, ldc, A, lda, W, dt, bias, M, K, n0, n1); break;
    case 2: rows_cols(3, 2, C, ldc, A, lda, W, dt, bias, M, K, n0, n1); break;
    default: rows_cols(2, 3, C, ldc, A, lda, W, dt, bias, M, K, n0, n1); break;
    }
}

static void matmul_rows_avx2(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
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

/* P[k][j] = W[n + j, k0 + k] widened, for k < kb, j < NR; zero for j >= nr. */
QW_INLINE void pack_panel(float *P, const void *W, qw_dtype dt, int K, int n, int nr, int k0, int kb) {
    for (int g = 0; g < NR; g += 8) {
        const int rows = nr - g < 0 ? 0 : nr - g < 8 ? nr - g : 8; /* valid rows in this group */
        const size_t base = (size_t)(n + g) * (size_t)K + (size_t)k0;
        int k = 0;
        for (; k + 8 <= kb; k += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = i < rows ? widen8(W, dt, base + (size_t)i * K + k) : _mm256_setzero_ps();
            transpose8(v);
            for (int j = 0; j < 8; j++) _mm256_store_ps(P + (size_t)(k + j) * NR + g, v[j]);
        }
        for (; k < kb; k++)
            for (int i = 0; i < 8; i++) P[(size_t)k * NR + g + i] = i < rows ? load1(W, dt, base + (size_t)i * K + k) : 0.0f;
    }
}

/* C[0:R, 0:nr] = (first ? bias[0:nr] : C[0:R, 0:nr]) + A[0:R, 0:kb] @ P[0:kb, 0:16]
 * for R (1..MR) rows: 2R accumulators, columns past nr neither read nor written. */
QW_INLINE void micro_tile(float *C, int ldc, const float *A, int lda, const float *P, int kb, int R, int nr, int first,
                          const float *bias) {
    __m256 c[MR][2];
    const int full = nr == NR;
    const __m256i m0 = lane_mask(nr < 8 ? nr : 8), m1 = lane_mask(nr > 8 ? nr - 8 : 0);
    if (first) {
        __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
        if (bias) {
            b0 = full ? _mm256_loadu_ps(bias) : _mm256_maskload_ps(bias, m0);
            b1 = full ? _mm256_loadu_ps(bias + 8) : _mm256_maskload_ps(bias + 8, m1);
        }
        for (int r = 0; r < R; r++) c[r][0] = b0, c[r][1] = b1;
    } else {
        for (int r = 0; r < R; r++) {
            const float *cr = C + (size_t)r * ldc;
            c[r][0] = full ? _mm256_loadu_ps(cr) : _mm256_maskload_ps(cr, m0);
            c[r][1] = full ? _mm256_loadu_ps(cr + 8) : _mm256_maskload_ps(cr + 8, m1);
        }
    }
    for (int k = 0; k < kb; k++) {
        const __m256 p0 = _mm256_load_ps(P + (size_t)k * NR), p1 = _mm256_load_ps(P + (size_t)k * NR + 8);
        for (int r = 0; r < R; r++) {
            const __m256 a = _mm256_broadcast_ss(A + (size_t)r * lda + k);
            c[r][0] = _mm256_fmadd_ps(a, p0, c[r][0]);
            c[r][1] = _mm256_fmadd_ps(a, p1, c[r][1]);
        }
    }
    for (int r = 0; r < R; r++) {
        float *cr = C + (size_t)r * ldc;
        if (full) {
            _mm256_storeu_ps(cr, c[r][0]);
            _mm256_storeu_ps(cr + 8, c[r][1]);
        } else {
            _mm256_maskstore_ps(cr, m0, c[r][0]);
            _mm256_maskstore_ps(cr + 8, m1, c[r][1]);
        }
    }
}

static void packed_path(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt, const float *bias, int M,
                        int K, int n0, int n1) {
    float P[KB * NR] __attribute__((aligned(32)));
    for (int mb0 = 0; mb0 < M; mb0 += MB) {
        const int mb1 = M - mb0 < MB ? M : mb0 + MB;
        for (int k0 = 0; k0 < K; k0 += KB) {
            const int kb = K - k0 < KB ? K - k0 : KB;
            for (int n = n0; n < n1; n += NR) {
                const int nr = n1 - n < NR ? n1 - n : NR;
                switch (dt) { /* one specialised copy per dtype */
                case QW_BF16: pack_panel(P, W, QW_BF16, K, n, nr, k0, kb); break;
                case QW_F16: pack_panel(P, W, QW_F16, K, n, nr, k0, kb); break;
                default: pack_panel(P, W, QW_F32, K, n, nr, k0, kb); break;
                }
                const float *bn = bias ? bias + n : NULL;
                for (int m = mb0; m < mb1; m += MR) {
                    float *c = C + (size_t)m * ldc + n;
                    const float *a = A + (size_t)m * lda + k0;
                    switch (mb1 - m) {
                    case 1: micro_tile(c, ldc, a, lda, P, kb, 1, nr, k0 == 0, bn); break;
                    case 2: micro_tile(c, ldc, a, lda, P, kb, 2, nr, k0 == 0, bn); break;
                    case 3: micro_tile(c, ldc, a, lda, P, kb, 3, nr, k0 == 0, bn); break;
                    case 4: micro_tile(c, ldc, a, lda, P, kb, 4, nr, k0 == 0, bn); break;
                    case 5: micro_tile(c, ldc, a, lda, P, kb, 5, nr, k0 == 0, bn); break;
                    default: micro_tile(c, ldc, a, lda, P, kb, MR, nr, k0 == 0, bn); break;
                    }
                }
            }
        }
    }
}

/* ==== matmul: C[m, n] = sum_k A[m, k] * W[n, k] (+ bias[n]), m < M, n0 <= n < n1 ==== */

static void matmul_avx2(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt, const float *bias, int M,
                        int K, int n0, int n1) {
    if (M < PACK_MIN_M || K <= 0) {
        matmul_rows_avx2(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
        return;
    }
    if (n1 <= n0) return;
    packed_path(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
}

static void gelu_avx2(float *x, int n) { qw_gelu_erf_row(x, n); }
static void softmax_avx2(float *x, int n) { qw_softmax_row(x, n); }
static void swiglu_avx2(float *g, const float *u, int n) { qw_swiglu_row(g, u, n); }

const qw_kernels qw_kernels_avx2 = {
    .name = "avx2",
    .matmul = matmul_avx2,
    .matmul_rows = matmul_rows_avx2,
    .dot = dot_avx2,
    .axpy = axpy_avx2,
    .dot_rows = dot_rows_avx2,
    .axpy_rows = axpy_rows_avx2,
    .kv8_dot_rows = kv8_dot_rows_avx2,
    .kv8_axpy_rows = kv8_axpy_rows_avx2,
    .to_f32 = to_f32_avx2,
    .gelu = gelu_avx2,
    .softmax = softmax_avx2,
    .swiglu = swiglu_avx2,
    .kv8_quantize = kv8_quantize_avx2,
};
