/*
 * Encoder window cache — the outputs of completed encoder windows, kept for
 * the next sequence whose audio has the same window.
 *
 * A complete window (all its n_window_infer mel frames present) is encoded
 * from those frames alone: its conv chunks are padded to full length either
 * way and attention never crosses a window. So a window whose mel frames
 * equal a cached entry's has exactly the cached output. That is what a live
 * transcription needs: its turn grows, and every decode of it starts again
 * from the whole turn's audio; the windows that were complete last time come
 * from here. It also serves a repeated request.
 *
 * The key is the window's mel frames themselves, hashed for the look-up and
 * compared in full on a hash match, so a hit is never a near miss: a frame
 * that changed (new audio moves the reflect padding at the end, or the mel's
 * clamp to its loudest frame - 8) is a different window. Entries are evicted
 * least recently used first. Only the scheduling thread of a context calls
 * these (qwen_step), like everything else on the context.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* 64-bit hash of the window: FNV-1a over 32-bit words, mixed at the end. */
static uint64_t window_hash(const float *mel, int64_t n_frames, int64_t f0, int wf, int F) {
    uint64_t h = 1469598103934665603ull;
    for (int f = 0; f < F; f++) {
        const uint32_t *w = (const uint32_t *)(const void *)(mel + (size_t)f * (size_t)n_frames + (size_t)f0);
        for (int i = 0; i < wf; i++) h = (h ^ w[i]) * 1099511628211ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static int same_window(const float *key, const float *mel, int64_t n_frames, int64_t f0, int wf, int F) {
    for (int f = 0; f < F; f++)
        if (memcmp(key + (size_t)f * wf, mel + (size_t)f * (size_t)n_frames + (size_t)f0, (size_t)wf * sizeof(float)))
            return 0;
    return 1;
}

int qw_enc_cache_init(qw_enc_cache *c, int capacity) {
    memset(c, 0, sizeof(*c));
    if (capacity <= 0) return QWEN_OK;
    c->e = calloc((size_t)capacity, sizeof(qw_enc_entry));
    if (!c->e) return QWEN_ERR_NOMEM;
    c->cap = capacity;
    return QWEN_OK;
}

void qw_enc_cache_free(qw_enc_cache *c) {
    for (int i = 0; i < c->n; i++) {
        free(c->e[i].mel);
        free(c->e[i].out);
    }
    free(c->e);
    memset(c, 0, sizeof(*c));
}

int qw_enc_cache_get(qw_enc_cache *c, const float *mel, int64_t n_frames, int64_t f0, int wf, int F, float *out,
                     size_t out_floats, uint64_t *hash) {
    if (!c->cap) return 0;
    const uint64_t h = *hash = window_hash(mel, n_frames, f0, wf, F);
    for (int i = 0; i < c->n; i++) {
        qw_enc_entry *e = &c->e[i];
        if (e->hash == h && e->out_floats == out_floats && same_window(e->mel, mel, n_frames, f0, wf, F)) {
            memcpy(out, e->out, out_floats * sizeof(float));
            e->used = ++c->clock;
            c->hits++;
            return 1;
        }
    }
    c->misses++;
    return 0;
}

void qw_enc_cache_put(qw_enc_cache *c, uint64_t hash, const float *mel, int64_t n_frames, int64_t f0, int wf, int F,
                      const float *out, size_t out_floats) {
    if (!c->cap) return;
    float *key = malloc((size_t)F * (size_t)wf * sizeof(float)), *val = malloc(out_floats * sizeof(float));
    if (!key || !val) { /* a cache that cannot grow just misses */
        free(key);
        free(val);
        return;
    }
    for (int f = 0; f < F; f++)
        memcpy(key + (size_t)f * wf, mel + (size_t)f * (size_t)n_frames + (size_t)f0, (size_t)wf * sizeof(float));
    memcpy(val, out, out_floats * sizeof(float));
    int slot = c->n;
    if (c->n == c->cap) { /* full: the least recently used goes */
        slot = 0;
        for (int i = 1; i < c->n; i++)
            if (c->e[i].used < c->e[slot].used) slot = i;
        free(c->e[slot].mel);
        free(c->e[slot].out);
    } else {
        c->n++;
    }
    c->e[slot] = (qw_enc_entry){hash, key, val, out_floats, ++c->clock};
}
