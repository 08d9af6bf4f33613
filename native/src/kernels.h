/*
 * Kernels — the hot loops, one table per instruction set.
 *
 * Every variant (scalar, AVX2+FMA+F16C, AVX-512, NEON) implements the same maths;
 * the tests in native/tests check each against the scalar table. The table is
 * chosen at run time (qw_kernels_for), never with -march=native, so one
 * binary runs on any x86-64 (and the scalar table anywhere).
 *
 * Weights stay in the checkpoint's dtype (bf16, f16 or f32, memory-mapped)
 * and are widened to f32 inside the kernels; activations are f32.
 */
#ifndef QWEN_KERNELS_H
#define QWEN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* QW_Q8: int8 weights packed at load (quant.h); QW_AMX: bf16 weights packed at load into
 * AMX tiles (amx.h). Only qw_matmul_n (ops.c) takes them, never a qw_kernels entry. */
typedef enum { QW_F32 = 0, QW_BF16 = 1, QW_F16 = 2, QW_Q8 = 3, QW_AMX = 4, QW_BF16P = 5, QW_KV8 = 6 } qw_dtype;
/* QW_KV8: precision FAST's KV cache row (qw_kv8_quantize): n int8 values (n a multiple of
 * QW_KV8_BLOCK), then one f32 scale per block of QW_KV8_BLOCK; value i is (float)q[i] * scale[i / 32],
 * one product (every table's to_f32 gives the same bits). Only to_f32 takes it. */
#define QW_KV8_BLOCK 32
static inline size_t qw_kv8_row_bytes(int n) { return (size_t)n + (size_t)(n / QW_KV8_BLOCK) * sizeof(float); }
/* Bytes of a KV cache row of n values of dt (QW_F32, QW_BF16 or QW_KV8). */
static inline size_t qw_kv_row_bytes(qw_dtype dt, int n) {
    return dt == QW_KV8 ? qw_kv8_row_bytes(n) : (size_t)n * (dt == QW_BF16 ? 2 : 4);
}
/* The scale of value i's block in a QW_KV8 row of n values (after the values: unaligned, so copied). */
static inline float qw_kv8_scale(const void *row, int n, int i) {
    float s;
    __builtin_memcpy(&s, (const char *)row + n + (size_t)(i / QW_KV8_BLOCK) * sizeof(float), sizeof(s));
    return s;
}
static inline void qw_kv8_set_scale(void *row, int n, int i, float s) {
    __builtin_memcpy((char *)row + n + (size_t)(i / QW_KV8_BLOCK) * sizeof(float), &s, sizeof(s));
}

/* Cache rows ahead of the one being read whose bytes are prefetched: a decode step reads
 * B x layers x KV heads short runs of keys and values (tens of KB each), too short for the
 * hardware prefetcher to get ahead of. 32 (8 KB of bf16 rows at hd 128): batch-8 step 0.94-0.97x
 * with 5 s clips, 0.88x with 30 s clips, batch 1 1.01x (Zen 5); 8 and 64 gained nothing; the int8
 * rows in the tables' kv8 kernels likewise (a batch-8 step's attention 7.8-8.0 -> 6.3-6.5 ms). */
#define QW_KV_AHEAD 32
/* The first `bytes` of row r + QW_KV_AHEAD of rows (stride ldb bytes) prefetched; a prefetch never
 * faults, so past a run's end is harmless. */
static inline void qw_prefetch_kv_row(const char *rows, size_t ldb, int r, size_t bytes) {
    const char *p = rows + (size_t)(r + QW_KV_AHEAD) * ldb;
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o);
}

