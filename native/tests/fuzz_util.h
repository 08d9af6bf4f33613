/*
 * The fuzz targets' checkpoint directory: one per process, in $TMPDIR, its two files rewritten
 * from an input in fuzz_checkpoint.c's format (u32 n | config.json | model.safetensors; bit 31 of
 * n: precision FAST) and removed at exit.
 */
#ifndef QWEN_FUZZ_UTIL_H
#define QWEN_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fuzz_dir[64];

static void fuzz_path(char *p, size_t size, const char *name) { snprintf(p, size, "%s/%s", fuzz_dir, name); }

static void fuzz_remove_dir(void) {
    char p[128];
    fuzz_path(p, sizeof(p), "config.json");
    unlink(p);
    fuzz_path(p, sizeof(p), "model.safetensors");
    unlink(p);
    rmdir(fuzz_dir);
}

static void fuzz_put(const char *name, const uint8_t *d, size_t n) {
    char p[128];
    fuzz_path(p, sizeof(p), name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n)) abort();
    fclose(f);
}

/* Writes the checkpoint an input holds (inputs under 4 bytes: nothing, -1); its precision bit. */
static int fuzz_write_checkpoint(const uint8_t *data, size_t size) {
    if (!fuzz_dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(fuzz_dir, sizeof(fuzz_dir), "%.40s/qwen-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(fuzz_dir)) abort();
        atexit(fuzz_remove_dir);
    }
    if (size < 4) return -1;
    uint32_t n;
    memcpy(&n, data, 4);
    size_t clen = n & 0x7fffffffu;
    if (clen > size - 4) clen = size - 4;
    fuzz_put("config.json", data + 4, clen);
    fuzz_put("model.safetensors", data + 4 + clen, size - 4 - clen);
    return (int)(n >> 31);
}

#endif
