/*
 * Int8 weights — the decoder's linears quantized once at load (precision
 * "fast"), and the kernels that multiply them, one table per instruction set.
 *
 * Weights: W[N, K] -> q[n, k] = round(W[n, k] / sw[n, g]) in [-127, 127],
 * sw[n, g] = max |W[n, k in g]| / 127 rounded to bf16 (nearest even), for
 * groups g of QW_Q8_GROUP consecutive k (the last group may be shorter). The
 * scales are a sixteenth of what a decode step streams in f32 and a
 * thirty-second in bf16 (3% fewer bytes a token); q is taken against the
 * rounded scale, so the rounding moves no weight by more than half a step.
 *
 * Activations: each row of A is quantized the same way when the product is
 * taken (per row, per group): qa[m, k] = round(A[m, k] / sa[m, g]). They are
 * stored offset by 128 as unsigned bytes (qa + 128 in [1, 255]), the operand
 * type of the u8 x s8 dot product (VNNI vpdpbusd).
 *
 * Product, for every table bit for bit (the integer sums are exact, and the
 * float steps are the same operations in the same order):
 *   d[m, n, g] = sum_{k in g} qa[m, k] * q[n, k]                (int32, exact)
 *   acc = 0; for g in order: acc = fma((float)d[m, n, g], sw[n, g] * sa[m, g], acc)
 *   C[m, n] = acc (+ bias[n])
 * so C[m, n] depends on A[m, :] and W[n, :] only: any M, any column slice,
 * any table gives the same bits (batch invariance holds by construction).
 *
 * Packed layout, blocks of 16 output columns (N padded to 16 with zero rows,
 * K padded to a multiple of 4 with zeros):
 *   q     [N16 / 16][Kp / 4][16][4]   int8: 4 consecutive k of 16 columns per
 *                                     64 bytes (one 512-bit dot-product operand)
 *   scale [N16 / 16][ng][16]          bf16 sw (widened to f32 exactly where used)
 *   zsum  [N16 / 16][ng][16]          int32 -128 * sum_{k in g} q[n, k]: the
 *                                     offset of qa + 128 taken back out (the
 *                                     VNNI tables' decode steps, up to 16 rows,
 *                                     sum the weights they stream instead)
 */
#ifndef QWEN_QUANT_H
#define QWEN_QUANT_H

#include "kernels.h"

#include <stddef.h>
#include <stdint.h>

#define QW_Q8_GROUP 64

typedef struct {
    int8_t *q;
    uint16_t *scale; /* bf16 */
    int32_t *zsum;
    int N, K, Kp, ng; /* ng = groups along K */
} qw_q8;

/* A quantized by rows: q [M, Kp] (qa + 128, zero-padded k hold 128), scale [M, ng]. */
typedef struct {
    const uint8_t *q;
    const float *scale;
    int M, Kp, ng;
} qw_q8_act;

/* The LM head's screen (precision FAST): a 4-bit copy of an int8 matrix, read instead of it where
 * only the largest products of a few rows are wanted (a greedy step's LM head: qw_head_screened in
 * ops.c rescores the best blocks on the int8 matrix). For column n and group g, with m the
 * largest |q[n, k in g]|:
 *   s4[n, g] = bf16(sw[n, g] * m / 7),  q4[n, k] = round(q[n, k] * sw[n, g] / s4[n, g]) in [-7, 7]
 * (0 and 0 for a zero group), and the screen's values, for every table bit for bit:
 *   d4[m, n, g] = sum_{k in g} qa[m, k] * q4[n, k]                (int32, exact)
 *   acc = 0; for g in order: acc = fma((float)d4[m, n, g], s4[n, g] * sa[m, g], acc)
 * Packed, for K a multiple of 8 (the last group may be shorter), blocks of 16 columns as the int8 copy:
 *   q     [N16 / 16][K / 8][16][4]   bytes: byte 4j + t of row i holds column j's q4 + 8 at
 *                                    k = 8i + t (low nibble) and k = 8i + 4 + t (high nibble)
 *   scale [N16 / 16][ng][16]         bf16 s4
 * Half the int8 copy's bytes. */
typedef struct {
    uint8_t *q;
    uint16_t *scale; /* bf16 */
    int N, K, ng;
} qw_q4;

typedef struct {
    const char *name;
    /* C[m, n] = sum_g fma order above (+ bias[n]) for m < M, n in [n0, n1):
     * n0 a multiple of 16, n1 a multiple of 16 or W->N; C row stride ldc. */
    void (*matmul)(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M, int n0, int n1);
    /* qw_q8_quantize_rows, the same bytes and scales (the scalar code, or vectors that round alike) */
    void (*quantize_rows)(uint8_t *q, float *scale, const float *A, int lda, int M, int K, int Kp, int ng);
    /* qw_q8_quantize_group, the same bytes (the packing's pass against a weight group's bf16 scale) */
    void (*quantize_group)(uint8_t *u, const float *x, int n, float inv);
    /* The screen's values above, each block's largest: T[m * ldt + n / 16] for m < M and the blocks
     * of [n0, n1) (n0 a multiple of 16; a block's values those of its columns below n1), as
     * qw_q4_block_max gives it (a NaN where one of them is); A quantized for the int8 matrix S came
     * from. NULL where the table has none (no screening). */
    void (*screen)(float *T, int ldt, const qw_q8_act *A, const qw_q4 *S, int M, int n0, int n1);
    /* The most rows of a step whose head the screen takes: where it beats the whole int8 product
     * (bench_kernels.sh -v int8, the LM head: 8 on the x86-64 tables, whose screens of 8 rows read
     * half the bytes in one pass; 4 on the NEON ones, not measured above 4 rows; at most
     * QW_HEAD_SCREEN_ROWS, internal.h). */
    int screen_rows;
} qw_q8_kernels;

