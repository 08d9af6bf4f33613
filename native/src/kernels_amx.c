/*
 * Kernels, AMX-BF16 — the GEMM of amx.h on Intel AMX tiles (Sapphire Rapids
 * and later): C = bf16(A) @ W^T (+ bias), f32 accumulation.
 *
 * Tiles (palette 1: 8 registers of up to 16 rows x 64 bytes):
 *   tmm0..3  C, a 32x32 block of f32 as 2x2 tiles of 16x16:
 *            tmm0 rows 0-15 x cols 0-15, tmm1 rows 0-15 x cols 16-31,
 *            tmm2 rows 16-31 x cols 0-15, tmm3 rows 16-31 x cols 16-31
 *   tmm4, 5  A, rows 0-15 / 16-31 of the block x 32 k (bf16), from the panel
 *   tmm6, 7  B, 32 k x cols 0-15 / 16-31: one packed tile each
 * Per step of 32 k: 4 tile loads (2 KiB of A, 2 KiB of B) feed 4 TDPBF16PS
 * (16x16x32 each, 32 K multiply-adds); each A tile meets 2 B tiles and each B
 * tile 2 A tiles.
 *
 * Packed W (qw_amx_pack): 1 KiB tiles T[nt][kt], nt-major (tile (nt, kt) at
 * byte (nt * KT + kt) * 1024, KT = ceil(K / 32)); row q of the tile holds
 * W[16 nt + j, 32 kt + 2 q + e] at bf16 index 2 j + e (j < 16, e < 2): the
 * pairs of k interleaved, the layout TDPBF16PS takes as its B operand.
 * Zeros pad N to a multiple of 16 and K to a multiple of 32, so every step
 * loads whole tiles, and a slice [n0, n1) with n0 % 16 == 0 starts on a tile.
 *
 * A panel: up to PANEL_BYTES of A (a multiple of 32 rows, at least 32; the
 * last but one also takes a last block of fewer than 32 rows, which would
 * otherwise be a panel of its own and stream every column block's weights
 * again: M = 130 at K = 3584 ran as 64 + 64 + 2 rows, 0.59-0.65 ms against
 * 0.48-0.57 for M = 128, now 0.51-0.55), rounded to bf16 once per call into
 * a heap buffer of row stride Kp = 32 KT (zeros from K to Kp). For each
 * panel, for each 32-column block of [n0, n1), for each 32-row block of the
 * panel: zero the C tiles, step through K, store. A column block's B tiles
 * (64 Kp bytes) stay in L2 across the panel's rows; the panel streams from
 * L2 once per column block.
 *
 * Edges: the last row block of R < 32 rows runs with tiles configured to
 * min(R, 16) and R - 16 rows (tmm2, 3, 5 unused when R <= 16), right after
 * the whole blocks of the same column block (its B tiles in L1): the config
 * is loaded again for it and back. A last column block of at most 16 columns uses
 * tmm0 and tmm2 only. Columns past n1 (N not a multiple of 16) are computed
 * on the zero padding and dropped: whole column blocks are stored straight
 * into C (bias added in place), a partial one into a 32x32 scratch from
 * which nr columns (+ bias) are copied.
 *
 * If the panel cannot be allocated, the same blocks run with A rounded per
 * 32x32 step into a 2 KiB stack buffer instead (the same bits, slower).
 *
 * Order of operations: a C tile accumulates from zero through every k step
 * in turn, and TDPBF16PS (Intel Intrinsics Guide pseudo-code) adds its pairs
 * in order, so C[m, n] is the f32 chain over k = 0, 1, ..., Kp - 1 of
 * acc += bf16(A[m, k]) * W[n, k], then + bias[n]: independent of M, of the
 * blocking and of the slice.
 *
 * Compiled with -DQW_AMX_EMULATE (native/tests/test_amx.c includes this file
 * so), the tile intrinsics are amx_emulate.h's portable model, the public
 * functions are named qw_amx_emu_* (so that they link next to the native
 * ones) and the probe answers 1. Everything else is plain C, the same in
 * both builds.
 */
#ifndef QW_AMX_EMULATE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* syscall() */
#endif
#endif

#if defined(QW_AMX_EMULATE) && !defined(QW_AMX_KEEP_NAMES) /* KEEP_NAMES: the library itself emulated */
#define qw_amx_available qw_amx_emu_available
#define qw_amx_int8_available qw_amx_emu_int8_available
#define qw_amx_packed_size qw_amx_emu_packed_size
#define qw_amx_pack qw_amx_emu_pack
#define qw_amx_pack_bf16_t qw_amx_emu_pack_bf16_t
#define qw_amx_pack_keys qw_amx_emu_pack_keys
#define qw_amx_kv8_bf16 qw_amx_emu_kv8_bf16
#define qw_amx_pack_values qw_amx_emu_pack_values
#define qw_amx_matmul qw_amx_emu_matmul
#define qw_amx_round_rows qw_amx_emu_round_rows
#define qw_amx_matmul_rounded qw_amx_emu_matmul_rounded
#define qw_amx_matmul_act_bf16 qw_amx_emu_matmul_act_bf16
#define qw_amx_conv3x3 qw_amx_emu_conv3x3
#define qw_amx_selfcheck qw_amx_emu_selfcheck
#endif

