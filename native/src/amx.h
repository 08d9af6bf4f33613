/*
 * AMX-BF16 GEMM — C = bf16(A) @ W^T on Intel AMX tiles (Sapphire Rapids and later), x86-64 only.
 *
 * W is packed once (qw_amx_pack, any CPU) into the B-operand layout of
 * TDPBF16PS; qw_amx_matmul then rounds A to bf16 and multiplies on the tile
 * unit, accumulating in f32. Like the opt-in avx512bf16 set it rounds the
 * activations to bf16, so it is held to its own reference: a double sum of
 * the same bf16-rounded inputs (native/tests/test_amx.c). kernels_amx.c
 * explains the blocking and the packed layout; amx_emulate.h is the portable
 * model of the tile instructions the tests run it on.
 */
#ifndef QWEN_AMX_H
#define QWEN_AMX_H

#include "kernels.h"

#include <stddef.h>


/* 1 when the CPU has AMX-TILE + AMX-BF16 (CPUID.(7,0):EDX bits 24, 22), the OS
 * enables tile state in XCR0 (bits 17 and 18, read with xgetbv), and
 * arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18) succeeded (Linux >=
 * 5.16; ARCH_REQ_XCOMP_PERM = 0x1023; the permission is per process). Probed
 * once; thread-safe (pthread_once). 0 otherwise; never crashes on CPUs or
 * kernels without it. qw_amx_matmul may only be called after it returned 1. */
#if defined(QWEN_HAVE_AMX) || defined(QW_AMX_EMULATE) || defined(QW_TEST_AMX_NATIVE)
int qw_amx_available(void);
/* qw_amx_available() and AMX-INT8 (CPUID.(7,0):EDX bit 25): the int8 table qw_q8_amx may run. */
int qw_amx_int8_available(void);

/* Bytes of the packed copy of W[N, K]: N rounded up to 16 x K rounded up to 32, bf16. */
size_t qw_amx_packed_size(int N, int K);

/* Packs W[N, K] (row stride K; dtype QW_BF16, QW_F16 or QW_F32 - f16/f32
 * rounded to bf16 nearest-even, as qw_f32_to_bf16) into the tile layout that
 * _tile_dpbf16ps takes as its B operand (pairs of k interleaved: rows of 16
 * columns x 2 bf16), padded with zeros to whole tiles in N and K:
 *   dst[nt][kt][q][j][e] = bf16(W[16 nt + j, 32 kt + 2 q + e])  (0 past N or K)
 *   nt < ceil(N/16), kt < ceil(K/32), q < 16, j < 16, e < 2; one 1 KiB tile per (nt, kt).
 * dst (qw_amx_packed_size bytes) is 64-byte aligned. Pure function, no CPU
 * requirement (runs anywhere). Another dtype packs zeros. */
void qw_amx_pack(void *dst, const void *W, qw_dtype wt, int N, int K);

/* The same layout for W[n, k] = src[k * ld + n], n < N, k < K: a bf16 matrix stored transposed
 * (attention's values, [keys][head dim], as the B operand of P V). */
void qw_amx_pack_bf16_t(void *dst, const uint16_t *src, int ld, int N, int K);

/* An attention's keys and values, each [T][hd] bf16 rows: qw_amx_pack(dst, K, QW_BF16, T, hd) and
 * qw_amx_pack_bf16_t(dst, V, hd, hd, T), the same bytes, with AVX-512 (where AMX runs). */
void qw_amx_pack_keys(void *dst, const uint16_t *K, int T, int hd);
void qw_amx_pack_values(void *dst, const uint16_t *V, int T, int hd);
/* T rows of a QW_KV8 cache (hd values each, a multiple of 16) as bf16 rows [T][hd]: each value
 * (float) q * scale, rounded as qw_f32_to_bf16 (what to_f32 and qw_amx_round_rows gave). */
void qw_amx_kv8_bf16(uint16_t *dst, const void *rows, int T, int hd);

/* C[m, n] = sum_k bf16(A[m, k]) * W[n, k] (+ bias[n])  for m < M (any M >= 1), n in [n0, n1)
 *   A[M, K] f32 (row stride lda), rounded to bf16 nearest-even inside;
 *   packed: qw_amx_pack of W[N, K]; C[M, N] f32 (row stride ldc); bias[N] f32 or NULL.
 * Each element is the f32 chain of TDPBF16PS over k = 0, 1, ..., K-1 from
 * zero (products exact, every add rounded to nearest even, denormal inputs
 * and results flushed to zero), then + bias[n]. n0 is a multiple of 16; n1
 * is a multiple of 16 or N. Only [0, M) x [n0, n1) of C is written; nothing
 * outside A's rows, C's slice or the slice's tiles of packed is touched.
 * Safe from several threads at once on disjoint slices (the tile state is
 * per thread: each call loads its tile config and releases it). */
void qw_amx_matmul(float *C, int ldc, const float *A, int lda, const void *packed, const float *bias, int M, int N,
                   int K, int n0, int n1);
