/*
 * Kernels, AArch64 NEON variant (4 floats per vector) — for ARM CPUs
 * (Apple Silicon, Graviton, Ampere). Advanced SIMD is part of every AArch64
 * CPU, so this file needs no extra compile flags and no run-time probe.
 *
 * matmul, C = A @ W^T (+ bias), walks the weight rows front to back (one
 * sequential stream per thread, with a software prefetch ahead, which is
 * what the memory-bound decode step needs) and meets each widened chunk of
 * a weight row with up to four rows of A at a time, two vectors of K each
 * (8 accumulators). Every weight is widened once per group of four rows of
 * A: simple, exact, and good enough for the compute-bound encoder/prefill
 * until a packed path like kernels_avx2.c's is worth its code here.
 *
 * Weights are widened in the kernel: bf16 by a 16-bit left shift, f16 with
 * the AArch64 conversion instruction (fcvtl), f32 as is. Tails in K are
 * handled by scalar code, so nothing past a row is read.
 *
 * On x86 the tests compile this file over SIMDe's NEON emulation
 * (QW_NEON_SIMDE), so CI checks it without an ARM machine.
 */
#include "kernels.h"
#include "kernels_gelu.h"

#ifdef QW_NEON_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#else
#include <arm_neon.h>
#endif

#include <string.h>

#define QW_INLINE static inline __attribute__((always_inline))
#define PF_AHEAD 512 /* prefetch distance along a weight row, in elements */
#define MG 4         /* rows of A per pass over a weight row */

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

/* C[m0 .. m0+mg, n] += A[m0 .. m0+mg, :] . W[n, :]  for mg in 1..MG. */
QW_INLINE void rows_dot(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype dt, int mg,
                        int K, int n) {
    const size_t base = (size_t)n * (size_t)K;
    float32x4_t acc[MG][2];
    for (int r = 0; r < MG; r++) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        if ((k & 63) == 0) prefetch_row(W, dt, base + (size_t)k + PF_AHEAD);
        const float32x4_t w0 = widen4(W, dt, base + (size_t)k);
        const float32x4_t w1 = widen4(W, dt, base + (size_t)k + 4);
        for (int r = 0; r < mg; r++) {
            const float *a = A + (size_t)r * lda + k;
            acc[r][0] = vfmaq_f32(acc[r][0], vld1q_f32(a), w0);
            acc[r][1] = vfmaq_f32(acc[r][1], vld1q_f32(a + 4), w1);
        }
    }
    for (int r = 0; r < mg; r++) {
        float s = vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1]));
        const float *a = A + (size_t)r * lda;
        for (int kk = k; kk < K; kk++) s += a[kk] * load1(W, dt, base + (size_t)kk);
        C[(size_t)r * ldc + n] += s;
    }
}

static void matmul_neon(float *C, int ldc, const float *A, int lda, const void *W, qw_dtype wt,
                        const float *bias, int M, int K, int n0, int n1) {
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) C[(size_t)m * ldc + n] = bias ? bias[n] : 0.0f;
    for (int m0 = 0; m0 < M; m0 += MG) {
        const int mg = M - m0 < MG ? M - m0 : MG;
        for (int n = n0; n < n1; n++)
            rows_dot(C + (size_t)m0 * ldc, ldc, A + (size_t)m0 * lda, lda, W, wt, mg, K, n);
    }
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

static void to_f32_neon(float *dst, const void *src, qw_dtype dt, int n) {
    if (dt == QW_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, widen4(src, dt, (size_t)i));
    for (; i < n; i++) dst[i] = load1(src, dt, (size_t)i);
}

static void gelu_neon(float *x, int n) { qw_gelu_erf_row(x, n); }

const qw_kernels qw_kernels_neon = {
    .name = "neon",
    .matmul = matmul_neon,
    .dot = dot_neon,
    .axpy = axpy_neon,
    .to_f32 = to_f32_neon,
    .gelu = gelu_neon,
};
