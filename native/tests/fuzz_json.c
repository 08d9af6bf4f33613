/*
 * Fuzz target: the JSON reader (json.c: config.json and safetensors headers) on any bytes, and
 * every lookup on what it parsed.
 */
#include "json.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t walk(const qj_value *v) {
    size_t n = 1;
    if (v->type == QJ_OBJECT)
        for (int i = 0; i < v->n; i++) n += (qj_get(v, v->keys[i]) != NULL) + walk(&v->items[i]);
    if (v->type == QJ_ARRAY)
        for (int i = 0; i < v->n; i++) n += walk(&v->items[i]);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    qj_value *v = qj_parse((const char *)data, size, err, sizeof(err));
    if (v && !walk(v)) abort();
    qj_free(v);
    return 0;
}