typedef struct {
    const char *name;
    /* C[m, n] = sum_k A[m, k] * W[n, k] (+ bias[n])  for m in [0, M), n in [n0, n1)
     *   A[M, K] f32 (row stride lda), W[N, K] in dtype wt (row stride K),
     *   C[M, N] f32 (row stride ldc), bias[N] f32 or NULL.
     * C = A @ W^T: one call computes a column slice [n0, n1) so that threads
     * can split the output features; M = 1 is the decode matvec. */
    void (*matmul)(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                   const float *bias, int M, int K, int n0, int n1);
    /* C[m, n] = sum_k A[m, k] * W[n, k] (+ bias[n]), same arguments as matmul, for any M >= 1, with
     * every element computed exactly as M = 1 computes it: C[m, n] depends only on A[m, :], W[n, :],
     * bias[n], K and wt, bitwise - never on M, on other rows, on m, or on [n0, n1). Decode steps of
     * many sequences batched in one call use it, so each sequence gets the result it gets alone.
     * Never takes the packed path. */
    void (*matmul_rows)(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                        const float *bias, int M, int K, int n0, int n1);
    /* sum_i a[i] * b[i] */
    float (*dot)(const float *a, const float *b, int n);
    /* y[i] += alpha * x[i] */
    void (*axpy)(float *y, float alpha, const float *x, int n);
    /* out[r] = sum_i q[i] * rows[r * ld + i]  for r in [0, n_rows), i in [0, n)
     *   q[n], rows[n_rows, n] (row stride ld), out[n_rows].
     * Each out[r] is bitwise this table's dot(q, rows + r * ld, n) (the same accumulators, order
     * and horizontal sum), a few rows at a time in one call: the scores of one attention query. */
    void (*dot_rows)(float *out, const float *q, const float *rows, int ld, int n_rows, int n);
    /* y[i] += alpha[r] * rows[r * ld + i]  for r = 0, 1, .., n_rows - 1 in turn, i in [0, n)
     *   y[n], alpha[n_rows], rows[n_rows, n] (row stride ld).
     * Bitwise n_rows calls of this table's axpy(y, alpha[r], rows + r * ld, n) in order of r, with
     * y held in registers across the rows (blocks of n): an attention query's P V. */
    void (*axpy_rows)(float *y, const float *alpha, const float *rows, int ld, int n_rows, int n);
    /* dot_rows and axpy_rows over QW_KV8 rows of n values (n a multiple of QW_KV8_BLOCK, row r at
     * rows + r * qw_kv8_row_bytes(n)), widened in registers, for `heads` query heads that share the
     * rows (a KV head's group): head h's q at q + h * ldq and scores at out + h * ldo; its y at
     * y + h * ldy and alpha at alpha + h * lda. Each head bitwise dot_rows / axpy_rows over the
     * rows' to_f32 widening, without writing it (a decode step's attention over FAST's cache); a
     * table may widen a row once for several heads. NULL in a table without them: the caller
     * widens through to_f32. */
    void (*kv8_dot_rows)(float *out, int ldo, const float *q, int ldq, int heads, const void *rows, int n_rows, int n);
    void (*kv8_axpy_rows)(float *y, int ldy, const float *alpha, int lda, int heads, const void *rows, int n_rows,
                          int n);
    /* dst[i] = (float)src[i] for a row of weights (embedding lookup), or of a QW_KV8 cache row. */
    void (*to_f32)(float *dst, const void *src, qw_dtype dt, int n);
    /* x[i] = GELU(x[i]) with erf (kernels_gelu.h: within 4.2e-7 of the exact erf) */
    void (*gelu)(float *x, int n);
    /* x = softmax(x) of one row in place (kernels_exp.h: exp within 2 ulp of libm's) */
    void (*softmax)(float *x, int n);
    /* g[i] = SiLU(g[i]) * u[i] (kernels_exp.h) */
    void (*swiglu)(float *g, const float *u, int n);
    /* row = the QW_KV8 row of x[0 : n) (n a multiple of 32), bit for bit qw_kv8_quantize */
    void (*kv8_quantize)(void *row, const float *x, int n);
} qw_kernels;

/* QWEN_NO_SIMD builds the portable scalar library only; otherwise the
 * architecture's SIMD tables are built and chosen at run time. */
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(QWEN_NO_SIMD)
#define QW_X86 1
#endif
#if (defined(__aarch64__) || defined(_M_ARM64)) && !defined(QWEN_NO_SIMD)
#define QW_ARM 1
#endif

extern const qw_kernels qw_kernels_scalar;
extern const qw_kernels qw_kernels_avx2;   /* defined only on x86-64 builds */
extern const qw_kernels qw_kernels_avx512; /* defined only on x86-64 builds */
extern const qw_kernels qw_kernels_avx512bf16; /* opt-in: bf16 activations in the GEMM (x86-64 only) */
extern const qw_kernels qw_kernels_neon;   /* defined only on AArch64 builds */