#include "amx.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef QW_AMX_EMULATE
#include "amx_emulate.h"
#define AMX_INLINE static inline
#else
#include "kernels_avx512_tile.h" /* bf16x16 */
#include <immintrin.h>
#include <pthread.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define AMX_INLINE static inline __attribute__((always_inline))
#endif

#define AMX_TROWS 16  /* rows of a tile (A, C), pairs of k in a B tile */
#define AMX_KSTEP 32  /* k per step: bf16 per row of an A tile */
#define AMX_TCOLS 16  /* f32 columns of a C tile = columns of a B tile */
#define AMX_MB 32     /* rows of C per block (2 A tiles) */
#define AMX_NB 32     /* columns of C per block (2 B tiles) */
#define AMX_TILE 512  /* bf16 per packed tile (1 KiB) */
/* A panel in bf16: with a column block's B tiles, in L2 (2 MiB a core on every CPU with AMX). 1 MiB,
 * not 512 KiB: the encoder's fc2 (K = 3584) and conv_out (K = 7680) at 130 rows took 2 and 4 panels,
 * each streaming all the weights from DRAM again (encoder 79.7-80.7 -> 77.6-78.9 ms). */
#define PANEL_BYTES (1024u << 10)
#define AMX_FAR_BLOCKS 1         /* column blocks of B fetched into L2 ahead (amx_rows) */

/* ==== Probe and packing (no CPU requirement) ==== */

/* These run on any x86-64, also without AVX: the file's AVX-512 / AMX flags
 * are switched off for them. */
#if !defined(QW_AMX_EMULATE) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("no-avx")
#define AMX_PORTABLE_REGION 1
#endif

static inline int round_up(int x, int to) { return (x + to - 1) / to * to; }

#ifdef QW_AMX_EMULATE
int qw_amx_available(void) { return 1; } /* the emulation runs anywhere */
int qw_amx_int8_available(void) { return 1; }
#else
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

#if defined(__x86_64__) && defined(__linux__)
static void amx_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    __asm__ __volatile__("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
#endif

/* 0: no AMX; 1: AMX-TILE + AMX-BF16 granted; 3: AMX-INT8 too. */
static int amx_detect(void) {
#if defined(__x86_64__) && defined(__linux__)
    unsigned r[4];
    amx_cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    amx_cpuid(1, 0, r);
    if (!(r[2] & (1u << 27))) return 0; /* OSXSAVE: xgetbv may be executed */
    amx_cpuid(7, 0, r);
    if (!(r[3] & (1u << 24)) || !(r[3] & (1u << 22))) return 0; /* AMX-TILE, AMX-BF16 */
    const int int8 = (r[3] >> 25) & 1u;                            /* AMX-INT8 */
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & (3u << 17)) != (3u << 17)) return 0; /* XTILECFG, XTILEDATA enabled by the OS */
    /* Linux >= 5.16 hands out the 8 KiB of tile data per process on request. */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 0;
    return 1 | int8 << 1;
#else
    return 0;
#endif
}

static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static int amx_present; /* the cached probe, written once under amx_once */
static void amx_probe(void) { amx_present = amx_detect(); }

int qw_amx_available(void) {
    pthread_once(&amx_once, amx_probe);
    return amx_present & 1;
}

int qw_amx_int8_available(void) {
    pthread_once(&amx_once, amx_probe);
    return amx_present == 3;
}
#endif

size_t qw_amx_packed_size(int N, int K) {
    if (N <= 0 || K <= 0) return 0;
    return (size_t)round_up(N, AMX_TCOLS) * (size_t)round_up(K, AMX_KSTEP) * sizeof(uint16_t);
}

/* W[i] as bf16 (nearest even, as qw_f32_to_bf16). */
static uint16_t amx_weight(const void *W, qw_dtype wt, size_t i) {
    switch (wt) {
    case QW_BF16: return ((const uint16_t *)W)[i];
    case QW_F16: return qw_f32_to_bf16(qw_f16_to_f32(((const uint16_t *)W)[i]));
    case QW_F32: return qw_f32_to_bf16(((const float *)W)[i]);
    default: return 0;
    }
}

/* Tile (nt, kt) of qw_amx_pack's layout, element by element: dst[q][j][e] = bf16(W(16 nt + j, 32 kt + 2 q + e)),
 * W(n, k) = W[n * ln + k * lk], zeros past N or K (partial tiles, and dtypes other than bf16). */
static void amx_pack_tile(uint16_t *tile, const void *W, qw_dtype wt, int N, int K, size_t ln, size_t lk, int nt,
                          int kt) {
    for (int j = 0; j < AMX_TCOLS; j++) {
        const int n = nt * AMX_TCOLS + j;
        for (int i = 0; i < AMX_KSTEP; i++) { /* i = 2 q + e */
            const int k = kt * AMX_KSTEP + i;
            tile[(i / 2) * 2 * AMX_TCOLS + 2 * j + (i & 1)] =
                n < N && k < K ? amx_weight(W, wt, (size_t)n * ln + (size_t)k * lk) : 0;
        }
    }
}

/* qw_amx_pack of the matrix whose (n, k) element is W[n * ln + k * lk] (ln = K, lk = 1: W itself;
 * ln = 1, lk = ld: the transpose of a matrix stored with row stride ld). */
