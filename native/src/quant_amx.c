/*
 * Int8 weights, AMX-INT8 product (quant.h has the maths and layout): the
 * prefill's and long batches' rows on tiles, fewer rows on the VNNI table.
 *
 * The packed weights are already TDPBUSD's B operand: the 64-byte row kq of a
 * column block holds 4 consecutive k of its 16 columns, so one quantization
 * group (64 k) of a block is one 1 KiB tile of 16 rows at stride 64. The
 * activations' bytes (qa + 128, unsigned) are its A operand as they are: a
 * group of 16 rows is a tile of 16 x 64 bytes at stride Kp.
 *
 * For each panel of 32 columns of the slice, each block of 32 rows, each
 * group g (2 A tiles x 2 B tiles -> 4 C tiles of 16 x 16):
 *   C tiles = 0; TDPBUSD(C, A rows x group g, B columns x group g)   int32, exact
 *   store C; per row: acc = fma(float(C + zsum), sw * sa, acc)        AVX-512
 * which is quant.h's order of operations (the integer sum is exact whatever
 * the order, the float steps are the scalar table's), so the result is bit
 * for bit the scalar and VNNI tables' and batch invariance holds across the
 * tables: a sequence's row gives the same bits here in a prefill of 145 rows
 * as on the VNNI table in a decode step of one. Rows 0-15 and 16-31 take
 * turns so that one half's products run while the other's are stored and
 * scaled; the f32 accumulators of the block (4 KiB) live in memory.
 *
 * Where the time goes (bench_kernels -v int8 -m 145, one thread, Intel Xeon
 * with AMX): with the weights' and activations' tiles held in L1 and no
 * stores or scaling the loop runs at 2.9-3.8 TOP/s; streaming the weights
 * from DRAM brought that to 1.1, since tile loads that miss stall where
 * vector loads would have been prefetched. So a panel's weights (32 x Kp
 * bytes, contiguous) are read from DRAM once, by its first row block, and
 * fetched into L2 a few lines a group while the previous panel runs (qw_amx_ahead):
 * the whole product went from 0.59-0.69 to 0.87-1.08 TOP/s on one thread,
 * 1.27-1.58 to 1.52-2.01 on two. The rest is the stores and the scaling of
 * each group's sums. perf then still put 30% of the product's samples on
 * its B tile loads and 6.7% on the memset of each block's accumulators:
 * the first group now starts them, and every block fetches its next groups'
 * weights into L1 (prefill of 148 rows 170-175 -> 155-162 ms).
 *
 * M below QA_MIN_ROWS goes to the AVX-512 VNNI table: a decode step streams
 * the weights once for all its rows and is bound by memory, where the tiles
 * gain nothing (the crossover measured with bench_kernels -v int8), and so
 * does K not a multiple of 64 (no model here has one).
 *
 * Tiles (palette 1, amx_tiles.h): tmm0, 1 C of rows 0-15, tmm2, 3 C of rows
 * 16-31, tmm4, 5 A of those rows, tmm6, 7 B of the two column blocks. The
 * last block of M (fewer than 32 rows) configures the tiles again.
 *
 * Compiled with -DQW_AMX_EMULATE (native/tests/test_quant.c includes this file
 * so), the tile instructions are amx_emulate.h's and the vector steps plain C
 * (fmaf: one rounding, the same bits), the table is qw_q8_amx_emu and small M
 * goes to the scalar table. With QW_AMX_NATIVE_VECTORS as well (and AVX-512
 * flags: native/tests/quant_amx_vectors.c), the vector steps are the AVX-512
 * code AMX machines run, as qw_q8_amx_emu512: test_quant checks it on any CPU
 * with AVX-512.
 */
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(QW_AMX_EMULATE) && !defined(QW_AMX_NATIVE_VECTORS)
#define QA_PLAIN_C 1 /* the vector steps in plain C */
#else                /* the AVX-512 steps AMX machines run (the tiles emulated with QW_AMX_NATIVE_VECTORS) */
#include "kernels_avx512_tile.h" /* bf16_to_f32x16 */
#include <immintrin.h>
#endif

#ifdef QW_AMX_EMULATE
#include "amx_emulate.h"
#ifdef QW_AMX_KEEP_NAMES /* the library itself emulated (QWEN_AMX_EMULATE) */
#define QA_TABLE qw_q8_amx
#define qw_q8_amx_selfcheck qw_q8_amx_selfcheck
#elif defined(QW_AMX_NATIVE_VECTORS)
#define QA_TABLE qw_q8_amx_emu512
#define qw_q8_amx_selfcheck qw_q8_amx_emu512_selfcheck
#else
#define QA_TABLE qw_q8_amx_emu
#define qw_q8_amx_selfcheck qw_q8_amx_emu_selfcheck
#endif
#define QA_SMALL qw_q8_scalar
#else
#define QA_TABLE qw_q8_amx
#define QA_SMALL qw_q8_avx512vnni
#endif

