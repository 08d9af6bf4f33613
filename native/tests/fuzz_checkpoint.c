/*
 * Fuzz target: one input is a checkpoint directory (config.json and
 * model.safetensors), loaded by qwen_load. Whatever the bytes, the load
 * either succeeds or returns an error; no crash, leak or undefined behaviour
 * (built with sanitizers: -DQWEN_FUZZ=ON for libFuzzer, or fuzz_replay.c over
 * native/tests/corpus/checkpoint in the tests).
 *
 * Input: u32 n (little-endian) | config.json (n & 0x7fffffff bytes) | model.safetensors
 * (the rest); bit 31 of n loads with precision FAST (int8 packing, the LM head's screen).
 * The seeds are a few-KB checkpoint of the real layout (every tensor Qwen3-ASR has, widths of
 * 8-32, a vocabulary of 64) in bf16, f16 and f32.
 */
#include "qwen.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

static void cleanup(void) {
    char p[128];
    snprintf(p, sizeof(p), "%s/config.json", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);
    unlink(p);
    rmdir(dir);
}

static void put(const char *name, const uint8_t *d, size_t n) {
    char p[128];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n)) abort();
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) { /* one directory for the process, its files rewritten by every input */
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%.40s/qwen-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(dir)) abort();
        atexit(cleanup);
    }
    if (size < 4) return 0;
    uint32_t n;
    memcpy(&n, data, 4);
    size_t clen = n & 0x7fffffffu;
    if (clen > size - 4) clen = size - 4;
    put("config.json", data + 4, clen);
    put("model.safetensors", data + 4 + clen, size - 4 - clen);
    qwen_params p = qwen_default_params();
    p.n_threads = 1;
    p.precision = n >> 31 ? QWEN_PRECISION_FAST : QWEN_PRECISION_EXACT;
    char err[512];
    qwen_context *ctx = qwen_load(dir, &p, err, sizeof(err));
    if (ctx) qwen_free(ctx);
    return 0;
}