/* A's rows rounded to bf16 as qw_amx_matmul rounds them: Ab[m, k] = bf16(A[m, k]) for k < K, zeros to
 * Kp = K rounded up to 32 (row stride Kp). A product's slices then share one rounding of A. */
void qw_amx_round_rows(uint16_t *Ab, const float *A, int lda, int M, int K);
/* qw_amx_matmul on A rounded by qw_amx_round_rows: the same bits. */
void qw_amx_matmul_rounded(float *C, int ldc, const uint16_t *Ab, const void *packed, const float *bias, int M, int N,
                           int K, int n0, int n1);
/* qw_amx_matmul_rounded with its epilogue: Cb[m, n] = bf16(act(C[m, n])) (nearest even, as
 * qw_amx_round_rows rounds; act in place on the f32 results, or NULL) for m < M, n in [n0, n1), row
 * stride ldcb: the same bits as the product, act over the results, then qw_amx_round_rows; so a
 * product whose output is only the rounded input of the next one (the encoder's fc1 -> GELU -> fc2)
 * writes that input directly. */
void qw_amx_matmul_act_bf16(uint16_t *Cb, int ldcb, const uint16_t *Ab, const void *packed, const float *bias,
                            void (*act)(float *x, int n), int M, int N, int K, int n0, int n1);
/* The stem's convolution (qw_conv3x3, kernels.h) on the tiles, packed = qw_amx_pack of W[Cout][9 Cin]:
 * each element the chain qw_amx_matmul forms over its im2col row, so the same bits as im2col +
 * qw_amx_matmul + act (+ qw_amx_round_rows' rounding). Implicit A needs Cin % 32 == 0 and
 * Fo % 16 == 0 (a tile's 16 rows are one time step's frequencies); explicit rows otherwise. */
void qw_amx_conv3x3(const qw_conv3x3 *c, int n0, int n1);
/* 1 when a small product with partial tiles (qw_amx_pack + qw_amx_matmul) agrees with a
 * double-precision sum; qwen_load runs it once before it puts a model on the tiles, and keeps
 * the other kernels if it fails. Only after qw_amx_available() returned 1. */
int qw_amx_selfcheck(void);
#else /* a build without kernels_amx.c (AArch64, portable): AMX is never available */
static inline int qw_amx_available(void) { return 0; }
static inline int qw_amx_int8_available(void) { return 0; }
static inline size_t qw_amx_packed_size(int N, int K) { return (size_t)N * (size_t)K * 0; }
static inline void qw_amx_pack(void *dst, const void *W, qw_dtype wt, int N, int K) {
    (void)dst, (void)W, (void)wt, (void)N, (void)K;
}
static inline void qw_amx_pack_bf16_t(void *dst, const uint16_t *src, int ld, int N, int K) {
    (void)dst, (void)src, (void)ld, (void)N, (void)K;
}
static inline void qw_amx_matmul(float *C, int ldc, const float *A, int lda, const void *packed, const float *bias,
                                 int M, int N, int K, int n0, int n1) {
    (void)C, (void)ldc, (void)A, (void)lda, (void)packed, (void)bias, (void)M, (void)N, (void)K, (void)n0, (void)n1;
}
static inline void qw_amx_round_rows(uint16_t *Ab, const float *A, int lda, int M, int K) {
    (void)Ab, (void)A, (void)lda, (void)M, (void)K;
}
static inline void qw_amx_matmul_rounded(float *C, int ldc, const uint16_t *Ab, const void *packed, const float *bias,
                                         int M, int N, int K, int n0, int n1) {
    (void)C, (void)ldc, (void)Ab, (void)packed, (void)bias, (void)M, (void)N, (void)K, (void)n0, (void)n1;
}
static inline void qw_amx_matmul_act_bf16(uint16_t *Cb, int ldcb, const uint16_t *Ab, const void *packed,
                                          const float *bias, void (*act)(float *x, int n), int M, int N, int K,
                                          int n0, int n1) {
    (void)Cb, (void)ldcb, (void)Ab, (void)packed, (void)bias, (void)act, (void)M, (void)N, (void)K, (void)n0, (void)n1;
}
static inline void qw_amx_conv3x3(const qw_conv3x3 *c, int n0, int n1) { (void)c, (void)n0, (void)n1; }
static inline void qw_amx_pack_keys(void *dst, const uint16_t *K, int T, int hd) { (void)dst, (void)K, (void)T, (void)hd; }
static inline void qw_amx_pack_values(void *dst, const uint16_t *V, int T, int hd) {
    (void)dst, (void)V, (void)T, (void)hd;
}
static inline void qw_amx_kv8_bf16(uint16_t *dst, const void *rows, int T, int hd) {
    (void)dst, (void)rows, (void)T, (void)hd;
}
static inline int qw_amx_selfcheck(void) { return 0; }
#endif

#endif /* QWEN_AMX_H */