/* A 3x3 convolution of stride 2 with zero padding 1 (the encoder's conv stem) on bf16 inputs, with
 * its activation and the layout of the next convolution's input in the epilogue: the AMX kernel's
 * (qw_amx_conv3x3, amx.h) and the BF16 set's (qw_bf16p_conv3x3, below).
 *   Implicit (rows NULL): no im2col, each row's A read from the input as it is;
 *     in: bf16 [Ti + 2][Fi + 2][Cin], the input time-major and channel-last with a zero border.
 *   Explicit: rows = the im2col in bf16 (row m's 9 Cin values, zeros to a multiple of 32), for
 *     inputs of few channels (conv1); in unused.
 *   packed: W[Cout][3][3][Cin] (K = 9 Cin, k = (3 ky + kx) Cin + c) packed for the kernel; bias[Cout]
 *   or NULL; output row m = to Fo + fo, m < To Fo (To = (Ti + 1) / 2, Fo = (Fi + 1) / 2).
 * out(m)[n] = act(chain + bias[n]) for n in [n0, n1), where chain is the kernel's product over the
 * row's im2col (input at time 2 to - 1 + kx, frequency 2 fo - 1 + ky, zero outside): the same bits
 * as im2col + that product + act. Written as f32 to out_f32 + m * ldo, or rounded to bf16 (nearest
 * even) to out_bf16 + ((to + 1) (Fo + 2) + fo + 1) * ldo: the next convolution's padded input.
 * n0 a multiple of 16. Safe from several threads on disjoint column slices. */
typedef struct {
    const uint16_t *in;
    const uint16_t *rows;
    int Ti, Fi, Cin;
    const void *packed;
    const float *bias;
    int Cout;
    void (*act)(float *x, int n); /* in place on the f32 results, or NULL */
    float *out_f32;               /* or NULL: out_bf16 */
    uint16_t *out_bf16;
    int ldo;
} qw_conv3x3;

#ifdef QW_X86
/* bf16 weights packed once for the BF16 set's dot product (QW_BF16P, kernels_avx512bf16.c):
 * bytes for W [N, K]; the panels [p0, p1) of 32 rows packed (disjoint ranges may run on several
 * threads); C = bf16(A) @ W^T for columns [n0, n1) (n0 a multiple of 16), bit for bit what
 * qw_kernels_avx512bf16.matmul gives for M >= 8, and the same tiles for M < 8. Only on CPUs
 * with AVX512_BF16. */
size_t qw_bf16p_size(int N, int K);
void qw_bf16p_pack(void *P, const uint16_t *W, int N, int K, int p0, int p1);
/* qw_bf16p_pack(P, W, N, K, 0, all) of W = V^T, V [K][N] bf16 rows (an attention's values: K keys,
 * N = head size), the same bytes without the transposed copy. */
void qw_bf16p_pack_t(void *P, const uint16_t *V, int K, int N);
void qw_bf16p_matmul(float *C, int ldc, const float *A, int lda, const void *P, const float *bias, int M, int K,
                     int n0, int n1);
/* A's rows rounded to bf16 once for the products below: Ab[m, k] = bf16(A[m, k]) for k < K, zeros
 * to Kp = K rounded up to 32 (row stride Kp), as qw_kernels_avx512bf16.matmul rounds them. */
void qw_bf16p_round_rows(uint16_t *Ab, const float *A, int lda, int M, int K);
/* qw_bf16p_matmul on A rounded by qw_bf16p_round_rows: the same bits. */
void qw_bf16p_matmul_rounded(float *C, int ldc, const uint16_t *Ab, const void *P, const float *bias, int M, int K,
                             int n0, int n1);
/* The same with its epilogue: Cb[m, n] = bf16(act(C[m, n])) (act in place on the f32 results, or
 * NULL), row stride ldcb: the product, act over it, then qw_bf16p_round_rows' rounding, bit for bit. */
void qw_bf16p_matmul_act_bf16(uint16_t *Cb, int ldcb, const uint16_t *Ab, const void *P, const float *bias,
                              void (*act)(float *x, int n), int M, int K, int n0, int n1);
