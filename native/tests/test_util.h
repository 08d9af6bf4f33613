/*
 * What the kernel test programs share (test_kernels.c, test_quant.c,
 * test_amx.c): pass/fail counting with a message per failure, a seeded
 * xorshift generator, float <-> bits, sentinels, and for the convolutions
 * (test_amx.c, test_kernels.c) a test activation and the check of a
 * qw_conv3x3 output against its im2col path. Each program defines TEST_SEED
 * before including it (its own sequence of data).
 */
#ifndef QWEN_TESTS_TEST_UTIL_H
#define QWEN_TESTS_TEST_UTIL_H

#include "kernels.h" /* qw_f32_to_bf16 */

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int passed, failed;

/* Counts a check; a failure prints "FAIL [what] <message>" (the first 50 of them). */
static void check(int ok, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(int ok, const char *what, const char *fmt, ...) {
    if (ok) {
        passed++;
        return;
    }
    if (++failed > 50) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL [%s] ", what);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint32_t rng = TEST_SEED;
static uint32_t rand32(void) { /* xorshift32 */
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}
static float frand(void) { return (float)(rand32() >> 8) / (float)(1u << 23) - 1.0f; } /* [-1, 1) */

static __attribute__((unused)) uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static __attribute__((unused)) float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#define SENTINEL 7.25f        /* what an output a kernel must not write holds before the call */
#define SENTINEL_BF16 0xabcdu /* the same for bf16 outputs */

/* An activation for the epilogue: any per-element function of the sum shows where it runs. */
static __attribute__((unused)) void act_test(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.25f * x[i] - 0.125f;
}

/* A qw_conv3x3's output (f32 of or bf16 ob; out_len elements, row stride ldo) against R[m][n] (the
 * im2col path's results, f32): for the slice [n0, n1) of every output row, of equals R bit for bit or
 * ob is R rounded to bf16 (the bf16 output's rows in the padded layout, To x Fo inside a border);
 * everything else keeps its sentinel (sf, sb). *same / *untouched: all held; returns the differing count. */
static __attribute__((unused)) int conv_output_check(const float *R, const float *of, const uint16_t *ob,
                                                     size_t out_len, int ldo, int To, int Fo, int n0, int n1,
                                                     float sf, uint16_t sb, int *same, int *untouched) {
    int n_diff = 0;
    *same = 1, *untouched = 1;
    for (size_t i = 0; i < out_len; i++) {
        const size_t row = i / (size_t)ldo, n = i % (size_t)ldo;
        int m = (int)row; /* the output row this element belongs to, or -1 */
        if (ob) {
            const int t = (int)(row / (size_t)(Fo + 2)) - 1, f = (int)(row % (size_t)(Fo + 2)) - 1;
            m = t >= 0 && t < To && f >= 0 && f < Fo ? t * Fo + f : -1;
        }
        if (m >= 0 && (int)n >= n0 && (int)n < n1) {
            const float r = R[(size_t)m * ldo + n];
            const int ok = ob ? ob[i] == qw_f32_to_bf16(r) : f2u(of[i]) == f2u(r);
            *same &= ok, n_diff += !ok;
        } else {
            *untouched &= ob ? ob[i] == sb : f2u(of[i]) == f2u(sf);
        }
    }
    return n_diff;
}

#endif /* QWEN_TESTS_TEST_UTIL_H */
