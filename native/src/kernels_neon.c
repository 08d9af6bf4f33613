/*
 * Kernels, AArch64 NEON variant (4 floats per vector) — for ARM CPUs
 * (Apple Silicon, Graviton, Ampere). Advanced SIMD is part of every AArch64
 * CPU, so this file needs no extra compile flags and no run-time probe.
 *
 * matmul, C = A @ W^T (+ bias), is the batch-invariant rows path
 * (matmul_rows) for every M: a register tile of a few weight rows x a few
 * rows of A, two 4-lane FMA chains per output element in one fixed order
 * (see the section below), so C[m, n] never depends on M, on the other rows
 * or on the column slice. The weight rows are walked front to back with a
 * software prefetch ahead (the memory-bound decode step); every weight is
 * widened once per tile of rows of A: simple, exact, and good enough for the
 * compute-bound encoder/prefill until a packed path like kernels_avx2.c's
 * is worth its code here.
 *
 * Weights are widened in the kernel: bf16 by a 16-bit left shift, f16 with
 * the AArch64 conversion instruction (fcvtl), f32 as is. A tail in K is
 * copied into a zero-padded vector, so nothing past a row is read.
 *
 * On x86 the tests compile this file over SIMDe's NEON emulation
 * (QW_NEON_SIMDE), so CI checks it without an ARM machine.
 */
#include "kernels.h"
#include "kernels_exp.h"
#include "kernels_gelu.h"

#ifdef QW_NEON_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#else
#include <arm_neon.h>
#endif

#include <string.h>

#ifdef QW_TEST_EMULATE_NEON /* as in kernels_x86.h: keep the emulated test's compile quick */
#define QW_INLINE static inline
#else
#define QW_INLINE static inline __attribute__((always_inline))
#endif
#define PF_AHEAD 512 /* prefetch distance along a weight row, in elements */

/* W[i .. i+4) widened to f32. */
QW_INLINE float32x4_t widen4(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)W + i), 16));
    case QW_F16: return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)W + i)));
    default: return vld1q_f32((const float *)W + i);
    }
}

QW_INLINE float load1(const void *W, qw_dtype dt, size_t i) {
    switch (dt) {
    case QW_BF16: return qw_bf16_to_f32(((const uint16_t *)W)[i]);
    case QW_F16: return qw_f16_to_f32(((const uint16_t *)W)[i]);
    default: return ((const float *)W)[i];
    }
}

QW_INLINE void prefetch_row(const void *W, qw_dtype dt, size_t i) {
    const size_t es = dt == QW_F32 ? 4 : 2;
    __builtin_prefetch((const char *)W + i * es, 0, 0);
}

/* ==== matmul: C[m, n] = bias[n] + W[n, :] . A[m, :], batch-invariant ==== */

/* One order of operations per output element, whatever the tile computing
 * it: the 4-wide blocks of k, b = 0, 1, ... (the last one zero-padded when 4
 * does not divide K), go to chain b mod 2 in increasing k, each chain an FMA
 * accumulator of 4 lanes starting at zero; then vaddvq(chain 0 + chain 1) +
 * bias[n]. Every (weight row, row of A) pair of a tile has its own two
 * chains, so the tile shape, M, the row's place in A and the column slice
 * change only which pairs share a loop, never an element's arithmetic.
 *
 * C[j, n + i] = the above for i < RW weight rows and j < RA rows of A
 * (2 RW RA accumulators; RW, RA constants, the loops unrolled). */
