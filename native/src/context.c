/*
 * Context helpers shared by every stage: errors recorded on the context, buffers
 * owned by it (freed with it), the clock and the abort check.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

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

#define QW_HUGE_PAGE ((size_t)2 << 20)

#ifdef __linux__
char *qw_map_huge(size_t len, int prot, int flags, int fd) {
    char *r = mmap(NULL, len + QW_HUGE_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return NULL;
    /* keep the 2 MiB-aligned part of the reservation only, and map there */
    char *a = (char *)(((uintptr_t)r + QW_HUGE_PAGE - 1) & ~(uintptr_t)(QW_HUGE_PAGE - 1));
    if (a > r) munmap(r, (size_t)(a - r));
    if (a + len < r + len + QW_HUGE_PAGE) munmap(a + len, (size_t)(r + len + QW_HUGE_PAGE - (a + len)));
    if (mmap(a, len, prot, flags | MAP_FIXED, fd, 0) == MAP_FAILED) {
        munmap(a, len);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    madvise(a, len, MADV_HUGEPAGE); /* where THP is "never", 4 KiB pages as before */
#endif
    return a;
}
#endif

void *qw_own_weights(qwen_context *ctx, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (!ctx->arena_tried) { /* room for every packed copy: at most the checkpoint's bytes and padding */
        ctx->arena_tried = 1;
        size_t file = 0;
        for (int i = 0; i < ctx->st.n_maps; i++) file += ctx->st.map_sizes[i];
        const size_t size = (file + file / 4 + ((size_t)64 << 20) + QW_HUGE_PAGE - 1) / QW_HUGE_PAGE * QW_HUGE_PAGE;
        /* a load that writes the weight cache packs straight into the file's pages (weight_cache.c) */
        char *a = qw_wcache_arena(ctx, size);
        if (!a) a = qw_map_huge(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
        if (a) {
            ctx->arena = a;
            ctx->arena_size = size;
        }
    }
    const size_t at = (ctx->arena_used + 63) & ~(size_t)63;
    if (ctx->arena && at <= ctx->arena_size && bytes <= ctx->arena_size - at) {
        ctx->arena_used = at + bytes;
        return ctx->arena + at; /* zero: anonymous pages not written before */
    }
#endif
    return qw_own(ctx, bytes);
}

void qw_trim_weights(qwen_context *ctx) {
#ifdef __linux__
    if (!ctx->arena || ctx->wcache.state == QW_WCACHE_HIT) return; /* a file's mapping: its own size */
    const size_t kept = (ctx->arena_used + QW_HUGE_PAGE - 1) / QW_HUGE_PAGE * QW_HUGE_PAGE;
    if (kept < ctx->arena_size) munmap(ctx->arena + kept, ctx->arena_size - kept);
    ctx->arena_size = kept;
    if (!kept) ctx->arena = NULL;
#else
    (void)ctx;
#endif
}

void qw_free_weights(qwen_context *ctx) {
#ifdef __linux__
    if (ctx->arena) munmap(ctx->arena, ctx->arena_size);
#endif
    ctx->arena = NULL;
}

double qw_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int qw_aborted(qwen_context *ctx) { return ctx->abort_cb && ctx->abort_cb(ctx->abort_ud); }