static void amx_pack(uint16_t *P, const void *W, qw_dtype wt, int N, int K, size_t ln, size_t lk) {
    if (N <= 0 || K <= 0) return;
    const int NT = round_up(N, AMX_TCOLS) / AMX_TCOLS, KT = round_up(K, AMX_KSTEP) / AMX_KSTEP;
    for (int nt = 0; nt < NT; nt++)
        for (int kt = 0; kt < KT; kt++) {
            uint16_t *tile = P + ((size_t)nt * KT + kt) * AMX_TILE; /* [q][j][e] */
            const int whole = wt == QW_BF16 && (nt + 1) * AMX_TCOLS <= N && (kt + 1) * AMX_KSTEP <= K;
            const uint16_t *w0 = (const uint16_t *)W + (size_t)nt * AMX_TCOLS * ln + (size_t)kt * AMX_KSTEP * lk;
            if (whole && lk == 1) { /* a whole tile of bf16 rows: each pair of k moves as one 32-bit word */
                for (int j = 0; j < AMX_TCOLS; j++)
                    for (int q = 0; q < AMX_KSTEP / 2; q++) memcpy(tile + q * 2 * AMX_TCOLS + 2 * j, w0 + j * ln + 2 * q, 4);
                continue;
            }
            if (whole && ln == 1) { /* of bf16 columns: row q interleaves k = 2 q and 2 q + 1, 16 n each */
                for (int q = 0; q < AMX_KSTEP / 2; q++) {
                    const uint16_t *r0 = w0 + (size_t)2 * q * lk, *r1 = r0 + lk;
                    uint32_t pair[AMX_TCOLS]; /* (k even, k odd) of column j: one 32-bit word, little-endian */
                    for (int j = 0; j < AMX_TCOLS; j++) pair[j] = (uint32_t)r0[j] | (uint32_t)r1[j] << 16;
                    memcpy(tile + q * 2 * AMX_TCOLS, pair, sizeof(pair));
                }
                continue;
            }
            amx_pack_tile(tile, W, wt, N, K, ln, lk, nt, kt);
        }
}

void qw_amx_pack(void *dst, const void *W, qw_dtype wt, int N, int K) { amx_pack(dst, W, wt, N, K, (size_t)K, 1); }

void qw_amx_pack_bf16_t(void *dst, const uint16_t *src, int ld, int N, int K) {
    amx_pack(dst, src, QW_BF16, N, K, 1, (size_t)ld);
}

#ifdef AMX_PORTABLE_REGION
#pragma GCC pop_options
#undef AMX_PORTABLE_REGION
#endif

/* ==== Packing the attention's keys and values (AVX-512) ==== */

/* qw_amx_pack(dst, K, QW_BF16, T, hd) and qw_amx_pack_bf16_t(dst, V, hd, hd, T) - the same bytes - for
 * a prefill's keys and values, each [T][hd] bf16 (hd a multiple of 32): whole tiles with vectors
 * (a key tile is a 16 x 16 transpose of 32-bit pairs, a value tile 16 pairs of rows interleaved),
 * a partial tile with amx_pack's own (amx_pack_tile). Their scalar loops were a fifth of a prefill's
 * attention; a CPU with AMX has AVX-512. The emulated build takes the portable packs. */
#ifdef QW_AMX_EMULATE
void qw_amx_kv8_bf16(uint16_t *dst, const void *rows, int T, int hd) {
    const size_t rb = qw_kv8_row_bytes(hd);
    for (int s = 0; s < T; s++) {
        const char *row = (const char *)rows + (size_t)s * rb;
        for (int i = 0; i < hd; i++)
            dst[(size_t)s * hd + i] = qw_f32_to_bf16((float)((const int8_t *)row)[i] * qw_kv8_scale(row, hd, i));
    }
}
void qw_amx_pack_keys(void *dst, const uint16_t *K, int T, int hd) { qw_amx_pack(dst, K, QW_BF16, T, hd); }
void qw_amx_pack_values(void *dst, const uint16_t *V, int T, int hd) { qw_amx_pack_bf16_t(dst, V, hd, hd, T); }
#else
void qw_amx_kv8_bf16(uint16_t *dst, const void *rows, int T, int hd) {
    const size_t rb = qw_kv8_row_bytes(hd);
    for (int s = 0; s < T; s++) {
        const char *row = (const char *)rows + (size_t)s * rb;
        for (int i = 0; i < hd; i += 16) { /* (float) q * scale, as the tables' to_f32; then amx_bf16 */
            const __m512i w = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + i)));
            const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_set1_ps(qw_kv8_scale(row, hd, i)));
            _mm256_storeu_si256((__m256i *)(dst + (size_t)s * hd + i), bf16x16(x));
        }
    }
}

/* The 16 x 16 32-bit transpose of r (in place): r[i] word j -> r[j] word i. */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);     /* per 128-bit lane L: i[4L], i+1[4L], i[4L+1], i+1[4L+1] */
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]); /* i[4L+2], i+1[4L+2], i[4L+3], i+1[4L+3] */
    }
    for (int i = 0; i < 16; i += 4) { /* rows i..i+3, word 4L + c in lane L of r[i + c] */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int c = 0; c < 4; c++) { /* word 4L + c of all rows: lane L of r[c], r[4 + c], r[8 + c], r[12 + c] */
        const __m512i u0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88), u1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
        const __m512i v0 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
        const __m512i v1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_i32x4(u0, v0, 0x88);      /* word c */
        t[8 + c] = _mm512_shuffle_i32x4(u0, v0, 0xdd);  /* word 8 + c */
        t[4 + c] = _mm512_shuffle_i32x4(u1, v1, 0x88);  /* word 4 + c */
        t[12 + c] = _mm512_shuffle_i32x4(u1, v1, 0xdd); /* word 12 + c */
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