/* qw_conv3x3 on weights packed so (N = Cout, K = 9 Cin): the same bits as im2col + qw_bf16p_matmul
 * + act (+ rounding to bf16). Implicit A needs Cin even (a tap's channels are whole pairs of k). */
void qw_bf16p_conv3x3(const qw_conv3x3 *c, int n0, int n1);
#endif

/* Resolves an ISA request (see qwen_isa in qwen.h) to a table: AUTO picks the
 * best the CPU supports; asking for one the CPU lacks returns NULL. */
const qw_kernels *qw_kernels_for(int isa, int *resolved_isa);
int qw_best_isa(void);

/* Scalar conversions shared by all variants. */
static inline float qw_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
float qw_f16_to_f32(uint16_t h);
/* Round to nearest even; a NaN stays a (quiet) NaN. Branch-free, so that loops over it vectorize. */
static inline uint16_t qw_f32_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    const uint32_t nan = (v.u & 0x7fffffffu) > 0x7f800000u;
    const uint32_t rounded = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
    return (uint16_t)(nan ? (v.u >> 16) | 0x40u : rounded);
}

/* One QW_KV8 row from n floats: per block of 32, scale = max |x| / 127 and q = x * (127 / max |x|)
 * rounded to nearest (halves away from zero), in [-127, 127], a NaN to 0; an all-zero block gets
 * scale 0. Plain arithmetic (no rintf: a libm call per value where SSE4.1 is not assumed), so the
 * compiler vectorizes it: 5% of a prefill's time with the call. */
static inline void qw_kv8_quantize(void *row, const float *x, int n) {
    int8_t *q = (int8_t *)row;
    for (int b = 0; b < n; b += QW_KV8_BLOCK) {
        float amax = 0.0f;
        for (int i = b; i < b + QW_KV8_BLOCK; i++) amax = __builtin_fabsf(x[i]) > amax ? __builtin_fabsf(x[i]) : amax;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f, scale = amax / 127.0f;
        for (int i = b; i < b + QW_KV8_BLOCK; i++) {
            float v = x[i] * inv;
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            v = v == v ? v : 0.0f;
            q[i] = (int8_t)(int)(v + (v < 0.0f ? -0.5f : 0.5f));
        }
        qw_kv8_set_scale(row, n, b, scale);
    }
}

/* (float)q[i] * scale[i / 32] of a QW_KV8 row, i < n: the tables' to_f32 in C. */
static inline void qw_kv8_to_f32(float *dst, const void *row, int n) {
    const int8_t *q = (const int8_t *)row;
    for (int b = 0; b < n; b += QW_KV8_BLOCK) {
        const float scale = qw_kv8_scale(row, n, b);
        for (int i = b; i < b + QW_KV8_BLOCK; i++) dst[i] = (float)q[i] * scale;
    }
}

/* The greedy token: the first index of the largest x[i] (NaN never chosen past x[0]; x[0] NaN -> 0;
 * -0 and +0 equal), what the one-chain scan `if (x[i] > x[best]) best = i` gives. Eight lanes (i mod 8)
 * each keep their own first maximum, then the lanes meet (larger value, or equal and earlier): no chain
 * through all n compares. 3.3x the one-chain scan's speed over a 151936-word vocabulary (0.37 against
 * 1.2 ms for 8 rows on one core, Intel Xeon with AMX); the batch's rows across the pool. */
static inline int32_t qw_argmax_row(const float *x, int n) {
    enum { L = 8 };
    if (n <= 0) return 0;
    float m[L];
    int b[L];
    for (int j = 0; j < L; j++) m[j] = -__builtin_inff(), b[j] = -1;
    int i = 0;
    for (; i + L <= n; i += L)
        for (int j = 0; j < L; j++)
            if (x[i + j] > m[j]) m[j] = x[i + j], b[j] = i + j;
    for (int j = 0; j < L && i + j < n; j++)
        if (x[i + j] > m[j]) m[j] = x[i + j], b[j] = i + j;
    int32_t best = 0; /* x[0] NaN: no lane beats it, 0 */
    float v = x[0];
    for (int j = 0; j < L; j++)
        if (b[j] >= 0 && (m[j] > v || (m[j] == v && b[j] < best))) v = m[j], best = b[j];
    return best;
}

#endif /* QWEN_KERNELS_H */