QW_INLINE void rows_tile(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                         const float *bias, int K, int n) {
    const size_t base = (size_t)n * (size_t)K;
    float32x4_t s[4][4][2]; /* the first RW x RA used */
    for (int i = 0; i < RW; i++)
        for (int j = 0; j < RA; j++) s[i][j][0] = s[i][j][1] = vdupq_n_f32(0.0f);
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        for (int i = 0; i < RW; i++) {
            const size_t wi = base + (size_t)i * K;
            if ((k & 63) == 0) prefetch_row(W, dt, wi + (size_t)k + PF_AHEAD);
            const float32x4_t w0 = widen4(W, dt, wi + (size_t)k), w1 = widen4(W, dt, wi + (size_t)k + 4);
            for (int j = 0; j < RA; j++) {
                const float *a = A + (size_t)j * lda + k;
                s[i][j][0] = vfmaq_f32(s[i][j][0], vld1q_f32(a), w0);
                s[i][j][1] = vfmaq_f32(s[i][j][1], vld1q_f32(a + 4), w1);
            }
        }
    }
    if (k + 4 <= K) { /* block k/4, even: chain 0 */
        for (int i = 0; i < RW; i++) {
            const float32x4_t w0 = widen4(W, dt, base + (size_t)i * K + (size_t)k);
            for (int j = 0; j < RA; j++) s[i][j][0] = vfmaq_f32(s[i][j][0], vld1q_f32(A + (size_t)j * lda + k), w0);
        }
        k += 4;
    }
    if (k < K) { /* block K/4, zero-padded (nothing past a row is read): chain (K/4) mod 2 */
        const int t = K - k;
        for (int i = 0; i < RW; i++) {
            float wt[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int q = 0; q < t; q++) wt[q] = load1(W, dt, base + (size_t)i * K + (size_t)(k + q));
            const float32x4_t w0 = vld1q_f32(wt);
            for (int j = 0; j < RA; j++) {
                float at[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                memcpy(at, A + (size_t)j * lda + k, (size_t)t * sizeof(float));
                if ((K >> 2) & 1) s[i][j][1] = vfmaq_f32(s[i][j][1], vld1q_f32(at), w0);
                else s[i][j][0] = vfmaq_f32(s[i][j][0], vld1q_f32(at), w0); /* constant indices: s in registers */
            }
        }
    }
    for (int j = 0; j < RA; j++)
        for (int i = 0; i < RW; i++)
            C[(size_t)j * ldc + n + i] = vaddvq_f32(vaddq_f32(s[i][j][0], s[i][j][1])) + (bias ? bias[n + i] : 0.0f);
}

/* All rows of A against weight rows [n, n + RW): A in tiles of RA rows, the
 * M mod RA rows left one tile of that height. */
QW_INLINE void rows_group(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                          const float *bias, int M, int K, int n) {
    int m = 0;
    for (; m + RA <= M; m += RA) rows_tile(RW, RA, C + (size_t)m * ldc, ldc, A + (size_t)m * lda, lda, W, dt, bias, K, n);
    float *c = C + (size_t)m * ldc;
    const float *a = A + (size_t)m * lda;
    switch (M - m) {
    case 0: break;
    case 1: rows_tile(RW, 1, c, ldc, a, lda, W, dt, bias, K, n); break;
    case 2: if (RA > 2) rows_tile(RW, 2, c, ldc, a, lda, W, dt, bias, K, n); break;
    default: if (RA > 3) rows_tile(RW, 3, c, ldc, a, lda, W, dt, bias, K, n); break;
    }
}

/* Weight rows [n0, n1) in groups of RW, the last n1 - n0 mod RW one at a time. */
QW_INLINE void rows_cols(int RW, int RA, float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt,
                         const float *bias, int M, int K, int n0, int n1) {
    int n = n0;
    for (; n + RW <= n1; n += RW) rows_group(RW, RA, C, ldc, A, lda, W, dt, bias, M, K, n);
    for (; n < n1; n++) rows_group(1, RA, C, ldc, A, lda, W, dt, bias, M, K, n);
}

/* Tiles by M (32 registers; A is loaded into registers, no memory operands
 * here): one row of A meets one weight row at a time (one sequential stream
 * per thread, as the previous matvec here and as measured best on x86; not
 * measured on ARM); 2 rows, 4 weight rows; from 3 rows on 2 x 4 (16
 * accumulators, 4 widened weight vectors, 8 of A). */
static void matmul_rows_neon(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                             const float *bias, int M, int K, int n0, int n1) {
    if (M <= 0 || n1 <= n0) return;
    if (K <= 0) { /* empty sums */
        for (int m = 0; m < M; m++)
            for (int n = n0; n < n1; n++) C[(size_t)m * ldc + n] = bias ? bias[n] : 0.0f;
        return;
    }
#define QW_NEON_ROWS(DT)                                                                    \
    switch (M) {                                                                            \
    case 1: rows_cols(1, 1, C, ldc, A, lda, W, DT, bias, M, K, n0, n1); break;              \
    case 2: rows_cols(4, 2, C, ldc, A, lda, W, DT, bias, M, K, n0, n1); break;              \
    default: rows_cols(2, 4, C, ldc, A, lda, W, DT, bias, M, K, n0, n1); break;             \
    }
    switch (wt) { /* one specialised copy per dtype */
    case QW_BF16: QW_NEON_ROWS(QW_BF16); break;
    case QW_F16: QW_NEON_ROWS(QW_F16); break;
    default: QW_NEON_ROWS(QW_F32); break;
    }
#undef QW_NEON_ROWS
}