#define QA_MIN_ROWS 16 /* fewer rows: the VNNI table */
#define QA_ROWS 16     /* rows of a C / A tile */
#define QA_PREFETCH 2 /* groups of B ahead */
#define QA_GK 64       /* k per group: bytes per A tile row, 16 B tile rows of 4 */
_Static_assert(QW_Q8_GROUP == QA_GK, "one quantization group is one tile's depth");

#include "amx_tiles.h" /* the tile layout (tmm0-3 C, 4-5 A, 6-7 B) and qw_amx_configure */

/* The f32 accumulators of a block, 32 rows x 32 columns ([row block][column block][row]), in memory:
 * 64 vectors do not fit in registers. */
typedef struct {
    float f[2][2][QA_ROWS][16];
    int32_t d[2][2][QA_ROWS][16]; /* the C tiles as stored: [row block][column block] */
} __attribute__((aligned(64))) qa_block;

/* f[r] = fma(float(d[r] + zsum), sw * sa_r, f[r]) for the 16 rows of one C tile: quant.h's step for one
 * group; the first group's adds to 0 instead of f (no memset of the accumulators: 6% of the product's
 * time). Rows past the block's own (the last block of M) read its last row's scale and are never stored. */
static inline __attribute__((always_inline)) void qa_scale(float f[QA_ROWS][16], const int32_t d[QA_ROWS][16],
                                                           const int32_t *z, const uint16_t *sw,
                                                           const float *const sa[QA_ROWS], int g) {
#ifdef QA_PLAIN_C
    for (int r = 0; r < QA_ROWS; r++)
        for (int j = 0; j < 16; j++)
            f[r][j] = fmaf((float)(int32_t)((uint32_t)d[r][j] + (uint32_t)z[j]), qw_bf16_to_f32(sw[j]) * sa[r][g],
                           g ? f[r][j] : 0.0f);
#else
    const __m512i zv = _mm512_loadu_si512((const void *)z);
    const __m512 swv = bf16_to_f32x16(_mm256_loadu_si256((const __m256i *)(const void *)sw));
#pragma GCC unroll 16
    for (int r = 0; r < QA_ROWS; r++) {
        const __m512i dr = _mm512_add_epi32(_mm512_load_si512((const void *)d[r]), zv);
        _mm512_store_ps(f[r], _mm512_fmadd_ps(_mm512_cvtepi32_ps(dr), _mm512_mul_ps(swv, _mm512_set1_ps(sa[r][g])),
                                              g ? _mm512_load_ps(f[r]) : _mm512_setzero_ps()));
    }
#endif
}

/* C (+ bias) = the block's R x nr accumulators. */
static inline void qa_store(const qa_block *b, int R, float *C, int ldc, int nr, const float *bias) {
#ifdef QA_PLAIN_C
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nr; j++) {
            const float v = b->f[r / QA_ROWS][j / 16][r % QA_ROWS][j % 16];
            C[(size_t)r * ldc + j] = bias ? v + bias[j] : v;
        }
#else
    for (int h = 0; h * 16 < nr; h++) {
        const __mmask16 k = nr - h * 16 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nr - h * 16)) - 1);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + h * 16) : _mm512_setzero_ps();
        for (int r = 0; r < R; r++) {
            const __m512 v = _mm512_load_ps(b->f[r / QA_ROWS][h][r % QA_ROWS]);
            _mm512_mask_storeu_ps(C + (size_t)r * ldc + h * 16, k, bias ? _mm512_add_ps(v, bv) : v);
        }
    }
#endif
}

/* A block of R (1..32) rows x nr (1..32) columns from column block nb (and nb + 1); TWO_M: R > 16, TWO_N:
 * nr > 16 (constants). Per group: 2 A and 2 B tile loads feed 4 TDPBUSD, whose sums are stored and
 * scaled while the next group's tiles are loaded and multiplied (the other half of b->d).
 * Each group fetches the block's weights two groups ahead into L1 (tile loads that miss stall, and
 * the hardware does not fetch ahead of them as it does for vector loads; every block, not only a
 * panel's first: 2-5% on bench_kernels -v int8 -m 145; the activations too measured nothing more);
 * far: the next panel's weights, into L2. */