extern const qw_q8_kernels qw_q8_scalar;
extern const qw_q8_kernels qw_q8_avx2;       /* x86-64 builds */
extern const qw_q8_kernels qw_q8_avx512vnni; /* x86-64 builds */
extern const qw_q8_kernels qw_q8_avxvnni;    /* x86-64 builds: 256-bit VNNI (AVX-VNNI) */
int qw_cpu_has_avxvnni(void);                 /* x86-64 builds: CPUID.(7,1):EAX[4] */
extern const qw_q8_kernels qw_q8_neon;       /* AArch64 builds */
extern const qw_q8_kernels qw_q8_neondot;    /* AArch64 builds: the dot-product instructions (FEAT_DotProd) */
int qw_cpu_has_dotprod(void);                 /* AArch64 builds: HWCAP_ASIMDDP (Linux), FEAT_DotProd (macOS) */
/* x86-64 builds with AMX (QWEN_HAVE_AMX): 16 rows and more on AMX-INT8 tiles, fewer on the VNNI
 * table; only where qw_amx_int8_available() (amx.h) and qw_q8_amx_selfcheck() said 1. */
extern const qw_q8_kernels qw_q8_amx;
int qw_q8_amx_selfcheck(void); /* 1 when a small product on the tiles is bit for bit the scalar table's */

/* The int8 table for a resolved kernel set (QWEN_ISA_*): the same instruction
 * set, or the best the CPU has below it (AVX-512 without VNNI: AVX-VNNI where
 * the CPU has it, else AVX2; AVX2 with AVX-VNNI: AVX-VNNI; NEON with the
 * dot-product instructions: neondot). */
const qw_q8_kernels *qw_q8_for(int isa);

/* Bytes of the three arrays of a packed [N, K] matrix (q, scale, zsum), each a multiple of 64. */
void qw_q8_sizes(int N, int K, size_t *q_bytes, size_t *scale_bytes, size_t *zsum_bytes);
/* Points W at caller-provided arrays of qw_q8_sizes and sets its shape. */
void qw_q8_init(qw_q8 *W, int N, int K, void *q, void *scale, void *zsum);
/* Quantizes and packs the column blocks [b0, b1) (16 columns each) of
 * src[N, K] (row stride K, dtype dt); blocks are independent, so threads may
 * pack disjoint ranges. */
void qw_q8_pack(qw_q8 *W, const void *src, qw_dtype dt, int b0, int b1);
/* The same, a group at a time through a kernel set's to_f32 and a table's quantize_rows (the same
 * bytes and scales as the scalar one's): qw_q8_pack is this with the scalar ones; the library
 * loads with its own (vectors). */
void qw_q8_pack_with(const qw_q8_kernels *t, void (*to_f32)(float *dst, const void *src, qw_dtype dt, int n),
                     qw_q8 *W, const void *src, qw_dtype dt, int b0, int b1);

/* Bytes of a screen's two arrays (multiples of 64) for an [N, K] matrix, and S pointed at them. */
void qw_q4_sizes(int N, int K, size_t *q_bytes, size_t *scale_bytes);
void qw_q4_init(qw_q4 *S, int N, int K, void *q, void *scale);
/* The screen of W's column blocks [b0, b1) (K a multiple of 8; threads may take disjoint ranges). */
void qw_q4_from_q8(qw_q4 *S, const qw_q8 *W, int b0, int b1);
/* The screen's values, plain C, the reference: C[m * ldc + n - n0] for m < M, n in [n0, n1). */
void qw_q4_screen_ref(float *C, int ldc, const qw_q8_act *A, const qw_q4 *S, int M, int n0, int n1);
/* The largest of v[0, n) (1 <= n <= 16), a NaN where one of them is: the only step from a block's
 * values to what every table's screen returns of it, so they return the same bits. */
float qw_q4_block_max(const float *v, int n);
/* The scalar table's screen entry (the reference's values, then their blocks' largest), and the
 * vector tables' where ng > QW_Q4_MAX_NG. */
void qw_q4_screen_scalar(float *T, int ldt, const qw_q8_act *A, const qw_q4 *S, int M, int n0, int n1);
/* The vector tables read the nibbles as they are (q4 + 8, unsigned) against the signed activations
 * qs = qa ^ 0x80 (the dot products' signed operand: broadcast from memory as they are) and take
 * 8 sum qa of the row's group off each sum: for rows [m, m + R) of A, sums[r * QW_Q4_MAX_NG + g]
 * = 8 * sum_{k in g, k < K} qa[m + r, k]. On the stack of a table's call, so ng <= QW_Q4_MAX_NG
 * (K <= 8192; a larger K takes the reference). */
