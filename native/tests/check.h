/*
 * The C API test programs' check: counts passes and failures, names each
 * failure on stderr; the program prints "<name>: P passed, F failed".
 */
#ifndef QWEN_TEST_CHECK_H
#define QWEN_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;
#define CHECK(cond, what)                                        \
    do {                                                         \
        if (cond) passed++;                                      \
        else { failed++; fprintf(stderr, "FAIL: %s\n", what); }  \
    } while (0)

#endif
