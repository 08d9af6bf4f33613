/*
 * Kernels, AVX-512 BF16 variant — opt-in (QWEN_ISA_AVX512BF16), never AUTO.
 *
 * For bf16 weights and M >= 8 (encoder, prefill) matmul uses the BF16 dot
 * product: vdpbf16ps accumulates, per f32 lane, a[2i] * w[2i] + a[2i+1] * w[2i+1]
 * in f32. The weights are used exactly as stored; the activations A are
 * rounded to bf16 (nearest even) once per block. That rounding (8 bits of
 * mantissa) is why this set is opt-in: results differ from the f32 sets by
 * about 1e-3 relative, so greedy tokens can differ from the reference on
 * near ties. Everything else (decode, f16/f32 weights, dot, axpy, dot_rows,
 * axpy_rows, to_f32) runs the AVX-512 table. The products on weights packed
 * once (qw_bf16p_*, kernels.h) serve the encoder's linears and stem, and
 * precision FAST's prefill attention (ops.c qw_attention).
 *
 * C[m, n] = sum_k bf16(A[m, k]) * W[n, k] (+ bias[n]), blocked like the
 * AVX-512 packed path: a panel of 32 weight rows x KB columns is transposed
 * in pairs of k (the dot product's operand layout, "VNNI" order) into
 * P[k/2][32][2]; a 12x32 register tile of C (24 accumulators) meets, per
 * pair of k, one broadcast pair of A per row and 2 vectors of P: 24 dot
 * products (32 multiply-adds each) per 2 loads and 12 broadcasts, and no
 * horizontal sums. A is rounded to bf16 once per block of MB x KB.
 */
#include "kernels_avx512_tile.h"
#include "kernels_gelu.h"

#include <string.h>

#define BF_NR 32  /* columns of C per panel (2 vectors) */
#define BF_MR QW_TILE_MR /* rows of A per register tile (12) */
#define BF_KB 256 /* depth of a panel, even (P = KB/2 x 32 pairs of bf16 = 16 KiB) */
#define BF_MB 96  /* rows of A per block (MB x KB bf16 = 48 KiB) */

/* Reinterprets 32 bf16 values as the dot product's operand type. */
QW_INLINE __m512bh bf_as_bh(__m512i v) {
    __m512bh r;
    memcpy(&r, &v, sizeof(r));
    return r;
}

/* dst[i] = bf16(src[i]) for i < n (round to nearest even, NaN kept quiet),
 * zeros up to np: bit for bit qw_f32_to_bf16. */
static void bf_round_row(uint16_t *dst, const float *src, int n, int np) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), bf16x16(_mm512_loadu_ps(src + i)));
    for (; i < n; i++) dst[i] = qw_f32_to_bf16(src[i]);
    for (; i < np; i++) dst[i] = 0;
}

/* One pair of k as a 32-bit word: W[row, k], W[row, k + 1] (zero past kb). */
QW_INLINE uint32_t bf_pair(const uint16_t *w, int k, int kb) {
    const uint32_t lo = w[k], hi = k + 1 < kb ? w[k + 1] : 0;
    return lo | hi << 16;
}

/* P[q][j] = (W[n + j, k0 + 2q], W[n + j, k0 + 2q + 1]) for q < kb/2 rounded up,
 * j < w (16 or 32, the row length of P); zero for j >= nr and past kb. */
static void bf_pack_panel(uint32_t *P, int w, const uint16_t *W, int K, int n, int nr, int k0, int kb) {
    const int kq = (kb + 1) / 2;
    for (int g = 0; g < w; g += 8) {
        const int rows = nr - g < 0 ? 0 : nr - g < 8 ? nr - g : 8; /* valid rows in this group */
        const uint16_t *base = W + (size_t)(n + g) * (size_t)K + (size_t)k0;
        int q = 0;
        for (; 2 * q + 16 <= kb; q += 8) { /* 8 pairs = 16 values of each of 8 rows */
            __m256 v[8]; /* 8 pairs of each of 8 rows, moved as 32-bit lanes */
            for (int i = 0; i < 8; i++)
                v[i] = i < rows ? _mm256_loadu_ps((const float *)(const void *)(base + (size_t)i * K + 2 * q)) : _mm256_setzero_ps();
            transpose8(v);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps((float *)(void *)(P + (size_t)(q + j) * w + g), v[j]);
        }
        for (; q < kq; q++)
            for (int i = 0; i < 8; i++) P[(size_t)q * w + g + i] = i < rows ? bf_pair(base + (size_t)i * K, 2 * q, kb) : 0;
    }
}