/* No packed path yet: matmul is the rows path for every M. */
static void matmul_neon(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                        const float *bias, int M, int K, int n0, int n1) {
    matmul_rows_neon(C, ldc, A, lda, W, wt, bias, M, K, n0, n1);
}

static float dot_neon(const float *a, const float *b, int n) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_neon(float *y, float alpha, const float *x, int n) {
    const float32x4_t va = vdupq_n_f32(alpha);
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
    for (; i < n; i++) y[i] += alpha * x[i];
}

/* Lanes i .. i + 7 of a row, as two vectors: f32 (x + i), or a QW_KV8 row of n values widened in
 * registers as to_f32 widens it (q * its block's scale, qw_kv8_to_f32), i a multiple of 8. */
QW_INLINE void row8(float32x4_t v[2], const void *x, int kv8, int n, int i) {
    if (!kv8) {
        v[0] = vld1q_f32((const float *)x + i);
        v[1] = vld1q_f32((const float *)x + i + 4);
        return;
    }
    const int16x8_t w = vmovl_s8(vld1_s8((const int8_t *)x + i));
    const float scale = qw_kv8_scale(x, n, i);
    v[0] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), scale);
    v[1] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))), scale);
}

/* out[r] = dot_neon(q, row r, n), bitwise, for R (1..4) rows side by side, row r at rows + r * ldb
 * bytes (f32, or QW_KV8 rows widened in registers; their n is a multiple of 32, so no tail): each
 * row its own two chains (8 accumulators), fed as dot_neon feeds them, then its own vaddvq_f32 and
 * scalar tail. (A pairwise vpaddq_f32 tree for four rows would give the same bits on AArch64, but
 * SIMDe's vaddvq_f32 sums in another order, so the emulated test could not hold it to dot_neon.) */
QW_INLINE void dot_tile(int R, int kv8, float *out, const float *q, const char *rows, size_t ldb, int n) {
    float32x4_t s[4][2];
    const char *x[4];
    for (int r = 0; r < R; r++) {
        x[r] = rows + (size_t)r * ldb;
        s[r][0] = s[r][1] = vdupq_n_f32(0.0f);
    }
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t q0 = vld1q_f32(q + i), q1 = vld1q_f32(q + i + 4);
        for (int r = 0; r < R; r++) {
            float32x4_t v[2];
            row8(v, x[r], kv8, n, i);
            s[r][0] = vfmaq_f32(s[r][0], q0, v[0]);
            s[r][1] = vfmaq_f32(s[r][1], q1, v[1]);
        }
    }
    for (int r = 0; r < R; r++) {
        float v = vaddvq_f32(vaddq_f32(s[r][0], s[r][1]));
        for (int k = i; k < n; k++) v += q[k] * ((const float *)(const void *)x[r])[k];
        out[r] = v;
    }
}

QW_INLINE void dot_rows_any(int kv8, float *out, const float *q, const char *rows, size_t ldb, int n_rows, int n) {
    int r = 0;
    for (; r + 4 <= n_rows; r += 4) dot_tile(4, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n);
    for (; r < n_rows; r++) dot_tile(1, kv8, out + r, q, rows + (size_t)r * ldb, ldb, n);
}

static void dot_rows_neon(float *out, const float *q, const float *rows, int ld, int n_rows, int n) {
    dot_rows_any(0, out, q, (const char *)rows, (size_t)ld * sizeof(float), n_rows, n);
}

/* dot_rows over QW_KV8 rows: bitwise dot_rows over their to_f32 widening, one head at a time. */
static void kv8_dot_rows_neon(float *out, int ldo, const float *q, int ldq, int heads, const void *rows, int n_rows,
                              int n) {
    for (int h = 0; h < heads; h++)
        dot_rows_any(1, out + (size_t)h * ldo, q + (size_t)h * ldq, (const char *)rows, qw_kv8_row_bytes(n), n_rows, n);
}

/* y[0 : 4V) += alpha[r] * rows[r][i0 : i0 + 4V) for every row r in order (row r at rows + r * ldb
 * bytes: f32, or a QW_KV8 row of n values widened in registers, V even), the V vectors of y in
 * registers throughout; per lane axpy_neon's FMA. */
