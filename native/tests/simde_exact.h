/*
 * SIMDe, made exact where the kernel tests need it — included by the
 * emulated builds of test_kernels.c and test_quant.c before the kernel
 * files they #include.
 *
 * SIMDe's masked loads and stores access all 16 lanes, where the hardware
 * touches only the selected ones — which the kernels rely on (tails at the
 * end of a buffer, columns of C that belong to another thread) — so those
 * are replaced by lane-exact versions. Without -mfma SIMDe's fused
 * multiply-adds (x86 and NEON) are a multiply and an add, rounded twice;
 * the hardware rounds once, and the int8 tables' bits depend on it, so they
 * are replaced by lane-by-lane fmaf.
 */
#ifndef QWEN_TESTS_SIMDE_EXACT_H
#define QWEN_TESTS_SIMDE_EXACT_H

#include <math.h>
#include <stdint.h>

#ifdef QW_TEST_EMULATE_AVX512
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

static simde__m512 emu_maskz_loadu_ps(simde__mmask16 k, const void *p) {
    float v[16] = {0};
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) v[i] = ((const float *)p)[i];
    return simde_mm512_loadu_ps(v);
}
static simde__m256i emu_maskz_loadu_epi16(simde__mmask16 k, const void *p) {
    uint16_t v[16] = {0};
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) v[i] = ((const uint16_t *)p)[i];
    return simde_mm256_loadu_si256(v);
}
static simde__m512i emu_maskz_loadu_epi16_512(simde__mmask32 k, const void *p) {
    uint16_t v[32] = {0};
    for (int i = 0; i < 32; i++)
        if (k >> i & 1) v[i] = ((const uint16_t *)p)[i];
    return simde_mm512_loadu_si512(v);
}
static void emu_mask_storeu_ps(void *p, simde__mmask16 k, simde__m512 a) {
    float v[16];
    simde_mm512_storeu_ps(v, a);
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) ((float *)p)[i] = v[i];
}
static simde__m512 emu_fmadd_ps(simde__m512 a, simde__m512 b, simde__m512 c) {
    float x[16], y[16], z[16];
    simde_mm512_storeu_ps(x, a);
    simde_mm512_storeu_ps(y, b);
    simde_mm512_storeu_ps(z, c);
    for (int i = 0; i < 16; i++) x[i] = fmaf(x[i], y[i], z[i]);
    return simde_mm512_loadu_ps(x);
}
static simde__m256 emu_fmadd_ps256(simde__m256 a, simde__m256 b, simde__m256 c) {
    float x[8], y[8], z[8];
    simde_mm256_storeu_ps(x, a);
    simde_mm256_storeu_ps(y, b);
    simde_mm256_storeu_ps(z, c);
    for (int i = 0; i < 8; i++) x[i] = fmaf(x[i], y[i], z[i]);
    return simde_mm256_loadu_ps(x);
}
#undef _mm512_maskz_loadu_ps
#undef _mm256_maskz_loadu_epi16
#undef _mm256_fmadd_ps
#undef _mm512_maskz_loadu_epi16
#undef _mm512_mask_storeu_ps
#undef _mm512_fmadd_ps
#define _mm512_maskz_loadu_ps(k, p) emu_maskz_loadu_ps(k, p)
#define _mm256_maskz_loadu_epi16(k, p) emu_maskz_loadu_epi16(k, p)
#define _mm512_maskz_loadu_epi16(k, p) emu_maskz_loadu_epi16_512(k, p)
#define _mm512_mask_storeu_ps(p, k, a) emu_mask_storeu_ps(p, k, a)
#define _mm512_fmadd_ps(a, b, c) emu_fmadd_ps(a, b, c)
#define _mm256_fmadd_ps(a, b, c) emu_fmadd_ps256(a, b, c)
/* AVX-VNNI's vpdpbusd is AVX512-VNNI's on ymm, the same sums */
#define _mm256_dpbusd_avx_epi32(s, a, b) simde_mm256_dpbusd_epi32(s, a, b)
#endif

#ifdef QW_TEST_EMULATE_NEON
#define QW_NEON_SIMDE 1
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>

static simde_float32x4_t emu_vfmaq_f32(simde_float32x4_t acc, simde_float32x4_t x, simde_float32x4_t y) {
    float a[4], b[4], c[4];
    simde_vst1q_f32(a, acc);
    simde_vst1q_f32(b, x);
    simde_vst1q_f32(c, y);
    for (int i = 0; i < 4; i++) a[i] = fmaf(b[i], c[i], a[i]);
    return simde_vld1q_f32(a);
}
#undef vfmaq_f32
#define vfmaq_f32(acc, x, y) emu_vfmaq_f32(acc, x, y)
#endif

#endif /* QWEN_TESTS_SIMDE_EXACT_H */
