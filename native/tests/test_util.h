/*
 * What the kernel test programs share (test_kernels.c, test_quant.c,
 * test_amx.c): pass/fail counting with a message per failure, a seeded
 * xorshift generator, and float <-> bits. Each program defines TEST_SEED
 * before including it (its own sequence of data).
 */
#ifndef QWEN_TESTS_TEST_UTIL_H
#define QWEN_TESTS_TEST_UTIL_H

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

#endif /* QWEN_TESTS_TEST_UTIL_H */