/* c[r] += A[r, 0:2kq] @ P[0:kq, 0:16V] in the order of k, for R (1..BF_MR) rows of bf16 pairs a32
 * (lda32 words apart) and V (1 or 2) vectors of P (ldp words a pair of k). */
QW_INLINE void bf_dots(int R, __m512 c[BF_MR][2], const uint32_t *a32, size_t lda32, const uint32_t *P, int ldp,
                       int kq, int V) {
    for (int q = 0; q < kq; q++) {
        const __m512bh p0 = bf_as_bh(_mm512_loadu_si512((const void *)(P + (size_t)q * ldp)));
        const __m512bh p1 = V == 2 ? bf_as_bh(_mm512_loadu_si512((const void *)(P + (size_t)q * ldp + 16))) : p0;
        for (int r = 0; r < R; r++) {
            const __m512bh a = bf_as_bh(_mm512_set1_epi32((int)a32[(size_t)r * lda32 + q]));
            c[r][0] = _mm512_dpbf16_ps(c[r][0], a, p0);
            if (V == 2) c[r][1] = _mm512_dpbf16_ps(c[r][1], a, p1);
        }
    }
}

/* C[0:R, 0:nr] = (first ? bias[0:nr] : C[0:R, 0:nr]) + Ab[0:R, 0:2kq] @ P[0:kq, 0:16V]
 * for R (1..BF_MR) rows and V (1 or 2) vectors of columns; Ab rows of bf16
 * (stride lda, even, zero-padded to 2kq). Masks keep columns past nr
 * unread and unwritten. */
QW_INLINE void bf_tile(int R, float *C, int ldc, const uint16_t *Ab, int lda, const uint32_t *P, int ldp, int kq,
                       int V, int nr, int first, const float *bias) {
    __m512 c[BF_MR][2];
    tile_load(c, C, ldc, R, V, nr, first, bias);
    bf_dots(R, c, (const uint32_t *)(const void *)Ab, (size_t)lda / 2, P, ldp, kq, V);
    tile_store(C, ldc, c, R, V, nr);
}

/* All rows [0, mb) of the block against one packed panel of V vectors (ldp words per pair of k). */
QW_INLINE void bf_panel_rows(float *C, int ldc, const uint16_t *Ab, int lda, const uint32_t *P, int ldp, int kq, int V,
                             int nr, int first, const float *bias, int mb) {
    for (int m = 0; m < mb; m += BF_MR) {
        float *c = C + (size_t)m * ldc;
        const uint16_t *a = Ab + (size_t)m * lda;
        QW_TILE_ROWS(mb - m, bf_tile, c, ldc, a, lda, P, ldp, kq, V, nr, first, bias);
    }
}

/* C[:, n0:n1] = bf16(A) @ W^T over blocks of MB rows and KB of k. The panels of W are either packed
 * here, per block (W, into a buffer of 16 or 32 words a pair of k), or read from the copy packed
 * once at load (Pw, 32 words a pair; see QW_BF16P below; n0 a multiple of 16): the same words in
 * the same order either way. */
