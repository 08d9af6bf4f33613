/*
 * Pieces shared by the x86 kernel files (kernels_avx2.c, kernels_avx512.c,
 * kernels_avx512bf16.c; each compiled with at least AVX2 flags).
 */
#ifndef QWEN_KERNELS_X86_H
#define QWEN_KERNELS_X86_H

#include "kernels.h"

#ifndef QW_TEST_EMULATE_AVX512 /* else the test program provides the intrinsics */
#include <immintrin.h>
#endif

#ifdef QW_TEST_EMULATE_AVX512
/* The emulated test (SIMDe, -O0, ASan): forcing the unrolled register tiles
 * inline there makes one compile take many minutes and gigabytes; the
 * arithmetic, and so what the test checks, is the same either way. */
#define QW_INLINE static inline
#else
#define QW_INLINE static inline __attribute__((always_inline))
#endif

/* A table's kv8_dot_rows / kv8_axpy_rows (kernels.h) for the `heads` query heads of a KV head's
 * group: the heads in pairs through pair(), which widens each row once for both, an odd last one
 * alone through one(). Head h's output at v + h * ldv (its scores, or its y), its input at
 * in + h * ldin (its q, or its alpha); the rows' stride is ldb bytes. */
typedef void (*qw_kv8_heads_fn)(float *v, int ldv, const float *in, int ldin, const char *rows, size_t ldb,
                                int n_rows, int n);
QW_INLINE void kv8_in_pairs(qw_kv8_heads_fn pair, qw_kv8_heads_fn one, float *v, int ldv, const float *in, int ldin,
                            int heads, const void *rows, int n_rows, int n) {
    const size_t ldb = qw_kv8_row_bytes(n);
    int h = 0;
    for (; h + 2 <= heads; h += 2) pair(v + (size_t)h * ldv, ldv, in + (size_t)h * ldin, ldin, rows, ldb, n_rows, n);
    if (h < heads) one(v + (size_t)h * ldv, ldv, in + (size_t)h * ldin, ldin, rows, ldb, n_rows, n);
}

/* BLOCK(V, ...) with V a compile-time count of vectors for a run-time count v of 0..7 (7 for more):
 * the last block of a row, whose registers the compiler must know. */
#define QW_VECTORS(v, BLOCK, ...)          \
    switch (v) {                           \
    case 0: BLOCK(0, __VA_ARGS__); break;  \
    case 1: BLOCK(1, __VA_ARGS__); break;  \
    case 2: BLOCK(2, __VA_ARGS__); break;  \
    case 3: BLOCK(3, __VA_ARGS__); break;  \
    case 4: BLOCK(4, __VA_ARGS__); break;  \
    case 5: BLOCK(5, __VA_ARGS__); break;  \
    case 6: BLOCK(6, __VA_ARGS__); break;  \
    default: BLOCK(7, __VA_ARGS__); break; \
    }

/* In-register transpose of an 8x8 block of 32-bit lanes: v[i][j] -> v[j][i]
 * (packs weight panels; also moves pairs of bf16 as one lane). */
QW_INLINE void transpose8(__m256 v[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);     /* a0 b0 a1 b1 | a4 b4 a5 b5 */
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]); /* a2 b2 a3 b3 | a6 b6 a7 b7 */
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);     /* a0 b0 c0 d0 | a4 b4 c4 d4 */
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee); /* a1 b1 c1 d1 | a5 b5 c5 d5 */
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);     /* column i */
        v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31); /* column i + 4 */
    }
}

/* 8 bf16 widened to f32 (exactly: qw_bf16_to_f32 in 8 lanes). */
QW_INLINE __m256 bf16_to_f32x8(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }

#endif /* QWEN_KERNELS_X86_H */
