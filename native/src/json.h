/*
 * JSON — a small reader for config.json and safetensors headers.
 * Parses a whole document into a tree; strings are unescaped copies.
 */
#ifndef QWEN_JSON_H
#define QWEN_JSON_H

#include <stddef.h>

typedef enum { QJ_NULL, QJ_BOOL, QJ_NUMBER, QJ_STRING, QJ_ARRAY, QJ_OBJECT } qj_type;

typedef struct qj_value {
    qj_type type;
    double number;          /* QJ_NUMBER, QJ_BOOL (0/1) */
    char *string;           /* QJ_STRING */
    int n;                  /* QJ_ARRAY / QJ_OBJECT: number of children */
    char **keys;            /* QJ_OBJECT: n keys */
    struct qj_value *items; /* QJ_ARRAY / QJ_OBJECT: n children */
} qj_value;

/* Returns NULL on a syntax error (message in err). Free with qj_free. */
qj_value *qj_parse(const char *text, size_t len, char *err, size_t err_size);
void qj_free(qj_value *v);

/* Lookups; NULL when absent or of another type. */
const qj_value *qj_get(const qj_value *obj, const char *key);
const qj_value *qj_get_type(const qj_value *obj, const char *key, qj_type type);

#endif