#define QW_Q4_MAX_NG 128
void qw_q4_act_sums(int32_t *sums, const qw_q8_act *A, int m, int R, int K);
/* A vector table's screen: up to QW_Q4_ROWS rows at a time (their sums above, on the stack, and
 * their signed activations, R x K bytes malloc'ed once a call: without that memory, the scalar
 * path), each block of 16 columns through passes of up to mr rows, tiles[R - 1] (a tile of R rows:
 * R a constant in each; a block's later passes read it from L1, not DRAM), whose values
 * (C[r * ldc + j], j < nr: the block's columns) stay on the stack for their largest.
 * QW_Q4_SCREEN(name, tile, mr) makes a table's screen entry `name` from its tile(R, ...) this way,
 * mr 2, 4 or 8 (the rows its registers hold). */
#define QW_Q4_ROWS 8
typedef void (*qw_q4_tile)(float *C, int ldc, const int8_t *qs, int K, const float *sa, const int32_t *sums,
                           const qw_q4 *S, int b, int nr);
void qw_q4_screen_tiles(const qw_q4_tile *tiles, int mr, float *T, int ldt, const qw_q8_act *A, const qw_q4 *S,
                        int M, int n0, int n1);
#define QW_Q4_TILE_R(tile, R)                                                                                          \
    static void tile##_##R(float *C, int ldc, const int8_t *qs, int K, const float *sa, const int32_t *sums,          \
                           const qw_q4 *S, int b, int nr) {                                                            \
        tile(R, C, ldc, qs, K, sa, sums, S, b, nr);                                                                    \
    }
#define QW_Q4_TILES_2(tile) QW_Q4_TILE_R(tile, 1) QW_Q4_TILE_R(tile, 2)
#define QW_Q4_TILES_4(tile) QW_Q4_TILES_2(tile) QW_Q4_TILE_R(tile, 3) QW_Q4_TILE_R(tile, 4)
#define QW_Q4_TILES_8(tile)                                                                                            \
    QW_Q4_TILES_4(tile) QW_Q4_TILE_R(tile, 5) QW_Q4_TILE_R(tile, 6) QW_Q4_TILE_R(tile, 7) QW_Q4_TILE_R(tile, 8)
#define QW_Q4_LIST_2(tile) tile##_1, tile##_2
#define QW_Q4_LIST_4(tile) QW_Q4_LIST_2(tile), tile##_3, tile##_4
#define QW_Q4_LIST_8(tile) QW_Q4_LIST_4(tile), tile##_5, tile##_6, tile##_7, tile##_8
#define QW_Q4_SCREEN(name, tile, mr)                                                                                   \
    QW_Q4_TILES_##mr(tile) static void name(float *T, int ldt, const qw_q8_act *A, const qw_q4 *S, int M, int n0,     \
                                            int n1) {                                                                  \
        static const qw_q4_tile tiles[mr] = {QW_Q4_LIST_##mr(tile)};                                                   \
        qw_q4_screen_tiles(tiles, mr, T, ldt, A, S, M, n0, n1);                                                        \
    }
/* The nb blocks with the largest of a row's nblocks block maxima (a screen's T row), into blocks
 * (any order): their count, or 0 when one is a NaN or the largest is not finite (the caller takes
 * the whole product then). */
#define QW_Q4_MAX_BLOCKS 256
int qw_q4_top_blocks(const float *bmax, int nblocks, int nb, int *blocks); /* nb <= QW_Q4_MAX_BLOCKS */

/* Quantizes rows of A[M, K] (row stride lda) into q [M, Kp] and scale [M, ng]
 * as described above: the reference, and the scalar tables' entry. */
void qw_q8_quantize_rows(uint8_t *q, float *scale, const float *A, int lda, int M, int K, int Kp, int ng);
/* u[k] = round(x[k] * inv) in [-127, 127] (nearest even; a NaN to 0) + 128, for k < n: one group at a
 * given scale's inverse, the reference and the portable tables' entry. */
void qw_q8_quantize_group(uint8_t *u, const float *x, int n, float inv);
/* Bytes of the quantized activations of M rows of K (q, then scale, 64-byte aligned), and those
 * rows of A quantized for W's K into buf (at least qw_q8_act_bytes(M, W->K) bytes). */
size_t qw_q8_act_bytes(int M, int K);
qw_q8_act qw_q8_quantize(const qw_q8_kernels *k, void *buf, const float *A, int lda, int M, const qw_q8 *W);
/* The same arrays in buf, not filled: quantize rows into them with qw_q8_quantize_rows (rows are
 * independent, so threads may take disjoint ranges). */
qw_q8_act qw_q8_act_at(void *buf, int M, const qw_q8 *W);
float *qw_q8_act_scale(void *buf, int M, const qw_q8 *W); /* its scale array, writable */

#endif /* QWEN_QUANT_H */