static void bf_matmul(float *C, int ldc, const float *A, int lda, const uint16_t *W, const uint32_t *Pw,
                      const float *bias, int M, int K, int n0, int n1) {
    uint16_t Ab[BF_MB * BF_KB] __attribute__((aligned(64))); /* 48 KiB: the block of A, rounded to bf16 */
    uint32_t P[BF_KB / 2 * BF_NR] __attribute__((aligned(64))); /* 16 KiB: a panel of W packed here */
    const size_t panel = (size_t)((K + 1) / 2) * 32; /* words of one panel of Pw */
    for (int mb0 = 0; mb0 < M; mb0 += BF_MB) {
        const int mb = M - mb0 < BF_MB ? M - mb0 : BF_MB;
        for (int k0 = 0; k0 < K; k0 += BF_KB) {
            const int kb = K - k0 < BF_KB ? K - k0 : BF_KB;
            const int kq = (kb + 1) / 2, kp = 2 * kq;
            for (int i = 0; i < mb; i++) bf_round_row(Ab + (size_t)i * kp, A + (size_t)(mb0 + i) * lda + k0, kb, kp);
            for (int n = n0; n < n1;) {
                const int left = n1 - n;
                int nr, ldp;
                const uint32_t *Pk;
                if (Pw) { /* a slice may start half-way into a packed panel: one vector there */
                    nr = n % 32 ? (left < 16 ? left : 16) : (left < 32 ? left : 32);
                    Pk = Pw + (size_t)(n / 32) * panel + (size_t)(k0 / 2) * 32 + n % 32;
                    ldp = 32;
                } else { /* a narrow last panel packs and multiplies half */
                    nr = left < BF_NR ? left : BF_NR;
                    ldp = nr > 16 ? 32 : 16;
                    bf_pack_panel(P, ldp, W, K, n, nr, k0, kb);
                    Pk = P;
                }
                float *c = C + (size_t)mb0 * ldc + n;
                const float *bn = bias ? bias + n : NULL;
                if (nr > 16) bf_panel_rows(c, ldc, Ab, kp, Pk, ldp, kq, 2, nr, k0 == 0, bn, mb);
                else bf_panel_rows(c, ldc, Ab, kp, Pk, ldp, kq, 1, nr, k0 == 0, bn, mb);
                n += nr;
            }
        }
    }
}

static void matmul_avx512bf16(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                              const float *bias, int M, int K, int n0, int n1) {
    if (wt != QW_BF16 || M < 8 || K <= 0) {
        qw_kernels_avx512.matmul(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
        return;
    }
    if (n1 > n0) bf_matmul(C, ldc, A, lda, (const uint16_t *)W, NULL, bias, M, K, n0, n1);
}

/* ==== Weights packed once at load (QW_BF16P) ====
 *
 * The panels above, made once for the whole of K: P[N32 / 32][(K + 1) / 2][32] words, panel p
 * holding rows 32p .. 32p + 31 of W (zero past N), word (q, j) = (W[32p + j, 2q], W[32p + j,
 * 2q + 1]) (zero past K). A block of k from k0 (even) is then P + (k0 / 2) * 32 of its panel: the
 * words bf_pack_panel makes for it, read in one contiguous run. So the product is the one above,
 * bit for bit, without packing per call (which read 32 rows of W at a stride from memory for
 * every block) and for every M (M < 8 takes the same tiles; the table's matmul gives those rows
 * to the f32 kernels instead). */

size_t qw_bf16p_size(int N, int K) { return (size_t)((N + 31) / 32) * (size_t)((K + 1) / 2) * 32 * sizeof(uint32_t); }

void qw_bf16p_pack(void *P, const uint16_t *W, int N, int K, int p0, int p1) {
    const size_t panel = (size_t)((K + 1) / 2) * 32;
    for (int p = p0; p < p1; p++) {
        const int n = 32 * p, nr = N - n < 32 ? N - n : 32;
        bf_pack_panel((uint32_t *)P + (size_t)p * panel, 32, W, K, n, nr, 0, K);
    }
}

void qw_bf16p_matmul(float *C, int ldc, const float *A, int lda, const void *P, const float *bias, int M, int K,
                     int n0, int n1) {
    if (M > 0 && K > 0 && n1 > n0) bf_matmul(C, ldc, A, lda, NULL, (const uint32_t *)P, bias, M, K, n0, n1);
}

/* qw_bf16p_pack of W = V^T for V [K][N] bf16 (an attention's values, K = T keys, N = hd): word
 * (q, j) of panel p is (V[2q][32p + j], V[2q + 1][32p + j]), zero past N and K. A whole panel's
 * word row is two rows of V side by side, widened to 32-bit lanes and interleaved. */
void qw_bf16p_pack_t(void *P, const uint16_t *V, int K, int N) {
    const int kq = (K + 1) / 2;
    const size_t panel = (size_t)kq * 32;
    for (int n = 0; n < N; n += 32) {
        uint32_t *pp = (uint32_t *)P + (size_t)(n / 32) * panel;
        for (int q = 0; q < kq; q++) {
            const uint16_t *a = V + (size_t)2 * q * N + n, *b = 2 * q + 1 < K ? a + N : NULL;
            uint32_t *w = pp + (size_t)q * 32;
            if (N - n >= 32) {
                for (int h = 0; h < 32; h += 16) {
                    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(a + h)));
                    const __m512i hi = b ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(b + h)))
                                         : _mm512_setzero_si512();
                    _mm512_storeu_si512((void *)(w + h), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                }
            } else {
                for (int j = 0; j < 32; j++)
                    w[j] = n + j < N ? (uint32_t)a[j] | (uint32_t)(b ? b[j] : 0) << 16 : 0;
            }
        }
    }
}