void qw_amx_pack_keys(void *dst, const uint16_t *K, int T, int hd) {
    const int NT = round_up(T, AMX_TCOLS) / AMX_TCOLS, KT = round_up(hd, AMX_KSTEP) / AMX_KSTEP;
    uint16_t *P = dst;
    for (int nt = 0; nt < NT; nt++)
        for (int kt = 0; kt < KT; kt++) {
            uint16_t *tile = P + ((size_t)nt * KT + kt) * AMX_TILE;
            if ((kt + 1) * AMX_KSTEP > hd) { /* no head size here has a partial step */
                amx_pack_tile(tile, K, QW_BF16, T, hd, (size_t)hd, 1, nt, kt);
                continue;
            }
            __m512i r[16]; /* key 16 nt + j: its 32 values of this step, as 16 pairs (zeros past T) */
            for (int j = 0; j < 16; j++)
                r[j] = nt * AMX_TCOLS + j < T
                           ? _mm512_loadu_si512((const void *)(K + (size_t)(nt * AMX_TCOLS + j) * hd + kt * AMX_KSTEP))
                           : _mm512_setzero_si512();
            transpose16(r); /* r[q] = pair q of every key */
            for (int q = 0; q < 16; q++) _mm512_store_si512((void *)(tile + q * 2 * AMX_TCOLS), r[q]);
        }
}

void qw_amx_pack_values(void *dst, const uint16_t *V, int T, int hd) {
    /* W[n = d, k = s] = V[s][d]: N = hd columns, K = T steps */
    const int NT = round_up(hd, AMX_TCOLS) / AMX_TCOLS, KT = round_up(T, AMX_KSTEP) / AMX_KSTEP;
    uint16_t *P = dst;
    for (int nt = 0; nt < NT; nt++)
        for (int kt = 0; kt < KT; kt++) {
            uint16_t *tile = P + ((size_t)nt * KT + kt) * AMX_TILE;
            if ((nt + 1) * AMX_TCOLS > hd) {
                amx_pack_tile(tile, V, QW_BF16, hd, T, 1, (size_t)hd, nt, kt);
                continue;
            }
            const int s0 = kt * AMX_KSTEP;
            const uint16_t *v = V + (size_t)s0 * hd + nt * AMX_TCOLS;
            for (int q = 0; q < 16; q++) { /* row q: values 2 q and 2 q + 1 of the 16 columns, interleaved */
                const __m512i lo = s0 + 2 * q < T ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(v + (size_t)2 * q * hd)))
                                                  : _mm512_setzero_si512();
                const __m512i hi = s0 + 2 * q + 1 < T
                                       ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(v + (size_t)(2 * q + 1) * hd)))
                                       : _mm512_setzero_si512();
                _mm512_store_si512((void *)(tile + q * 2 * AMX_TCOLS), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
}
#endif

/* ==== The GEMM ==== */

#include "amx_tiles.h" /* the tile layout (tmm0-3 C, 4-5 A, 6-7 B) and qw_amx_configure */

/* bf16(f), nearest even, NaN kept quiet: bit for bit qw_f32_to_bf16. */
static inline uint16_t amx_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* dst[r, i] = bf16(A[r, k0 + i]) for k0 + i < K, else 0; r < rows, i < kw (row stride ds). */
static void amx_round(uint16_t *dst, size_t ds, const float *A, int lda, int rows, int k0, int kw, int K) {
    const int valid = K - k0 < 0 ? 0 : K - k0 < kw ? K - k0 : kw;
    for (int r = 0; r < rows; r++) {
        uint16_t *d = dst + (size_t)r * ds;
        const float *a = A + (size_t)r * lda + k0;
        if (r + 4 < rows) /* rows of a wide matrix (the attention's queries: 8 KiB apart) come from far */
            for (int i = 0; i < valid; i += 16) __builtin_prefetch(a + 4 * (size_t)lda + i);
        for (int i = 0; i < valid; i++) d[i] = amx_bf16(a[i]);
        for (int i = valid; i < kw; i++) d[i] = 0;
    }
}

typedef struct {
    float *C;          /* C[m0, n]: the block's first element */
    int ldc;
    const uint16_t *Ab; /* the block's rows of the A panel (stride Kp), or NULL: round A per step */
    const float *A;    /* A[m0, 0] (for the per-step rounding) */
    int lda;
    const uint16_t *B0, *B1; /* tiles (nt, 0) and (nt + 1, 0) of packed */
    const float *bias; /* bias + n, or NULL */
    int mb, nr, K, KT;
    uint16_t *Cb;      /* or, with an epilogue: Cb[m0, n] (row stride ldcb) gets bf16(act(C + bias)) */
    int ldcb;
    void (*act)(float *x, int n);
    qw_amx_ahead *far; /* the next column block's tiles, into L2 a few lines a k step */
} amx_block_args;

