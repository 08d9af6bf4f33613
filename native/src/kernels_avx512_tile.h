/*
 * Pieces shared by the AVX-512 kernel files (kernels_avx512.c,
 * kernels_avx512bf16.c and kernels_amx.c's native half, all compiled with
 * AVX-512 flags): lane masks, the load and store of a register tile of C (up
 * to QW_TILE_MR rows x 2 vectors of 16 columns), and rounding to bf16.
 */
#ifndef QWEN_KERNELS_AVX512_TILE_H
#define QWEN_KERNELS_AVX512_TILE_H

#include "kernels_x86.h"

#define QW_TILE_MR 12 /* rows of C per register tile */

/* Mask of the first t (0..16) lanes. */
QW_INLINE __mmask16 lanes(int t) { return (__mmask16)((1u << t) - 1u); }

/* 16 bf16 widened to f32 (exactly: qw_bf16_to_f32 in 16 lanes). */
QW_INLINE __m512 bf16_to_f32x16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

/* qw_f32_to_bf16 in 16 lanes: nearest even, a NaN kept (quiet). */
QW_INLINE __m256i bf16x16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x), one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    /* top halves, sign-extended so that the saturating narrowing keeps their bits */
    return _mm512_cvtsepi32_epi16(_mm512_srai_epi32(r, 16));
}

/* c[r] = first ? bias[0:nr] (zeros without bias) : C[r, 0:nr], for R rows and
 * V (1 or 2) vectors; columns past nr are zero and never read. */
QW_INLINE void tile_load(__m512 c[QW_TILE_MR][2], const float *C, int ldc, int R, int V, int nr, int first,
                         const float *bias) {
    const __mmask16 m0 = lanes(nr < 16 ? nr : 16), m1 = lanes(nr > 16 ? nr - 16 : 0);
    if (first) {
        __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
        if (bias) {
            b0 = _mm512_maskz_loadu_ps(m0, bias);
            if (V == 2) b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
        }
        for (int r = 0; r < R; r++) c[r][0] = b0, c[r][1] = b1;
    } else {
        for (int r = 0; r < R; r++) {
            c[r][0] = _mm512_maskz_loadu_ps(m0, C + (size_t)r * ldc);
            if (V == 2) c[r][1] = _mm512_maskz_loadu_ps(m1, C + (size_t)r * ldc + 16);
        }
    }
}

/* C[r, 0:nr] = c[r] for R rows; columns past nr are never written. */
QW_INLINE void tile_store(float *C, int ldc, __m512 c[QW_TILE_MR][2], int R, int V, int nr) {
    const __mmask16 m0 = lanes(nr < 16 ? nr : 16), m1 = lanes(nr > 16 ? nr - 16 : 0);
    for (int r = 0; r < R; r++) {
        _mm512_mask_storeu_ps(C + (size_t)r * ldc, m0, c[r][0]);
        if (V == 2) _mm512_mask_storeu_ps(C + (size_t)r * ldc + 16, m1, c[r][1]);
    }
}

/* TILE(R, ...) for R = min(rows, QW_TILE_MR), R a constant: each row count
 * gets its own copy of the (always inlined) tile, its loops unrolled. */
#define QW_TILE_ROWS(rows, TILE, ...)                      \
    switch (rows) {                                        \
    case 1: TILE(1, __VA_ARGS__); break;                   \
    case 2: TILE(2, __VA_ARGS__); break;                   \
    case 3: TILE(3, __VA_ARGS__); break;                   \
    case 4: TILE(4, __VA_ARGS__); break;                   \
    case 5: TILE(5, __VA_ARGS__); break;                   \
    case 6: TILE(6, __VA_ARGS__); break;                   \
    case 7: TILE(7, __VA_ARGS__); break;                   \
    case 8: TILE(8, __VA_ARGS__); break;                   \
    case 9: TILE(9, __VA_ARGS__); break;                   \
    case 10: TILE(10, __VA_ARGS__); break;                 \
    case 11: TILE(11, __VA_ARGS__); break;                 \
    default: TILE(QW_TILE_MR, __VA_ARGS__); break;         \
    }

#endif /* QWEN_KERNELS_AVX512_TILE_H */