/* ==== Products on A rounded once (qw_bf16p_round_rows) ====
 *
 * bf_matmul rounds its block of A for every slice of columns: with 2 threads a product's A was
 * rounded 4 times, and a product whose output only feeds the next one (fc1 -> GELU -> fc2) wrote
 * f32 to be rounded again. Here A comes rounded (once, across the pool), each register tile sums
 * the whole of K from the bias on (the panel streams from L2, as in the stem's convolution), and
 * the epilogue may apply the activation and write bf16: the same chain over k as bf_matmul's (its
 * stores and reloads between blocks of k are exact), so the same bits. */

void qw_bf16p_round_rows(uint16_t *Ab, const float *A, int lda, int M, int K) {
    const int Kp = (K + 31) / 32 * 32;
    for (int m = 0; m < M; m++) bf_round_row(Ab + (size_t)m * Kp, A + (size_t)m * lda, K, Kp);
}

/* S[r][0:32] = acc[r] for R rows (zeros in the second vector when V == 1). */
QW_INLINE void bf_tile_out(int R, float *S, __m512 acc[BF_MR][2], int V) {
    for (int r = 0; r < R; r++) {
        _mm512_store_ps(S + r * 32, acc[r][0]);
        _mm512_store_ps(S + r * 32 + 16, V == 2 ? acc[r][1] : _mm512_setzero_ps());
    }
}

/* S[r][0:32] = bias + Ab[r, 0:K] @ panel, for R rows of rounded A (lda bf16 apart). */
QW_INLINE void bf_rows_tile(int R, float *S, const uint16_t *Ab, size_t lda, const uint32_t *Pn, int kq, int V, int nr,
                            const float *bias) {
    __m512 acc[BF_MR][2];
    tile_load(acc, NULL, 0, R, V, nr, 1, bias);
    bf_dots(R, acc, (const uint32_t *)(const void *)Ab, lda / 2, Pn, 32, kq, V);
    bf_tile_out(R, S, acc, V);
}

/* dst[0:n] = bf16(s[0:n]) for n <= 16 (a partial row through a copy: SIMDe's masked 16-bit store
 * wrote past its mask). */
QW_INLINE void bf_store16(uint16_t *dst, const float *s, int n) {
    const __m256i h = bf16x16(_mm512_load_ps(s));
    if (n == 16) {
        _mm256_storeu_si256((__m256i *)(void *)dst, h);
    } else {
        uint16_t t[16];
        _mm256_storeu_si256((__m256i *)(void *)t, h);
        memcpy(dst, t, (size_t)n * sizeof(uint16_t));
    }
}

/* One row of results s[0:nr] to f32 d (masked) or, rounded, to bf16 db. */
QW_INLINE void bf_row_out(float *d, uint16_t *db, const float *s, int nr) {
    if (db) {
        bf_store16(db, s, nr < 16 ? nr : 16);
        if (nr > 16) bf_store16(db + 16, s + 16, nr - 16);
    } else {
        _mm512_mask_storeu_ps(d, lanes(nr < 16 ? nr : 16), _mm512_load_ps(s));
        if (nr > 16) _mm512_mask_storeu_ps(d + 16, lanes(nr - 16), _mm512_load_ps(s + 16));
    }
}