static inline __attribute__((always_inline)) void qa_block_rows(qa_block *b, int TWO_M, int TWO_N, int R, float *C,
                                                                int ldc, const uint8_t *qa, const float *sa,
                                                                const qw_q8 *W, int nb, int nr, const float *bias,
                                                                qw_amx_ahead *far) {
    const int Kp = W->Kp, ng = W->ng;
    const int8_t *qb0 = W->q + (size_t)nb * 16 * Kp, *qb1 = qb0 + (size_t)16 * Kp;
    const uint16_t *sw0 = W->scale + (size_t)nb * ng * 16, *sw1 = sw0 + (size_t)ng * 16;
    const int32_t *z0 = W->zsum + (size_t)nb * ng * 16, *z1 = z0 + (size_t)ng * 16;
    const float *sar[2][QA_ROWS]; /* each row's scales (rows past R: the last row's) */
    for (int r = 0; r < 2 * QA_ROWS; r++) sar[r / QA_ROWS][r % QA_ROWS] = sa + (size_t)(r < R ? r : R - 1) * ng;
    if (!ng) memset(b->f, 0, sizeof(b->f)); /* no group to start them (K = 0) */
    const size_t arow = (size_t)QA_ROWS * Kp; /* A's second row block */
    /* Rows 0-15 (C tiles 0, 1) and rows 16-31 (tiles 2, 3) take turns: a set's sums are stored and
     * scaled only after the other set's products were issued, so the tile unit always has work while
     * the stores wait for their products. Both sets share a group's B tiles. */
    for (int g = 0; g <= ng; g++) {
        const size_t gq = (size_t)g * QA_GK, gw = gq * 16, gs = (size_t)g * 16;
        if (g + QA_PREFETCH < ng)
            for (int i = 0; i < QA_GK * 16; i += 64) {
                __builtin_prefetch(qb0 + gw + QA_PREFETCH * QA_GK * 16 + i);
                if (TWO_N) __builtin_prefetch(qb1 + gw + QA_PREFETCH * QA_GK * 16 + i);
            }
        qw_amx_fetch_ahead(far);
        if (g < ng) {
            _tile_zero(0);
            if (TWO_N) _tile_zero(1);
            _tile_loadd(4, qa + gq, Kp);
            _tile_loadd(6, qb0 + gw, 64);
            if (TWO_N) _tile_loadd(7, qb1 + gw, 64);
            _tile_dpbusd(0, 4, 6);
            if (TWO_N) _tile_dpbusd(1, 4, 7);
        }
        if (TWO_M && g > 0) { /* rows 16-31 of group g - 1 */
            _tile_stored(2, b->d[1][0], 64);
            if (TWO_N) _tile_stored(3, b->d[1][1], 64);
            QW_AMX_BARRIER(b->d[1]);
            qa_scale(b->f[1][0], (const int32_t(*)[16])b->d[1][0], z0 + gs - 16, sw0 + gs - 16, sar[1], g - 1);
            if (TWO_N)
                qa_scale(b->f[1][1], (const int32_t(*)[16])b->d[1][1], z1 + gs - 16, sw1 + gs - 16, sar[1], g - 1);
        }
        if (g == ng) break;
        if (TWO_M) {
            _tile_zero(2);
            if (TWO_N) _tile_zero(3);
            _tile_loadd(5, qa + arow + gq, Kp);
            _tile_dpbusd(2, 5, 6);
            if (TWO_N) _tile_dpbusd(3, 5, 7);
        }
        _tile_stored(0, b->d[0][0], 64); /* rows 0-15 of group g */
        if (TWO_N) _tile_stored(1, b->d[0][1], 64);
        QW_AMX_BARRIER(b->d[0]);
        qa_scale(b->f[0][0], (const int32_t(*)[16])b->d[0][0], z0 + gs, sw0 + gs, sar[0], g);
        if (TWO_N) qa_scale(b->f[0][1], (const int32_t(*)[16])b->d[0][1], z1 + gs, sw1 + gs, sar[0], g);
    }
    qa_store(b, R, C, ldc, nr, bias);
}

