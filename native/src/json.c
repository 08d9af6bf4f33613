/*
 * JSON — recursive-descent reader (RFC 8259) for config.json and the
 * safetensors header. Depth-limited; never aborts on bad input.
 */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t i, n;
    int depth;
    char *err;
    size_t err_size;
} parser;

static int fail(parser *p, const char *what) {
    if (p->err && p->err_size) snprintf(p->err, p->err_size, "JSON: %s at byte %zu", what, p->i);
    return -1;
}

static void skip_ws(parser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static void value_free(qj_value *v) {
    if (v->type == QJ_STRING) free(v->string);
    if (v->type == QJ_ARRAY || v->type == QJ_OBJECT) {
        for (int k = 0; k < v->n; k++) {
            value_free(&v->items[k]);
            if (v->keys) free(v->keys[k]);
        }
        free(v->items);
        free(v->keys);
    }
    memset(v, 0, sizeof(*v));
}

static void put_utf8(char *out, size_t *o, unsigned cp) {
    if (cp < 0x80) {
        out[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*o)++] = (char)(0xc0 | (cp >> 6));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xe0 | (cp >> 12));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        out[(*o)++] = (char)(0xf0 | (cp >> 18));
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    }
}

static int hex4(parser *p, unsigned *out) {
    if (p->i + 4 > p->n) return fail(p, "short \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return fail(p, "bad \\u escape");
    }
    *out = v;
    return 0;
}

static int parse_string(parser *p, char **out) {
    p->i++; /* opening quote */
    size_t start = p->i, cap = 0;
    while (p->i < p->n && p->s[p->i] != '"') {
        if (p->s[p->i] == '\\') p->i++;
        p->i++;
    }
    if (p->i >= p->n) return fail(p, "unterminated string");
    cap = p->i - start + 1; /* unescaping never grows the text */
    char *buf = malloc(cap);
    if (!buf) return fail(p, "out of memory");
    size_t o = 0;
    p->i = start;
    while (p->s[p->i] != '"') {
        char c = p->s[p->i++];
        if (c != '\\') {
            buf[o++] = c;
            continue;
        }
        char e = p->s[p->i++];
        switch (e) {
        case '"': buf[o++] = '"'; break;
        case '\\': buf[o++] = '\\'; break;
        case '/': buf[o++] = '/'; break;
        case 'b': buf[o++] = '\b'; break;
        case 'f': buf[o++] = '\f'; break;
        case 'n': buf[o++] = '\n'; break;
        case 'r': buf[o++] = '\r'; break;
        case 't': buf[o++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(p, &cp)) { free(buf); return -1; }
            if (cp >= 0xd800 && cp < 0xdc00 && p->i + 6 <= p->n && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u') {
                unsigned lo;
                p->i += 2;
                if (hex4(p, &lo)) { free(buf); return -1; }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            put_utf8(buf, &o, cp); /* \uXXXX is 6 bytes, UTF-8 at most 4 */
            break;
        }
        default: free(buf); return fail(p, "bad escape");
        }
    }
    p->i++; /* closing quote */
    buf[o] = 0;
    *out = buf;
    return 0;
}

static int parse_value(parser *p, qj_value *v);

static int parse_container(parser *p, qj_value *v, int is_object) {
    char close = is_object ? '}' : ']';
    v->type = is_object ? QJ_OBJECT : QJ_ARRAY;
    p->i++;
    int cap = 0;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) { p->i++; return 0; }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? cap * 2 : 8;
            qj_value *items = realloc(v->items, (size_t)cap * sizeof(qj_value));
            if (!items) return fail(p, "out of memory");
            v->items = items;
            if (is_object) {
                char **keys = realloc(v->keys, (size_t)cap * sizeof(char *));
                if (!keys) return fail(p, "out of memory");
                v->keys = keys;
            }
        }
        memset(&v->items[v->n], 0, sizeof(qj_value));
        skip_ws(p);
        if (is_object) {
            v->keys[v->n] = NULL;
            if (p->i >= p->n || p->s[p->i] != '"') return fail(p, "expected key");
            if (parse_string(p, &v->keys[v->n])) return -1;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') { v->n++; return fail(p, "expected ':'"); }
            p->i++;
        }
        v->n++;
        if (parse_value(p, &v->items[v->n - 1])) return -1;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') { p->i++; continue; }
        if (p->i < p->n && p->s[p->i] == close) { p->i++; return 0; }
        return fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(parser *p, qj_value *v) {
    skip_ws(p);
    if (p->i >= p->n) return fail(p, "unexpected end");
    if (++p->depth > 64) return fail(p, "nested too deep");
    int rc = 0;
    char c = p->s[p->i];
    if (c == '{' || c == '[') {
        rc = parse_container(p, v, c == '{');
    } else if (c == '"') {
        v->type = QJ_STRING;
        rc = parse_string(p, &v->string);
    } else if (p->n - p->i >= 4 && !strncmp(p->s + p->i, "true", 4)) {
        v->type = QJ_BOOL; v->number = 1; p->i += 4;
    } else if (p->n - p->i >= 5 && !strncmp(p->s + p->i, "false", 5)) {
        v->type = QJ_BOOL; v->number = 0; p->i += 5;
    } else if (p->n - p->i >= 4 && !strncmp(p->s + p->i, "null", 4)) {
        v->type = QJ_NULL; p->i += 4;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        char tmp[64];
        size_t k = 0;
        while (p->i < p->n && k < sizeof(tmp) - 1 && strchr("+-0123456789.eE", p->s[p->i])) tmp[k++] = p->s[p->i++];
        tmp[k] = 0;
        char *end;
        v->type = QJ_NUMBER;
        v->number = strtod(tmp, &end);
        if (*end) rc = fail(p, "bad number");
    } else {
        rc = fail(p, "unexpected character");
    }
    p->depth--;
    return rc;
}

qj_value *qj_parse(const char *text, size_t len, char *err, size_t err_size) {
    parser p = {text, 0, len, 0, err, err_size};
    qj_value *v = calloc(1, sizeof(qj_value));
    if (!v) return NULL;
    if (parse_value(&p, v) == 0) {
        skip_ws(&p);
        if (p.i == p.n) return v;
        fail(&p, "trailing characters");
    }
    value_free(v);
    free(v);
    return NULL;
}

void qj_free(qj_value *v) {
    if (!v) return;
    value_free(v);
    free(v);
}

const qj_value *qj_get(const qj_value *obj, const char *key) {
    if (!obj || obj->type != QJ_OBJECT) return NULL;
    for (int k = 0; k < obj->n; k++)
        if (!strcmp(obj->keys[k], key)) return &obj->items[k];
    return NULL;
}

const qj_value *qj_get_type(const qj_value *obj, const char *key, qj_type type) {
    const qj_value *v = qj_get(obj, key);
    return v && v->type == type ? v : NULL;
}