/* C (f32, ldc) or Cb (bf16, ldcb) [m, n] = act(bias[n] + Ab[m, 0:K] @ W[n, :]) for m < M, n in [n0, n1). */
static void bf_rows_product(float *C, int ldc, uint16_t *Cb, int ldcb, const uint16_t *Ab, const void *P,
                            const float *bias, void (*act)(float *x, int n), int M, int K, int n0, int n1) {
    const size_t lda = (size_t)(K + 31) / 32 * 32, panel = (size_t)((K + 1) / 2) * 32;
    float S[BF_MR * 32] __attribute__((aligned(64)));
    for (int p0 = 0; p0 < M; p0 += BF_MB) { /* a block of rows whose A stays in L2 for the slice's panels */
        const int p1 = M - p0 < BF_MB ? M : p0 + BF_MB;
        for (int n = n0; n < n1;) { /* a slice may start half-way into a panel: one vector there */
            const int left = n1 - n, nr = n % 32 ? (left < 16 ? left : 16) : (left < 32 ? left : 32);
            const uint32_t *Pn = (const uint32_t *)P + (size_t)(n / 32) * panel + n % 32;
            const float *bn = bias ? bias + n : NULL;
            for (int m = p0; m < p1; m += BF_MR) {
                const int R = p1 - m < BF_MR ? p1 - m : BF_MR;
                const uint16_t *a = Ab + (size_t)m * lda;
                if (nr > 16) {
                    QW_TILE_ROWS(R, bf_rows_tile, S, a, lda, Pn, (K + 1) / 2, 2, nr, bn);
                } else {
                    QW_TILE_ROWS(R, bf_rows_tile, S, a, lda, Pn, (K + 1) / 2, 1, nr, bn);
                }
                if (act) act(S, R * 32);
                for (int r = 0; r < R; r++)
                    bf_row_out(C ? C + (size_t)(m + r) * ldc + n : NULL, Cb ? Cb + (size_t)(m + r) * ldcb + n : NULL,
                               S + r * 32, nr);
            }
            n += nr;
        }
    }
}

void qw_bf16p_matmul_rounded(float *C, int ldc, const uint16_t *Ab, const void *P, const float *bias, int M, int K,
                             int n0, int n1) {
    if (M > 0 && K > 0 && n1 > n0) bf_rows_product(C, ldc, NULL, 0, Ab, P, bias, NULL, M, K, n0, n1);
}

void qw_bf16p_matmul_act_bf16(uint16_t *Cb, int ldcb, const uint16_t *Ab, const void *P, const float *bias,
                              void (*act)(float *x, int n), int M, int K, int n0, int n1) {
    if (M > 0 && K > 0 && n1 > n0) bf_rows_product(NULL, 0, Cb, ldcb, Ab, P, bias, act, M, K, n0, n1);
}

/* ==== The stem's convolution on weights packed once (qw_bf16p_conv3x3) ====
 *
 * Like the AMX kernel's, without an im2col (conv2's was 14 MB of f32 a chunk, written on one thread
 * and rounded again by every thread that read it: half of a 10 s clip's encoder went to the stem)
 * and with GELU and the rounding for the next convolution in the epilogue. A register tile is R
 * (up to 12) output frequencies of one time step, whose inputs for tap (ky, kx) are R rows 2 Cin
 * apart in the padded input: the tile's pairs of k are read from there as they are, tap by tap (the
 * packed weights' order of k), so each element is bf_matmul's chain over its im2col row, in f32
 * registers from the bias to the end of K (bf_matmul stores and reloads its sums between blocks of
 * k: exactly). */

#define BF_CONV_ROWS 128 /* output rows whose input (4 time steps of conv2: 570 KB) stays in L2 */

/* S[r][0:32] = bias + the chain over K of output rows m0 .. m0 + R - 1 against the panel words Pn
 * (32 a pair of k; V vectors of them); lanes past nr hold zeros or unused columns. */