static void matmul_q8_amx(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M, int n0,
                          int n1) {
    if (M < QA_MIN_ROWS || W->Kp % QA_GK) { /* few rows, or a last group shorter than a tile's depth */
        QA_SMALL.matmul(C, ldc, A, W, bias, M, n0, n1);
        return;
    }
    qa_block b;                  /* 8 KiB */
    memset(b.d, 0, sizeof(b.d)); /* the rows of a short block's tiles that are scaled but not stored */
    int config = 0;                 /* rows of the blocks the tiles are configured for */
    const int Kp = W->Kp, blocks = (M + 2 * QA_ROWS - 1) / (2 * QA_ROWS);
    /* A panel of 32 columns (32 x Kp bytes of weights, contiguous) at a time, over all row blocks: its
     * weights come from DRAM once and from the caches for the other row blocks (the activations, M x Kp
     * bytes, stay in L2). */
    for (int n = n0; n < n1; n += 32) {
        const int nr = n1 - n < 32 ? n1 - n : 32;
        const float *bn = bias ? bias + n : NULL;
        /* the next panel's weights, into L2 a few lines a group while this panel's row blocks run */
        const char *next = (const char *)(W->q + (size_t)(n + 32) * Kp);
        const char *next_end = (const char *)(W->q + (size_t)(n1 + 15) / 16 * 16 * Kp);
        qw_amx_ahead far = {next, next + (size_t)32 * Kp < next_end ? next + (size_t)32 * Kp : next_end,
                            (32 * Kp / 64 + blocks * W->ng - 1) / (blocks * W->ng)};
        for (int m = 0; m < M; m += 2 * QA_ROWS) {
            const int R = M - m < 2 * QA_ROWS ? M - m : 2 * QA_ROWS;
            qw_amx_configure_block(R, &config);
            const uint8_t *qa = A->q + (size_t)m * Kp;
            const float *sa = A->scale + (size_t)m * A->ng;
            float *c = C + (size_t)m * ldc + n;
            switch ((R > QA_ROWS) << 1 | (nr > 16)) {
            case 3: qa_block_rows(&b, 1, 1, R, c, ldc, qa, sa, W, n / 16, nr, bn, &far); break;
            case 2: qa_block_rows(&b, 1, 0, R, c, ldc, qa, sa, W, n / 16, nr, bn, &far); break;
            case 1: qa_block_rows(&b, 0, 1, R, c, ldc, qa, sa, W, n / 16, nr, bn, &far); break;
            default: qa_block_rows(&b, 0, 0, R, c, ldc, qa, sa, W, n / 16, nr, bn, &far); break;
            }
        }
    }
    _tile_release();
}

static void quantize_rows_amx(uint8_t *q, float *scale, const float *A, int lda, int M, int K, int Kp, int ng) {
    QA_SMALL.quantize_rows(q, scale, A, lda, M, K, Kp, ng);
}

static void quantize_group_amx(uint8_t *u, const float *x, int n, float inv) { QA_SMALL.quantize_group(u, x, n, inv); }

/* The LM head's screen: a step's few rows, the VNNI table's (the scalar one's when emulated). */
static void screen_amx(float *T, int ldt, const qw_q8_act *A, const qw_q4 *S, int M, int n0, int n1) {
    QA_SMALL.screen(T, ldt, A, S, M, n0, n1);
}

const qw_q8_kernels QA_TABLE = {"amx", matmul_q8_amx, quantize_rows_amx, quantize_group_amx, screen_amx, 8};

/* A product of 37 x 192 by 192 x 40 (a partial row block and column block, an odd number of
 * groups; bias) on the tiles against the scalar table, bit for bit. */
int qw_q8_amx_selfcheck(void) {
    enum { M = 37, K = 192, N = 40 };
    size_t qb, sb, zb;
    qw_q8_sizes(N, K, &qb, &sb, &zb);
    const size_t floats = (size_t)M * K + (size_t)N * K + N + 2 * (size_t)M * N; /* A, W, bias, C, R */
    char *mem = aligned_alloc(64, (qb + sb + zb + qw_q8_act_bytes(M, K) + floats * sizeof(float) + 63) & ~(size_t)63);
    if (!mem) return 0;
    float *A = (float *)(void *)(mem + qb + sb + zb + qw_q8_act_bytes(M, K)), *Wf = A + M * K, *bias = Wf + N * K;
    float *C = bias + N, *R = C + M * N;
    for (int i = 0; i < M * K; i++) A[i] = (float)((i * 7) % 13 - 6) * 0.37f * (float)(1 + i / K % 5); /* rows' scales differ */
    for (int i = 0; i < N * K; i++) Wf[i] = (float)((i * 5) % 11 - 5) * 0.21f;
    for (int n = 0; n < N; n++) bias[n] = (float)(n % 5) - 2.0f;
    qw_q8 W;
    qw_q8_init(&W, N, K, mem, mem + qb, mem + qb + sb);
    qw_q8_pack(&W, Wf, QW_F32, 0, (N + 15) / 16);
    const qw_q8_act act = qw_q8_quantize(&qw_q8_scalar, mem + qb + sb + zb, A, K, M, &W);
    QA_TABLE.matmul(C, N, &act, &W, bias, M, 0, N);
    qw_q8_scalar.matmul(R, N, &act, &W, bias, M, 0, N);
    const int same = !memcmp(C, R, (size_t)M * N * sizeof(float));
    free(mem);
    return same;
}
