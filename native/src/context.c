/*
 * Context helpers shared by every stage: errors recorded on the context, buffers
 * owned by it (freed with it), the clock and the abort check.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

qwen_status qw_fail(qwen_context *ctx, qwen_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof(ctx->err), fmt, ap);
    va_end(ap);
    return st;
}

void *qw_own(qwen_context *ctx, size_t bytes) {
    if (ctx->n_owned == ctx->cap_owned) {
        int cap = ctx->cap_owned ? ctx->cap_owned * 2 : 64;
        void **o = realloc(ctx->owned, (size_t)cap * sizeof(void *));
        if (!o) return NULL;
        ctx->owned = o;
        ctx->cap_owned = cap;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (p) ctx->owned[ctx->n_owned++] = p;
    return p;
}

double qw_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int qw_aborted(qwen_context *ctx) { return ctx->abort_cb && ctx->abort_cb(ctx->abort_ud); }