/* The C tiles of a block (tmm0-3; only those TWO_M / TWO_N use) set to zero. */
AMX_INLINE void amx_zero_c(int TWO_M, int TWO_N) {
    _tile_zero(0);
    if (TWO_N) _tile_zero(1);
    if (TWO_M) _tile_zero(2);
    if (TWO_M && TWO_N) _tile_zero(3);
}

/* One step of 32 k: the A tiles of rows 0-15 from a0 and 16-31 from a1 (row stride as bytes), the
 * packed B tiles b0, b1, and the 2x2 TDPBF16PS that continue the C tiles' chains. */
AMX_INLINE void amx_kstep(const uint16_t *a0, const uint16_t *a1, size_t as, const uint16_t *b0, const uint16_t *b1,
                          int TWO_M, int TWO_N) {
    _tile_loadd(4, a0, as);
    if (TWO_M) _tile_loadd(5, a1, as);
    _tile_loadd(6, b0, 64);
    if (TWO_N) _tile_loadd(7, b1, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (TWO_N) _tile_dpbf16ps(1, 4, 7);
    if (TWO_M) _tile_dpbf16ps(2, 5, 6);
    if (TWO_M && TWO_N) _tile_dpbf16ps(3, 5, 7);
}

/* The C tiles stored as a 32 x 32 block of f32 at c (row stride ldc floats). */
AMX_INLINE void amx_store_c(float *c, size_t ldc, int TWO_M, int TWO_N) {
    _tile_stored(0, c, ldc * 4);
    if (TWO_N) _tile_stored(1, c + AMX_TCOLS, ldc * 4);
    if (TWO_M) _tile_stored(2, c + AMX_TROWS * ldc, ldc * 4);
    if (TWO_M && TWO_N) _tile_stored(3, c + AMX_TROWS * ldc + AMX_TCOLS, ldc * 4);
}

/* The epilogue's start: the C tiles stored as a 32 x 32 block into S (row stride 32), + bias[0 .. nr)
 * (or none), act over all of it (columns 16-31 zeroed first when only one column tile was computed).
 * The products' epilogues (the GEMM's into bf16, the convolution's) write their layouts from S. */
AMX_INLINE void amx_block_act(float *S, int mb, int nr, const float *bias, void (*act)(float *x, int n), int TWO_M,
                              int TWO_N) {
    amx_store_c(S, AMX_NB, TWO_M, TWO_N);
    QW_AMX_BARRIER(S);
    if (!TWO_N) /* columns 16-31 of the block: not computed, but activated below */
        for (int r = 0; r < mb; r++) memset(S + r * AMX_NB + AMX_TCOLS, 0, AMX_TCOLS * sizeof(float));
    if (bias)
        for (int r = 0; r < mb; r++)
            for (int j = 0; j < nr; j++) S[r * AMX_NB + j] += bias[j];
    if (act) act(S, mb * AMX_NB);
}

/* One block of mb (1..32) rows x nr (1..32) columns; TWO_M: mb > 16, TWO_N: nr > 16 (constants). */
AMX_INLINE void amx_block(const amx_block_args *b, int TWO_M, int TWO_N) {
    const size_t Kp = (size_t)b->KT * AMX_KSTEP;
    uint16_t step[AMX_MB * AMX_KSTEP] __attribute__((aligned(64))); /* 2 KiB: A per step, without a panel */
    amx_zero_c(TWO_M, TWO_N);
    for (int kt = 0; kt < b->KT; kt++) {
        const uint16_t *a = step; /* rows of 32 k of A in bf16, row stride as */
        size_t as = AMX_KSTEP;
        if (b->Ab) {
            a = b->Ab + (size_t)kt * AMX_KSTEP, as = Kp;
        } else {
            QW_AMX_BARRIER(step);
            amx_round(step, AMX_KSTEP, b->A, b->lda, b->mb, kt * AMX_KSTEP, AMX_KSTEP, b->K);
            QW_AMX_BARRIER(step);
        }
        qw_amx_fetch_ahead(b->far);
        amx_kstep(a, a + AMX_TROWS * as, as * 2, b->B0 + (size_t)kt * AMX_TILE, b->B1 + (size_t)kt * AMX_TILE, TWO_M,
                  TWO_N);
    }
    const int whole = b->nr == (TWO_N ? 2 : 1) * AMX_TCOLS;
    float S[AMX_MB * AMX_NB] __attribute__((aligned(64))); /* 4 KiB: a partial block, or the epilogue's */
    if (b->Cb) { /* + bias, the activation and the rounding to bf16 while the block is in L1 */
        amx_block_act(S, b->mb, b->nr, b->bias, b->act, TWO_M, TWO_N);
        for (int r = 0; r < b->mb; r++)
            for (int j = 0; j < b->nr; j++) b->Cb[(size_t)r * b->ldcb + j] = amx_bf16(S[r * AMX_NB + j]);
        return;
    }
    float *c = whole ? b->C : S;
    const size_t ldc = whole ? (size_t)b->ldc : AMX_NB;
    amx_store_c(c, ldc, TWO_M, TWO_N);
    const int nr = b->nr;
    if (whole) {
        if (b->bias)
            for (int r = 0; r < b->mb; r++) {
                float *cr = b->C + (size_t)r * b->ldc;
                for (int j = 0; j < nr; j++) cr[j] += b->bias[j];
            }
    } else {
        for (int r = 0; r < b->mb; r++) {
            float *cr = b->C + (size_t)r * b->ldc;
            const float *sr = S + (size_t)r * AMX_NB;
            if (b->bias)
                for (int j = 0; j < nr; j++) cr[j] = sr[j] + b->bias[j];
            else
                for (int j = 0; j < nr; j++) cr[j] = sr[j];
        }
    }
}

/* Rows [0, rows) of the panel against every column block of [n0, n1): for each column block its
 * blocks of 32 rows, then the last one of 1..31 rows while the column block's B tiles are in L1
 * (the tiles configured again for it and back; *config: the rows they are configured for).
 * While a column block runs, the next AMX_FAR_BLOCKS column blocks' tiles are fetched into L2, a
 * few lines a k step: the block's first rows then find them there, not in DRAM (a tile load that
 * misses stalls where the hardware would have fetched ahead of vector loads; the encoder's weights,
 * 300 MB in bf16, come from DRAM on every call). */
static void amx_rows(float *C, int ldc, const float *A, int lda, const uint16_t *panel, const uint16_t *packed,
                     const float *bias, int rows, int K, int n0, int n1, int *config, uint16_t *Cb, int ldcb,
                     void (*act)(float *, int)) {
    const int KT = round_up(K, AMX_KSTEP) / AMX_KSTEP;
    const size_t Kp = (size_t)KT * AMX_KSTEP;
    for (int n = n0; n < n1; n += AMX_NB) {
        amx_block_args b;
        b.ldc = ldc, b.lda = lda, b.K = K, b.KT = KT;
        b.nr = n1 - n < AMX_NB ? n1 - n : AMX_NB;
        b.B0 = packed + (size_t)(n / AMX_TCOLS) * KT * AMX_TILE;
        b.B1 = b.B0 + (size_t)KT * AMX_TILE; /* read only when nr > 16 */
        b.bias = bias ? bias + n : NULL;
        b.ldcb = ldcb, b.act = act;
        const size_t block_bytes = (size_t)2 * KT * AMX_TILE * sizeof(uint16_t);
        const size_t far_bytes = AMX_FAR_BLOCKS * block_bytes;
        const size_t steps = (size_t)((rows + AMX_MB - 1) / AMX_MB) * KT; /* k steps of this column block */
        const char *next = (const char *)b.B0 + block_bytes;
        const char *slice_end = (const char *)(packed + (size_t)((n1 + AMX_TCOLS - 1) / AMX_TCOLS) * KT * AMX_TILE);
        qw_amx_ahead far = {next, next + far_bytes < slice_end ? next + far_bytes : slice_end,
                            (int)((far_bytes / 64 + steps - 1) / steps)};
        b.far = &far;
        for (int m = 0; m < rows; m += AMX_MB) {
            b.Cb = Cb ? Cb + (size_t)m * ldcb + n : NULL;
            b.mb = rows - m < AMX_MB ? rows - m : AMX_MB;
            qw_amx_configure_block(b.mb, config);
            b.C = C + (size_t)m * ldc + n;
            b.A = A + (size_t)m * lda;
            b.Ab = panel ? panel + (size_t)m * Kp : NULL;
            switch ((b.mb > AMX_TROWS) << 1 | (b.nr > AMX_TCOLS)) {
            case 3: amx_block(&b, 1, 1); break;
            case 2: amx_block(&b, 1, 0); break;
            case 1: amx_block(&b, 0, 1); break;
            default: amx_block(&b, 0, 0); break;
            }
        }
    }
}

/* qw_amx_matmul; stepwise: round A per step (the path taken when the panel cannot be allocated);
 * Ab: A already rounded (qw_amx_round_rows, row stride Kp), the panels are its rows. */
static void amx_matmul(float *C, int ldc, const float *A, int lda, const uint16_t *Ab, const void *packed,
                       const float *bias, int M, int N, int K, int n0, int n1, int stepwise, uint16_t *Cb, int ldcb,
                       void (*act)(float *, int)) {
    if (n1 > N) n1 = N;
    if (M <= 0 || n0 < 0 || n1 <= n0) return;
    if (K <= 0) { /* no k: the bias (or zeros), as an empty tile chain gives it */
        for (int m = 0; m < M; m++)
            for (int n = n0; n < n1; n++) {
                float v = bias ? 0.0f + bias[n] : 0.0f;
                if (!Cb) {
                    C[(size_t)m * ldc + n] = v;
                    continue;
                }
                if (act) act(&v, 1);
                Cb[(size_t)m * ldcb + n] = amx_bf16(v);
            }
        return;
    }
    const size_t Kp = (size_t)round_up(K, AMX_KSTEP), row_bytes = Kp * sizeof(uint16_t);
    int P = (int)(PANEL_BYTES / row_bytes) / AMX_MB * AMX_MB; /* rows per panel */
    if (P < AMX_MB) P = AMX_MB;
    if (P > M) P = M;
    /* a last panel would hold a short block alone and stream every column block's weights again
     * for it: the panel before takes those rows (at most 31 more) */
    const int tail = M % P < AMX_MB && M > P ? M % P : 0;
    uint16_t *panel = NULL; /* row stride Kp, 64-byte aligned rows */
    if (!stepwise && !Ab) panel = aligned_alloc(64, (size_t)(P + tail) * row_bytes);
    int config = 0; /* rows of the blocks the tiles are configured for */
    for (int p0 = 0; p0 < M; p0 += P) {
        const int pr = M - p0 <= P + tail ? M - p0 : P;
        const float *Ap = A + (size_t)p0 * lda;
        if (panel) {
            QW_AMX_BARRIER(panel);
            amx_round(panel, Kp, Ap, lda, pr, 0, (int)Kp, K);
            QW_AMX_BARRIER(panel);
        }
        const uint16_t *pa = Ab ? Ab + (size_t)p0 * Kp : panel;
        float *Cp = Cb ? NULL : C + (size_t)p0 * ldc;
        amx_rows(Cp, ldc, Ap, lda, pa, (const uint16_t *)packed, bias, pr, K, n0, n1, &config,
                 Cb ? Cb + (size_t)p0 * ldcb : NULL, ldcb, act);
        if (pr > P) break; /* it took the tail */
    }
    _tile_release();
    if (panel) QW_AMX_BARRIER(panel);
    free(panel);
}

void qw_amx_matmul(float *C, int ldc, const float *A, int lda, const void *packed, const float *bias, int M, int N,
                   int K, int n0, int n1) {
    amx_matmul(C, ldc, A, lda, NULL, packed, bias, M, N, K, n0, n1, 0, NULL, 0, NULL);
}

void qw_amx_round_rows(uint16_t *Ab, const float *A, int lda, int M, int K) {
    amx_round(Ab, (size_t)round_up(K, AMX_KSTEP), A, lda, M, 0, round_up(K, AMX_KSTEP), K);
}

void qw_amx_matmul_rounded(float *C, int ldc, const uint16_t *Ab, const void *packed, const float *bias, int M, int N,
                           int K, int n0, int n1) {
    amx_matmul(C, ldc, NULL, 0, Ab, packed, bias, M, N, K, n0, n1, 0, NULL, 0, NULL);
}

void qw_amx_matmul_act_bf16(uint16_t *Cb, int ldcb, const uint16_t *Ab, const void *packed, const float *bias,
                            void (*act)(float *x, int n), int M, int N, int K, int n0, int n1) {
    amx_matmul(NULL, 0, NULL, 0, Ab, packed, bias, M, N, K, n0, n1, 0, Cb, ldcb, act);
}

/* ==== 3x3 convolution of stride 2, implicit (qw_amx_conv3x3) ==== */

#define CONV_PANEL_ROWS 128 /* output rows whose input (4 time steps of conv2: 570 KB) stays in L2 */

/* One block of mb (1..32) output rows x nr columns. Implicit (IMPLICIT: Cin % 32 == 0, Fo % 16 == 0, so
 * mb is 16 or 32): an A tile is 16 output frequencies of one time step; for tap (ky, kx) and channels
 * [cc, cc + 32) its rows are the input at frequencies 2 fo + ky, one every 2 Cin bf16, read from the
 * padded input as they are. The k steps run in the packed weights' order (tap by tap, 32 channels a
 * step), so each element is the chain qw_amx_matmul forms over the im2col row. Explicit: the A tiles
 * from c->rows (the im2col, already rounded). */
AMX_INLINE void amx_conv_block(const qw_conv3x3 *c, int m0, int mb, int n, int nr, int IMPLICIT, int TWO_M,
                               int TWO_N) {
    const int Fo = (c->Fi + 1) / 2, Fp = c->Fi + 2, Cin = c->Cin, KT = round_up(9 * Cin, AMX_KSTEP) / AMX_KSTEP;
    const uint16_t *b0 = (const uint16_t *)c->packed + (size_t)(n / AMX_TCOLS) * KT * AMX_TILE;
    const uint16_t *b1 = b0 + (size_t)KT * AMX_TILE; /* read when TWO_N */
    amx_zero_c(TWO_M, TWO_N);
    if (IMPLICIT) {
        const size_t as = (size_t)4 * Cin; /* bytes from one output frequency's input to the next */
        const int m1 = m0 + AMX_TROWS;
        const uint16_t *a0 = c->in + ((size_t)2 * (m0 / Fo) * Fp + 2 * (m0 % Fo)) * Cin;
        const uint16_t *a1 = c->in + ((size_t)2 * (m1 / Fo) * Fp + 2 * (m1 % Fo)) * Cin; /* read when TWO_M */
        for (int tap = 0; tap < 9; tap++) {
            const int ky = tap / 3, kx = tap % 3, nt = tap < 8 ? tap + 1 : tap;
            const size_t off = ((size_t)kx * Fp + ky) * Cin; /* tap (ky, kx): time 2 to + kx, frequency 2 fo + ky */
            const size_t next_off = ((size_t)(nt % 3) * Fp + nt / 3) * Cin;
            for (int cc = 0; cc < Cin; cc += AMX_KSTEP, b0 += AMX_TILE, b1 += AMX_TILE) {
                /* the next step's A rows into L1: 16 lines 4 Cin bytes apart, which the hardware does not
                 * fetch ahead of tile loads (conv2 of a 10 s clip 19.7 -> 15.5 ms) */
                const size_t na = cc + AMX_KSTEP < Cin ? off + cc + AMX_KSTEP : next_off;
                for (int r = 0; r < AMX_TROWS; r++) {
                    __builtin_prefetch(a0 + na + r * (as / 2));
                    if (TWO_M) __builtin_prefetch(a1 + na + r * (as / 2));
                }
                amx_kstep(a0 + off + cc, a1 + off + cc, as, b0, b1, TWO_M, TWO_N);
            }
        }
    } else {
        const size_t Kp = (size_t)KT * AMX_KSTEP;
        const uint16_t *a = c->rows + (size_t)m0 * Kp;
        for (int kt = 0; kt < KT; kt++, a += AMX_KSTEP, b0 += AMX_TILE, b1 += AMX_TILE)
            amx_kstep(a, a + AMX_TROWS * Kp, Kp * 2, b0, b1, TWO_M, TWO_N);
    }
    float S[AMX_MB * AMX_NB] __attribute__((aligned(64)));
    amx_block_act(S, mb, nr, c->bias ? c->bias + n : NULL, c->act, TWO_M, TWO_N);
    for (int r = 0; r < mb; r++) {
        const int m = m0 + r, to = m / Fo, fo = m % Fo;
        const float *s = S + r * AMX_NB;
        if (c->out_bf16) {
            uint16_t *d = c->out_bf16 + ((size_t)(to + 1) * (Fo + 2) + fo + 1) * c->ldo + n;
            for (int j = 0; j < nr; j++) d[j] = amx_bf16(s[j]);
        } else {
            float *d = c->out_f32 + (size_t)m * c->ldo + n;
            for (int j = 0; j < nr; j++) d[j] = s[j];
        }
    }
}

void qw_amx_conv3x3(const qw_conv3x3 *c, int n0, int n1) {
    const int Fo = (c->Fi + 1) / 2, M = (c->Ti + 1) / 2 * Fo;
    if (n1 > c->Cout) n1 = c->Cout;
    if (M <= 0 || n0 < 0 || n1 <= n0) return;
    int config = 0; /* rows of the blocks the tiles are configured for */
    /* A panel of output rows at a time: its input stays in L2 while every column block of the slice
     * (32 columns x 9 Cin of weights each) meets it. */
    for (int p0 = 0; p0 < M; p0 += CONV_PANEL_ROWS) {
        const int p1 = M - p0 < CONV_PANEL_ROWS ? M : p0 + CONV_PANEL_ROWS;
        for (int n = n0; n < n1; n += AMX_NB) {
            const int nr = n1 - n < AMX_NB ? n1 - n : AMX_NB;
            for (int m = p0; m < p1; m += AMX_MB) {
                const int mb = p1 - m < AMX_MB ? p1 - m : AMX_MB;
                qw_amx_configure_block(mb, &config);
                const int two_m = mb > AMX_TROWS, two_n = nr > AMX_TCOLS;
                if (c->rows) {
                    if (two_m && two_n) amx_conv_block(c, m, mb, n, nr, 0, 1, 1);
                    else if (two_m) amx_conv_block(c, m, mb, n, nr, 0, 1, 0);
                    else if (two_n) amx_conv_block(c, m, mb, n, nr, 0, 0, 1);
                    else amx_conv_block(c, m, mb, n, nr, 0, 0, 0);
                } else {
                    if (two_m && two_n) amx_conv_block(c, m, mb, n, nr, 1, 1, 1);
                    else if (two_m) amx_conv_block(c, m, mb, n, nr, 1, 1, 0);
                    else if (two_n) amx_conv_block(c, m, mb, n, nr, 1, 0, 1);
                    else amx_conv_block(c, m, mb, n, nr, 1, 0, 0);
                }
            }
        }
    }
    _tile_release();
}

/* ==== Self-check ==== */

/* A product of 37 x 70 by 70 x 50 (partial tiles in M, N and K; bias) on the
 * tiles against a double-precision sum of the same bf16-rounded inputs, within
 * 1e-4 of the largest |result| + 1e-6. Exactly representable small integers
 * keep the inputs clear of bf16 rounding: any error is the unit's, not ours. */
int qw_amx_selfcheck(void) {
    enum { M = 37, K = 70, N = 50 };
    float A[M * K], C[M * N], bias[N];
    uint16_t W[N * K];
    for (int i = 0; i < M * K; i++) A[i] = (float)((i * 7) % 13 - 6);
    for (int i = 0; i < N * K; i++) W[i] = qw_f32_to_bf16((float)((i * 5) % 11 - 5) * 0.25f);
    for (int n = 0; n < N; n++) bias[n] = (float)(n % 5) - 2.0f;
    void *P = aligned_alloc(64, (qw_amx_packed_size(N, K) + 63) & ~(size_t)63);
    if (!P) return 0;
    qw_amx_pack(P, W, QW_BF16, N, K);
    qw_amx_matmul(C, N, A, K, P, bias, M, N, K, 0, N);
    free(P);
    double worst = 0.0, big = 0.0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double ref = bias[n];
            for (int k = 0; k < K; k++) ref += (double)A[m * K + k] * (double)qw_bf16_to_f32(W[n * K + k]);
            const double e = C[m * N + n] - ref;
            worst = e > worst ? e : -e > worst ? -e : worst;
            big = ref > big ? ref : -ref > big ? -ref : big;
        }
    return worst <= 1e-4 * big + 1e-6;
}
