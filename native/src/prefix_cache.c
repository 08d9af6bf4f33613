/*
 * Prefix cache — the decoder's KV cache for the start of a prompt, kept for
 * the next sequence whose prompt starts the same way.
 *
 * A live turn is decoded again about once a second while it grows: its
 * prompt is the same system text, then the audio tokens of its complete
 * encoder windows (unchanged: enc_cache.c), then those of the last window and
 * the text, which change. When a sequence's prefill is done, the KV rows up
 * to its first audio row that can still change are kept; a later sequence
 * whose prompt ids and audio rows match them bit for bit starts its prefill
 * after them, with those KV rows copied in.
 *
 * Exactness: a prompt row's KV depends on the rows up to it and on the
 * prefill chunk that computed it (the matmul of fewer than 8 rows takes
 * another kernel than that of 8 or more). So a kept prefix always ends on a
 * prefill_chunk boundary counted from the prompt's start: the reusing
 * sequence then runs exactly the chunks it would have run from the start,
 * minus the first ones, and every KV row and logit has the bits it has
 * without the cache. Entries are evicted least recently used first, within
 * a budget of KV tokens. Only the scheduling thread of a context calls these.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* Copies the first n positions of every (layer, KV head) run of keys and values: from caches
 * of from_cap positions a run to caches of to_cap ([layers, KV heads, cap, hd]). */
static void kv_copy(const qwen_context *ctx, void *to_k, void *to_v, int to_cap, const void *from_k,
                    const void *from_v, int from_cap, int n) {
    const size_t hb = qw_kv_row(ctx); /* bytes of one position */
    const size_t runs = (size_t)ctx->cfg.dec_layers * ctx->cfg.n_kv_heads;
    for (size_t r = 0; r < runs; r++) {
        memcpy((char *)to_k + r * to_cap * hb, (const char *)from_k + r * from_cap * hb, (size_t)n * hb);
        memcpy((char *)to_v + r * to_cap * hb, (const char *)from_v + r * from_cap * hb, (size_t)n * hb);
    }
}

static void entry_free(qw_prefix_entry *e) {
    free(e->ids);
    free(e->audio);
    free(e->k);
    free(e->v);
    memset(e, 0, sizeof(*e));
}

static void entry_remove(qw_prefix_cache *pc, int i) {
    pc->tokens -= pc->e[i].n;
    entry_free(&pc->e[i]);
    pc->e[i] = pc->e[--pc->n];
}

int qw_prefix_cache_init(qw_prefix_cache *pc, int64_t budget_tokens) {
    memset(pc, 0, sizeof(*pc));
    pc->budget = budget_tokens > 0 ? budget_tokens : 0;
    return QWEN_OK;
}

void qw_prefix_cache_free(qw_prefix_cache *pc) {
    while (pc->n) entry_remove(pc, pc->n - 1);
    free(pc->e);
    memset(pc, 0, sizeof(*pc));
}

/* Does e hold the first e->n rows of s's prompt (ids, and audio rows bit for bit)? */
static int entry_matches(const qwen_context *ctx, const qw_prefix_entry *e, const qw_seq *s) {
    if (e->n >= s->n_prompt || e->n_audio > s->n_audio) return 0; /* at least one row left to prefill */
    if (memcmp(e->ids, s->prompt, (size_t)e->n * sizeof(int32_t))) return 0;
    return !e->n_audio || !memcmp(e->audio, s->emb, (size_t)e->n_audio * (size_t)ctx->cfg.hidden * sizeof(float));
}

int qw_prefix_reuse(qwen_context *ctx, qw_seq *s) {
    qw_prefix_cache *pc = &ctx->prefix_cache;
    s->prefix_entry_n = 0;
    if (!pc->budget || s->align || s->n_prefilled) return 0;
    int best = -1;
    for (int i = 0; i < pc->n; i++)
        if ((best < 0 || pc->e[i].n > pc->e[best].n) && entry_matches(ctx, &pc->e[i], s)) best = i;
    if (best < 0) return 0;
    qw_prefix_entry *e = &pc->e[best];
    kv_copy(ctx, s->k, s->v, s->cap, e->k, e->v, e->n, e->n);
    s->n_prefilled = s->n_past = e->n;
    s->audio_used = e->n_audio;
    s->prefix_entry_n = e->n;
    e->used = ++pc->clock;
    pc->hits++;
    pc->tokens_reused += e->n;
    return e->n;
}

void qw_prefix_keep(qwen_context *ctx, const qw_seq *s) {
    qw_prefix_cache *pc = &ctx->prefix_cache;
    const qw_config *c = &ctx->cfg;
    if (!pc->budget || s->align || !s->n_audio || !s->emb) return;
    /* Audio rows that cannot change: those of the complete encoder windows. */
    const int64_t complete = s->n_frames / qw_encoder_window_frames(ctx);
    const int stable = (int)qw_encoder_window_start(ctx, s->n_frames, (int)complete);
    if (stable <= 0) return;
    /* The prompt rows before the first audio row that can change, down to a chunk boundary. */
    int p = 0, audio = 0;
    while (p < s->n_prompt && !(s->prompt[p] == c->audio_token_id && audio == stable))
        audio += s->prompt[p++] == c->audio_token_id;
    p -= p % ctx->prefill_chunk;
    if (p <= s->prefix_entry_n || p >= s->n_prompt) return; /* nothing longer than what it reused */
    if (p > pc->budget) return;
    int n_audio = 0;
    for (int i = 0; i < p; i++) n_audio += s->prompt[i] == c->audio_token_id;
    /* The entry it reused is a prefix of this one: this one replaces it. */
    for (int i = 0; i < pc->n; i++)
        if (pc->e[i].n == s->prefix_entry_n && entry_matches(ctx, &pc->e[i], s)) {
            entry_remove(pc, i);
            break;
        }
    while (pc->n && pc->tokens + p > pc->budget) { /* the least recently used go */
        int lru = 0;
        for (int i = 1; i < pc->n; i++)
            if (pc->e[i].used < pc->e[lru].used) lru = i;
        entry_remove(pc, lru);
    }
    if (pc->n == pc->cap) {
        const int cap = pc->cap ? 2 * pc->cap : 8;
        qw_prefix_entry *grown = realloc(pc->e, (size_t)cap * sizeof(*grown));
        if (!grown) return; /* a cache that cannot grow just misses */
        pc->e = grown;
        pc->cap = cap;
    }
    const size_t kv = (size_t)c->dec_layers * c->n_kv_heads * (size_t)p * qw_kv_row(ctx);
    qw_prefix_entry e = {p, malloc((size_t)p * sizeof(int32_t)), n_audio,
                         n_audio ? malloc((size_t)n_audio * (size_t)c->hidden * sizeof(float)) : NULL,
                         malloc(kv), malloc(kv), ++pc->clock};
    if (!e.ids || (n_audio && !e.audio) || !e.k || !e.v) {
        entry_free(&e);
        return;
    }
    memcpy(e.ids, s->prompt, (size_t)p * sizeof(int32_t));
    if (n_audio) memcpy(e.audio, s->emb, (size_t)n_audio * (size_t)c->hidden * sizeof(float));
    kv_copy(ctx, e.k, e.v, p, s->k, s->v, s->cap, p);
    pc->e[pc->n++] = e;
    pc->tokens += p;
}