QW_INLINE void bf_conv_tile(int R, float *S, const qw_conv3x3 *c, int m0, const uint32_t *Pn, int V, int nr,
                            const float *bias) {
    const int Cin = c->Cin, K = 9 * Cin;
    if (c->rows) { /* explicit: the im2col's rows, rounded */
        const size_t Kp = (size_t)(K + 31) / 32 * 32;
        bf_rows_tile(R, S, c->rows + (size_t)m0 * Kp, Kp, Pn, (K + 1) / 2, V, nr, bias);
        return;
    }
    __m512 acc[BF_MR][2];
    tile_load(acc, NULL, 0, R, V, nr, 1, bias);
    const int Fo = (c->Fi + 1) / 2, Fp = c->Fi + 2, to = m0 / Fo, fo = m0 % Fo;
    for (int tap = 0; tap < 9; tap++) { /* time 2 to + kx, frequency 2 fo + ky of the padded input */
        const int ky = tap / 3, kx = tap % 3;
        const uint16_t *a = c->in + ((size_t)(2 * to + kx) * Fp + 2 * fo + ky) * Cin;
        bf_dots(R, acc, (const uint32_t *)(const void *)a, (size_t)Cin, Pn + (size_t)tap * (Cin / 2) * 32, 32, Cin / 2,
                V);
    }
    bf_tile_out(R, S, acc, V);
}

/* The epilogue of R rows from m0, columns [n, n + nr): act over S, then out as f32 or rounded. */
static void bf_conv_out(const qw_conv3x3 *c, float *S, int m0, int R, int n, int nr) {
    if (c->act) c->act(S, R * 32);
    const int Fo = (c->Fi + 1) / 2;
    for (int r = 0; r < R; r++) {
        const int m = m0 + r, to = m / Fo, fo = m % Fo;
        uint16_t *db = c->out_bf16 ? c->out_bf16 + ((size_t)(to + 1) * (Fo + 2) + fo + 1) * c->ldo + n : NULL;
        bf_row_out(db ? NULL : c->out_f32 + (size_t)m * c->ldo + n, db, S + r * 32, nr);
    }
}

void qw_bf16p_conv3x3(const qw_conv3x3 *c, int n0, int n1) {
    const int Fo = (c->Fi + 1) / 2, M = (c->Ti + 1) / 2 * Fo;
    if (n1 > c->Cout) n1 = c->Cout;
    if (M <= 0 || n0 < 0 || n1 <= n0 || (!c->rows && c->Cin % 2)) return;
    const size_t panel = (size_t)((9 * c->Cin + 1) / 2) * 32; /* words of one panel of 32 columns */
    float S[BF_MR * 32] __attribute__((aligned(64)));
    /* A panel of output rows at a time: its input stays in L2 while every column block of the slice
     * meets it. */
    for (int p0 = 0; p0 < M; p0 += BF_CONV_ROWS) {
        const int p1 = M - p0 < BF_CONV_ROWS ? M : p0 + BF_CONV_ROWS;
        for (int n = n0; n < n1;) { /* a slice may start half-way into a panel: one vector there */
            const int left = n1 - n, nr = n % 32 ? (left < 16 ? left : 16) : (left < 32 ? left : 32);
            const uint32_t *Pn = (const uint32_t *)c->packed + (size_t)(n / 32) * panel + n % 32;
            const float *bn = c->bias ? c->bias + n : NULL;
            for (int m = p0; m < p1;) {
                int R = p1 - m < BF_MR ? p1 - m : BF_MR;
                if (!c->rows && R > Fo - m % Fo) R = Fo - m % Fo; /* implicit: one time step a tile */
                if (nr > 16) {
                    QW_TILE_ROWS(R, bf_conv_tile, S, c, m, Pn, 2, nr, bn);
                } else {
                    QW_TILE_ROWS(R, bf_conv_tile, S, c, m, Pn, 1, nr, bn);
                }
                bf_conv_out(c, S, m, R, n, nr);
                m += R;
            }
            n += nr;
        }
    }
}