QW_INLINE void axpy_block(int V, int kv8, float *y, const float *alpha, const char *rows, size_t ldb, int n_rows,
                          int n, int i0) {
    float32x4_t v[16];
    for (int j = 0; j < V; j++) v[j] = vld1q_f32(y + 4 * j);
    for (int r = 0; r < n_rows; r++) {
        const float32x4_t a = vdupq_n_f32(alpha[r]);
        const char *x = rows + (size_t)r * ldb;
        if (kv8) {
            for (int j = 0; j < V; j += 2) {
                float32x4_t w[2];
                row8(w, x, 1, n, i0 + 4 * j);
                v[j] = vfmaq_f32(v[j], a, w[0]);
                v[j + 1] = vfmaq_f32(v[j + 1], a, w[1]);
            }
        } else {
            for (int j = 0; j < V; j++) v[j] = vfmaq_f32(v[j], a, vld1q_f32((const float *)(const void *)x + i0 + 4 * j));
        }
    }
    for (int j = 0; j < V; j++) vst1q_f32(y + 4 * j, v[j]);
}

/* axpy_neon(y, alpha[r], row r, n) for r in order, bitwise: blocks of 64 columns (16 of the 32
 * registers), then of 16, then of 4, then the scalar tail of axpy_neon, each element across all
 * rows (a QW_KV8 row's n, a multiple of 32, ends in blocks of 16). */
QW_INLINE void axpy_rows_any(int kv8, float *y, const float *alpha, const char *rows, size_t ldb, int n_rows, int n) {
    if (n_rows <= 0) return;
    int i = 0;
    for (; i + 64 <= n; i += 64) axpy_block(16, kv8, y + i, alpha, rows, ldb, n_rows, n, i);
    for (; i + 16 <= n; i += 16) axpy_block(4, kv8, y + i, alpha, rows, ldb, n_rows, n, i);
    for (; i + 4 <= n; i += 4) axpy_block(1, 0, y + i, alpha, rows, ldb, n_rows, n, i);
    for (; i < n; i++) {
        float v = y[i];
        for (int r = 0; r < n_rows; r++) v += alpha[r] * ((const float *)(const void *)(rows + (size_t)r * ldb))[i];
        y[i] = v;
    }
}

static void axpy_rows_neon(float *y, const float *alpha, const float *rows, int ld, int n_rows, int n) {
    axpy_rows_any(0, y, alpha, (const char *)rows, (size_t)ld * sizeof(float), n_rows, n);
}

/* axpy_rows over QW_KV8 rows: bitwise axpy_rows over their to_f32 widening, one head at a time. */
static void kv8_axpy_rows_neon(float *y, int ldy, const float *alpha, int lda, int heads, const void *rows,
                               int n_rows, int n) {
    for (int h = 0; h < heads; h++)
        axpy_rows_any(1, y + (size_t)h * ldy, alpha + (size_t)h * lda, (const char *)rows, qw_kv8_row_bytes(n), n_rows,
                      n);
}

static void to_f32_neon(float *dst, const void *src, qw_dtype dt, int n) {
    if (dt == QW_KV8) { /* the compiler's vectors */
        qw_kv8_to_f32(dst, src, n);
        return;
    }
    if (dt == QW_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, widen4(src, dt, (size_t)i));
    for (; i < n; i++) dst[i] = load1(src, dt, (size_t)i);
}

static void gelu_neon(float *x, int n) { qw_gelu_erf_row(x, n); }
static void softmax_neon(float *x, int n) { qw_softmax_row(x, n); }
static void swiglu_neon(float *g, const float *u, int n) { qw_swiglu_row(g, u, n); }

const qw_kernels qw_kernels_neon = {
    .name = "neon",
    .matmul = matmul_neon,
    .matmul_rows = matmul_rows_neon,
    .dot = dot_neon,
    .axpy = axpy_neon,
    .dot_rows = dot_rows_neon,
    .axpy_rows = axpy_rows_neon,
    .kv8_dot_rows = kv8_dot_rows_neon,
    .kv8_axpy_rows = kv8_axpy_rows_neon,
    .to_f32 = to_f32_neon,
    .gelu = gelu_neon,
    .softmax = softmax_neon,
    .swiglu = swiglu_neon,
    .kv8_quantize = qw_kv8_quantize,
};