/* Exact f32, A never rounded: the AVX-512 table's. */
static void matmul_rows_bf16set(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                                const float *bias, int M, int K, int n0, int n1) {
    qw_kernels_avx512.matmul_rows(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
}
static float dot_bf16set(const float *a, const float *b, int n) { return qw_kernels_avx512.dot(a, b, n); }
static void axpy_bf16set(float *y, float alpha, const float *x, int n) { qw_kernels_avx512.axpy(y, alpha, x, n); }
static void dot_rows_bf16set(float *out, const float *q, const float *rows, int ld, int n_rows, int n) {
    qw_kernels_avx512.dot_rows(out, q, rows, ld, n_rows, n);
}
static void kv8_dot_rows_bf16set(float *out, int ldo, const float *q, int ldq, int heads, const void *rows, int n_rows,
                                 int n) {
    qw_kernels_avx512.kv8_dot_rows(out, ldo, q, ldq, heads, rows, n_rows, n);
}
static void kv8_axpy_rows_bf16set(float *y, int ldy, const float *alpha, int lda, int heads, const void *rows,
                                  int n_rows, int n) {
    qw_kernels_avx512.kv8_axpy_rows(y, ldy, alpha, lda, heads, rows, n_rows, n);
}
static void axpy_rows_bf16set(float *y, const float *alpha, const float *rows, int ld, int n_rows, int n) {
    qw_kernels_avx512.axpy_rows(y, alpha, rows, ld, n_rows, n);
}
static void to_f32_bf16set(float *dst, const void *src, qw_dtype dt, int n) { qw_kernels_avx512.to_f32(dst, src, dt, n); }
/* kernels_gelu.h's GELU with the division t p / q as t p * rcp(q), the reciprocal by rcp14 and one
 * Newton step (within an ulp or two): the division's throughput made the stem's GELUs (15 M per
 * 10 s) as slow as conv1's products; this runs in 0.47x the time. Outputs go on as bf16 (or into a
 * product that rounds them so), 8 bits of mantissa, and this set is never EXACT's. */
static void gelu_bf16set(float *x, int n) {
    const __m512 lo = _mm512_set1_ps(-QW_ERF_T), hi = _mm512_set1_ps(QW_ERF_T), one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 in = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(in, x + i);
        /* the clamp keeps a NaN (max and min return their second operand then) */
        const __m512 t = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f))));
        const __m512 s = _mm512_mul_ps(t, t);
        __m512 p = _mm512_set1_ps(QW_ERF_P6);
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(QW_ERF_P5));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(QW_ERF_P4));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(QW_ERF_P3));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(QW_ERF_P2));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(QW_ERF_P1));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(QW_ERF_P0));
        __m512 q = _mm512_set1_ps(QW_ERF_Q4);
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(QW_ERF_Q3));
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(QW_ERF_Q2));
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(QW_ERF_Q1));
        q = _mm512_fmadd_ps(q, s, one);
        __m512 r = _mm512_rcp14_ps(q);
        r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
        __m512 e = _mm512_mul_ps(_mm512_mul_ps(t, p), r);
        e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(t, hi, _CMP_GE_OQ), one); /* exactly +-1 outside */
        e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(t, lo, _CMP_LE_OQ), _mm512_set1_ps(-1.0f));
        _mm512_mask_storeu_ps(x + i, in, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(one, e)));
    }
}
static void softmax_bf16set(float *x, int n) { qw_kernels_avx512.softmax(x, n); }
static void kv8_quantize_bf16set(void *row, const float *x, int n) { qw_kernels_avx512.kv8_quantize(row, x, n); }
static void swiglu_bf16set(float *g, const float *u, int n) { qw_kernels_avx512.swiglu(g, u, n); }

const qw_kernels qw_kernels_avx512bf16 = {
    .name = "avx512bf16",
    .matmul = matmul_avx512bf16,
    .matmul_rows = matmul_rows_bf16set,
    .dot = dot_bf16set,
    .axpy = axpy_bf16set,
    .dot_rows = dot_rows_bf16set,
    .axpy_rows = axpy_rows_bf16set,
    .kv8_dot_rows = kv8_dot_rows_bf16set,
    .kv8_axpy_rows = kv8_axpy_rows_bf16set,
    .to_f32 = to_f32_bf16set,
    .gelu = gelu_bf16set,
    .softmax = softmax_bf16set,
    .swiglu = swiglu_bf16set,
    .kv8_quantize = kv8_quantize_bf16set,
};
