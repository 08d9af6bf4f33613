/*
 * API tests — the library's contract on bad input: errors come back as
 * NULL/status codes with a message, never as a crash. With QWEN_TEST_MODEL
 * set to a checkpoint directory it also runs two contexts side by side.
 */
#include "qwen.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ==== Batching: every sequence gets exactly the tokens it gets alone ==== */

#define N_CLIPS 10
#define SLOTS 8
#define MAX_GEN 40

/* FNV-1a over the bytes of the logits: equal hashes for bitwise-equal logits. */
static uint64_t hash_logits(const float *x, int n) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)x;
    for (size_t i = 0; x && i < (size_t)n * sizeof(float); i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static float *make_clip(int n, int seed) {
    float *pcm = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++)
        pcm[i] = 0.1f * (float)(((i + seed * 131) * (7919 + seed * 2)) % 200 - 100) / 100.0f;
    return pcm;
}

/* audio start, placeholders, audio end, then `extra` text tokens */
static int32_t *make_prompt(qwen_context *c, int64_t n_audio, int extra, int *n) {
    *n = (int)n_audio + 2 + extra;
    int32_t *ids = malloc((size_t)*n * sizeof(int32_t));
    ids[0] = (int32_t)qwen_model_info(c, "audio_start_token_id");
    for (int i = 0; i < n_audio; i++) ids[1 + i] = (int32_t)qwen_model_info(c, "audio_token_id");
    ids[n_audio + 1] = (int32_t)qwen_model_info(c, "audio_end_token_id");
    for (int i = 0; i < extra; i++) ids[n_audio + 2 + i] = 100 + 37 * i;
    return ids;
}

static void test_batch(const char *model, qwen_precision precision) {
    /* Mixed lengths: under one encoder window, two windows (> 8 s), a
     * prompt longer than one prefill chunk; mixed limits. */
    const int samples[N_CLIPS] = {8000, 16000, 40000, 150000, 24000, 12000, 30000, 4000, 20000, 56000};
    const int extra[N_CLIPS] = {0, 3, 1, 0, 80, 2, 0, 5, 1, 0};
    const int limit[N_CLIPS] = {40, 24, 30, 36, 20, 32, 28, 34, 14, 11};
    /* No EOS ids that a tiny random model hits: each runs to its limit (more decode steps shared). */
    const int32_t eos[1] = {0x7fffffff};
    float *pcm[N_CLIPS];
    int32_t *prompt[N_CLIPS];
    int n_prompt[N_CLIPS];
    int32_t alone[N_CLIPS][MAX_GEN], batch[N_CLIPS][MAX_GEN];
    uint64_t h_alone[N_CLIPS][MAX_GEN], h_batch[N_CLIPS][MAX_GEN];
    int vocab = 0;
    int n_alone[N_CLIPS] = {0}, n_batch[N_CLIPS] = {0};
    char err[512];

    /* Alone: the batch-of-one API, one thread. */
    qwen_params p1 = qwen_default_params();
    p1.n_threads = 1;
    p1.precision = precision;
    qwen_context *one = qwen_load(model, &p1, err, sizeof(err));
    CHECK(one != NULL, "load for the alone runs");
    if (!one) return;
    qwen_run_params rp = qwen_default_run_params();
    rp.eos_ids = eos;
    rp.n_eos_ids = 1;
    for (int i = 0; i < N_CLIPS; i++) {
        pcm[i] = make_clip(samples[i], i);
        prompt[i] = make_prompt(one, qwen_audio_token_count(one, samples[i]), extra[i], &n_prompt[i]);
        rp.max_new_tokens = limit[i];
        int32_t tok;
        CHECK(qwen_begin(one, pcm[i], samples[i], prompt[i], n_prompt[i], &rp) == QWEN_OK, "begin alone");
        qwen_status st;
        while ((st = qwen_next(one, &tok)) == QWEN_OK || (st == QWEN_DONE && tok >= 0))
            if (tok >= 0 && n_alone[i] < MAX_GEN) {
                const float *lg = qwen_last_logits(one, &vocab);
                h_alone[i][n_alone[i]] = hash_logits(lg, vocab);
                alone[i][n_alone[i]++] = tok;
            }
        CHECK(n_alone[i] == limit[i], "alone: runs to its limit");
    }
    qwen_free(one);

    /* Together: SLOTS slots, two threads; clips join as slots free up, one mid-decode. */
    qwen_params pb = qwen_default_params();
    pb.precision = precision;
    pb.max_sequences = SLOTS;
    pb.n_threads = 2;
    qwen_context *c = qwen_load(model, &pb, err, sizeof(err));
    CHECK(c != NULL && qwen_get_info(c, "max_sequences") == SLOTS, "load with SLOTS slots");
    if (!c) return;
    int clip_in[SLOTS], next_clip = 0, steps = 0, max_active = 0, max_decoding = 0;
    for (int i = 0; i < SLOTS; i++) clip_in[i] = -1;
    qwen_event ev[SLOTS];
    for (;;) {
        /* admit the next clip when a slot is free; clip 1 waits until the others decode */
        while (next_clip < N_CLIPS && qwen_get_info(c, "free_slots") > 0 && (next_clip != 1 || steps >= 6)) {
            rp.max_new_tokens = limit[next_clip];
            int seq = -1;
            CHECK(qwen_seq_add(c, pcm[next_clip], samples[next_clip], prompt[next_clip], n_prompt[next_clip], &rp, &seq) ==
                      QWEN_OK && seq >= 0 && seq < SLOTS,
                  "seq_add");
            if (seq < 0) break;
            clip_in[seq] = next_clip++;
        }
        int n = 0;
        qwen_status st = qwen_step(c, ev, &n);
        if (st == QWEN_DONE && next_clip == N_CLIPS) break;
        CHECK(st == QWEN_OK || st == QWEN_DONE, "step");
        if (st < 0) break;
        steps++;
        int active = (int)qwen_get_info(c, "active");
        max_active = active > max_active ? active : max_active;
        max_decoding = n > max_decoding ? n : max_decoding;
        for (int e = 0; e < n; e++) {
            const int clip = clip_in[ev[e].seq];
            CHECK(clip >= 0 && ev[e].status >= 0, "event of a running clip, no failure");
            if (clip >= 0 && ev[e].token >= 0 && n_batch[clip] < MAX_GEN) {
                const float *lg = qwen_seq_logits(c, ev[e].seq, &vocab);
                CHECK(lg != NULL && vocab > 0, "logits behind each batched token");
                h_batch[clip][n_batch[clip]] = hash_logits(lg, vocab);
                batch[clip][n_batch[clip]++] = ev[e].token;
            }
        }
        if (steps > 400) break;
    }
    CHECK(max_active == SLOTS && max_decoding == SLOTS, "all slots decoded in one step");
    /* FAST: prefill chunks of later clips ran inside decode passes (and the ids and logits below
     * are still those of the clips alone); EXACT keeps them apart. */
    CHECK(precision == QWEN_PRECISION_FAST ? qwen_get_info(c, "prefill_joined") >= N_CLIPS - SLOTS
                                           : qwen_get_info(c, "prefill_joined") == 0,
          "prefill chunks joined the decode pass in FAST only");
    for (int i = 0; i < N_CLIPS; i++) {
        char what[96];
        snprintf(what, sizeof(what), "clip %d: batched tokens == alone (%d vs %d)", i, n_batch[i], n_alone[i]);
        CHECK(n_batch[i] == n_alone[i] && memcmp(batch[i], alone[i], (size_t)n_alone[i] * sizeof(int32_t)) == 0, what);
        snprintf(what, sizeof(what), "clip %d: batched logits bitwise == alone", i);
        CHECK(n_batch[i] == n_alone[i] && memcmp(h_batch[i], h_alone[i], (size_t)n_alone[i] * sizeof(uint64_t)) == 0, what);
    }
    CHECK(qwen_get_info(c, "active") == 0 && qwen_get_info(c, "kv_reserved") == 0, "all slots and KV free at the end");
    qwen_free(c);

    /* Slots, budget and abort. */
    qwen_params pk = qwen_default_params();
    pk.max_sequences = 2;
    pk.kv_budget_tokens = n_prompt[0] + limit[0]; /* exactly one clip-0 sequence */
    c = qwen_load(model, &pk, err, sizeof(err));
    CHECK(c != NULL, "load with a KV budget");
    if (c) {
        int s0 = -1, s1 = -1, n = 0;
        rp.max_new_tokens = limit[0];
        CHECK(qwen_seq_add(c, pcm[0], samples[0], prompt[0], n_prompt[0], &rp, &s0) == QWEN_OK, "first fits the budget");
        CHECK(qwen_seq_add(c, pcm[0], samples[0], prompt[0], n_prompt[0], &rp, &s1) == QWEN_ERR_BUSY && s1 == -1 &&
                  strstr(qwen_last_error(c), "budget"),
              "second: KV budget reserved -> busy");
        rp.max_new_tokens = limit[0] + 1;
        CHECK(qwen_seq_add(c, pcm[0], samples[0], prompt[0], n_prompt[0], &rp, &s1) == QWEN_ERR_BUSY &&
                  strstr(qwen_last_error(c), "whole budget"),
              "more than the whole budget -> busy");
        rp.max_new_tokens = limit[0];
        CHECK(qwen_step(c, ev, &n) == QWEN_OK && qwen_seq_abort(c, s0) == QWEN_OK, "step, then abort");
        CHECK(qwen_get_info(c, "active") == 0 && qwen_get_info(c, "kv_reserved") == 0, "abort frees slot and KV");
        CHECK(qwen_seq_add(c, pcm[0], samples[0], prompt[0], n_prompt[0], &rp, &s1) == QWEN_OK, "fits again after abort");
        CHECK(qwen_seq_abort(c, 7) == QWEN_ERR_INVALID && qwen_step(c, NULL, &n) == QWEN_ERR_INVALID, "bad arguments");
        qwen_free(c); /* frees the running sequence too (ASan checks) */
    }
    for (int i = 0; i < N_CLIPS; i++) {
        free(pcm[i]);
        free(prompt[i]);
    }
}

/* ==== Encoder window cache: reused windows give the same tokens and logits ==== */

#define CACHE_GEN 6

/* Greedy ids and logits hashes of one clip, alone in c (no EOS: CACHE_GEN tokens). */
static void run_alone(qwen_context *c, const float *pcm, int n, int32_t *ids, uint64_t *hashes) {
    const int32_t eos[1] = {0x7fffffff};
    qwen_run_params rp = qwen_default_run_params();
    rp.eos_ids = eos;
    rp.n_eos_ids = 1;
    rp.max_new_tokens = CACHE_GEN;
    int n_prompt, got = 0, vocab = 0;
    int32_t *prompt = make_prompt(c, qwen_audio_token_count(c, n), 2, &n_prompt);
    int32_t tok;
    qwen_status st = qwen_begin(c, pcm, n, prompt, n_prompt, &rp);
    CHECK(st == QWEN_OK, "cache: begin");
    while (st == QWEN_OK && ((st = qwen_next(c, &tok)) == QWEN_OK || (st == QWEN_DONE && tok >= 0)))
        if (tok >= 0 && got < CACHE_GEN) {
            hashes[got] = hash_logits(qwen_last_logits(c, &vocab), vocab);
            ids[got++] = tok;
        }
    CHECK(got == CACHE_GEN, "cache: runs to its limit");
    free(prompt);
}

static void test_encoder_cache(const char *model) {
    char err[512];
    qwen_params pon = qwen_default_params(), poff = qwen_default_params();
    poff.encoder_cache_windows = -1;
    qwen_context *on = qwen_load(model, &pon, err, sizeof(err)), *off = qwen_load(model, &poff, err, sizeof(err));
    CHECK(on && off, "cache: load with and without");
    if (!on || !off) {
        qwen_free(on);
        qwen_free(off);
        return;
    }
    /* A turn that grows: 17 s (two complete 8 s windows), then 20 s of the same audio, then
     * 20 s whose first sample differs (its first window's frames differ). */
    const int grown = 20 * 16000, early = 17 * 16000;
    float *pcm = make_clip(grown, 3), *changed = make_clip(grown, 3);
    changed[0] += 0.05f;
    const float *clips[3] = {pcm, pcm, changed};
    const int lengths[3] = {early, grown, grown};
    const int64_t hits[2] = {0, 2}, misses[2] = {2, 2};
    for (int i = 0; i < 3; i++) {
        int32_t ids_on[CACHE_GEN], ids_off[CACHE_GEN];
        uint64_t h_on[CACHE_GEN], h_off[CACHE_GEN];
        run_alone(on, clips[i], lengths[i], ids_on, h_on);
        run_alone(off, clips[i], lengths[i], ids_off, h_off);
        CHECK(!memcmp(ids_on, ids_off, sizeof(ids_on)) && !memcmp(h_on, h_off, sizeof(h_on)),
              "cache: the same ids and logits with and without it");
        if (i < 2)
            CHECK(qwen_get_info(on, "encoder_cache_hits") == hits[i] &&
                      qwen_get_info(on, "encoder_cache_misses") == misses[i],
                  "cache: hits on the complete windows of the same audio");
    }
    /* The changed first window is new; the second may be too, where the mel's clamp to its
     * loudest frame moved: either way a lookup per complete window, a new entry per miss. */
    const int64_t all_misses = qwen_get_info(on, "encoder_cache_misses");
    CHECK(all_misses >= 3 && all_misses + qwen_get_info(on, "encoder_cache_hits") == 6 &&
              qwen_get_info(on, "encoder_cache_windows") == all_misses,
          "cache: a changed window misses");
    CHECK(qwen_get_info(off, "encoder_cache_hits") == 0 && qwen_get_info(off, "encoder_cache_misses") == 0 &&
              qwen_get_info(off, "encoder_cache_windows") == 0,
          "cache: off is off");
    /* Capacity 1: the second window evicts the first. A rerun alone looks both up before its pass
     * (QW_MAX_WINDOWS_PER_PASS): the first is gone, the second still there. */
    qwen_params pone = qwen_default_params();
    pone.encoder_cache_windows = 1;
    qwen_context *small = qwen_load(model, &pone, err, sizeof(err));
    CHECK(small != NULL, "cache: load with one window");
    if (small) {
        int32_t ids[CACHE_GEN];
        uint64_t h[CACHE_GEN];
        run_alone(small, pcm, grown, ids, h);
        run_alone(small, pcm, grown, ids, h);
        CHECK(qwen_get_info(small, "encoder_cache_windows") == 1 && qwen_get_info(small, "encoder_cache_hits") == 1 &&
                  qwen_get_info(small, "encoder_cache_misses") == 3,
              "cache: least recently used evicted");
        qwen_free(small);
    }
    free(pcm);
    free(changed);
    qwen_free(on);
    qwen_free(off);
}

/* ==== Prefix cache: a prompt that starts like a kept one gives the same tokens and logits ==== */

static void test_prefix_cache(const char *model, qwen_precision precision, int prefill_chunk) {
    char err[512];
    qwen_params pon = qwen_default_params(), poff = qwen_default_params();
    pon.precision = poff.precision = precision;
    pon.prefill_chunk = poff.prefill_chunk = prefill_chunk;
    poff.prefix_cache_tokens = -1;
    poff.encoder_cache_windows = -1;
    qwen_context *on = qwen_load(model, &pon, err, sizeof(err)), *off = qwen_load(model, &poff, err, sizeof(err));
    CHECK(on && off, "prefix: load with and without");
    if (!on || !off) {
        qwen_free(on);
        qwen_free(off);
        return;
    }
    /* A turn that grows (17 s: two complete windows; 20 s; 25 s: three), then other audio. */
    const int lengths[4] = {17 * 16000, 20 * 16000, 25 * 16000, 20 * 16000};
    float *pcm = make_clip(25 * 16000, 5), *other = make_clip(20 * 16000, 6);
    int64_t reused = 0;
    for (int i = 0; i < 4; i++) {
        int32_t ids_on[CACHE_GEN], ids_off[CACHE_GEN];
        uint64_t h_on[CACHE_GEN], h_off[CACHE_GEN];
        const float *clip = i < 3 ? pcm : other;
        run_alone(on, clip, lengths[i], ids_on, h_on);
        run_alone(off, clip, lengths[i], ids_off, h_off);
        CHECK(!memcmp(ids_on, ids_off, sizeof(ids_on)) && !memcmp(h_on, h_off, sizeof(h_on)),
              "prefix: the same ids and logits with and without it");
        /* kept: audio start + the complete windows' 104 rows each, down to a chunk boundary */
        const int64_t kept_before = i == 0 ? 0 : ((1 + 208) / prefill_chunk) * prefill_chunk;
        if (i == 1 || i == 2) reused += kept_before;
        CHECK(qwen_get_info(on, "prefix_cache_hits") == (i == 0 ? 0 : i < 3 ? i : 2) &&
                  qwen_get_info(on, "prefix_cache_tokens_reused") == reused,
              "prefix: the growing turn starts after its kept prefix; other audio does not");
    }
    const int64_t held = qwen_get_info(on, "prefix_cache_tokens");
    CHECK(held == ((1 + 312) / prefill_chunk) * prefill_chunk + ((1 + 208) / prefill_chunk) * prefill_chunk,
          "prefix: the longer prefix replaced the one it grew from; the other audio's is kept too");
    CHECK(qwen_get_info(off, "prefix_cache_hits") == 0 && qwen_get_info(off, "prefix_cache_tokens") == 0,
          "prefix: off is off");
    free(pcm);
    free(other);
    qwen_free(on);
    qwen_free(off);
}

static void write_bytes(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (f) { fwrite(data, 1, len, f); fclose(f); }
}
static void write_file(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

int main(void) {
    char err[512];
    CHECK(strcmp(qwen_version(), "0.1.0") == 0, "version");
    CHECK(qwen_best_isa() >= QWEN_ISA_SCALAR, "best isa");
    CHECK(qwen_load(NULL, NULL, err, sizeof(err)) == NULL && err[0], "NULL dir");
    CHECK(qwen_load("/nonexistent/dir", NULL, err, sizeof(err)) == NULL && strstr(err, "config.json"), "missing dir");
    CHECK(qwen_load("/nonexistent/dir", NULL, NULL, 0) == NULL, "missing dir, no err buffer");

    char dir[] = "/tmp/qwen_api_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char path[600];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    write_file(path, "{\"thinker_config\": {\"audio_config\": {");
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "JSON"), "truncated config");
    write_file(path, "{\"thinker_config\": {\"audio_config\": {}, \"text_config\": {}}}");
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "num_mel_bins"), "missing keys");
    static const char good_config[] =
        "{\"thinker_config\": {\"audio_config\": {\"num_mel_bins\": 128, \"d_model\": 64, \"encoder_layers\": 1,"
        "\"encoder_attention_heads\": 4, \"encoder_ffn_dim\": 64, \"output_dim\": 64, \"downsample_hidden_size\": 8,"
        "\"n_window\": 50, \"n_window_infer\": 800}, \"text_config\": {\"hidden_size\": 64, \"intermediate_size\": 64,"
        "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"vocab_size\": 100}}}";
    write_file(path, good_config);
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "safetensors"), "no weights");
    /* Values the loader would divide by, cast out of range, or size arrays by: refused by name (each
     * put first in text_config: the first of a repeated key is the one read). */
    static const struct { const char *text, *key; } bad[] = {
        {"\"num_key_value_heads\": 0", "num_key_value_heads"},  /* n_heads % 0 (a fuzzer's first find) */
        {"\"num_key_value_heads\": 8", "num_key_value_heads"},  /* more than the 4 query heads */
        {"\"head_dim\": -2", "head_dim"},
        {"\"hidden_size\": 64.5", "hidden_size"},               /* not a whole number */
        {"\"vocab_size\": 1e300", "vocab_size"},                /* (int)1e300 is undefined */
        {"\"intermediate_size\": 1e6", "intermediate_size"},    /* past the bound */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[1024];
        const char *tc = strstr(good_config, "\"text_config\": {") + strlen("\"text_config\": {");
        snprintf(text, sizeof(text), "%.*s%s, %s", (int)(tc - good_config), good_config, bad[i].text, tc);
        write_file(path, text);
        CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, bad[i].key) && !strstr(err, "safetensors"),
              "config value refused by name");
        if (!strstr(err, bad[i].key)) fprintf(stderr, "  %s: got %s\n", bad[i].text, err);
    }
    write_file(path, good_config);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    write_file(path, "\xff\xff\xff\xff\xff\xff\xff\x7f{}");
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "header"), "bad header length");
    write_bytes(path, "\x0a\x00\x00\x00\x00\x00\x00\x00{\"a\": {}} ", 18);
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "bad entry"), "bad tensor entry");
    { /* a shape whose element count wraps size_t to 0 must not pass as a 0-byte tensor */
        const char h[] = "{\"w\": {\"dtype\": \"F32\", \"shape\": [8589934592, 2147483648, 1, 1], \"data_offsets\": [0, 0]}}";
        char buf[160] = {(char)(sizeof(h) - 1)};
        memcpy(buf + 8, h, sizeof(h) - 1);
        write_bytes(path, buf, 8 + sizeof(h) - 1);
        CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "inconsistent"), "shape overflow");
    }
    write_bytes(path, "\x02\x00\x00\x00\x00\x00\x00\x00{}", 10);
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "missing"), "missing tensors");
    if (!strstr(err, "missing")) fprintf(stderr, "  got: %s\n", err);
    qwen_params p = qwen_default_params();
    p.isa = (qwen_isa)99;
    CHECK(qwen_load(dir, &p, err, sizeof(err)) == NULL && strstr(err, "not supported"), "bad isa");
    remove(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    remove(path);
    rmdir(dir);

    /* NULL contexts are errors, not crashes. */
    int32_t tok;
    CHECK(qwen_next(NULL, &tok) == QWEN_ERR_INVALID, "next NULL");
    CHECK(qwen_begin(NULL, NULL, 0, NULL, 0, NULL) == QWEN_ERR_INVALID, "begin NULL");
    CHECK(qwen_audio_token_count(NULL, 100) == -1, "count NULL");
    qwen_free(NULL);

    const char *model = getenv("QWEN_TEST_MODEL");
    if (model && *model) {
        qwen_context *a = qwen_load(model, NULL, err, sizeof(err));
        qwen_context *b = qwen_load(model, NULL, err, sizeof(err));
        CHECK(a && b, "two contexts");
        if (a && b) {
            int n = 16000;
            float *pcm = calloc((size_t)n, sizeof(float));
            for (int i = 0; i < n; i++) pcm[i] = 0.1f * (float)((i * 7919) % 200 - 100) / 100.0f;
            int64_t na = qwen_audio_token_count(a, n);
            CHECK(na == 13, "13 tokens per second");
            int32_t bad[3] = {1, 2, 3};
            CHECK(qwen_begin(a, pcm, n, bad, 3, NULL) == QWEN_ERR_INVALID && strstr(qwen_last_error(a), "placeholders"),
                  "placeholder count checked");
            CHECK(qwen_next(a, &tok) == QWEN_ERR_INVALID, "next before begin");
            int32_t *ids = malloc((size_t)(na + 2) * sizeof(int32_t));
            ids[0] = (int32_t)qwen_model_info(a, "audio_start_token_id");
            for (int i = 0; i < na; i++) ids[1 + i] = (int32_t)qwen_model_info(a, "audio_token_id");
            ids[na + 1] = (int32_t)qwen_model_info(a, "audio_end_token_id");
            qwen_run_params rp = qwen_default_run_params();
            rp.max_new_tokens = 5;
            int32_t out_a[5], out_b[5];
            int got_a = 0, got_b = 0;
            CHECK(qwen_begin(a, pcm, n, ids, (int)na + 2, &rp) == QWEN_OK, "begin a");
            CHECK(qwen_begin(b, pcm, n, ids, (int)na + 2, &rp) == QWEN_OK, "begin b");
            /* Interleave the two contexts: results must not interfere. */
            for (int i = 0; i < 5; i++) {
                if (got_a == i && qwen_next(a, &tok) >= 0 && tok >= 0) out_a[got_a++] = tok;
                if (got_b == i && qwen_next(b, &tok) >= 0 && tok >= 0) out_b[got_b++] = tok;
            }
            CHECK(got_a == got_b && got_a > 0 && memcmp(out_a, out_b, (size_t)got_a * sizeof(int32_t)) == 0,
                  "contexts agree");
            free(ids);
            free(pcm);
        }
        qwen_free(a);
        qwen_free(b);
        test_batch(model, QWEN_PRECISION_EXACT);
        test_encoder_cache(model);
        test_prefix_cache(model, QWEN_PRECISION_EXACT, 64);
        test_prefix_cache(model, QWEN_PRECISION_EXACT, 23);
        test_prefix_cache(model, QWEN_PRECISION_FAST, 64);
        /* FAST: int8 decoder weights; the same contract (bitwise alone == batched) */
        test_batch(model, QWEN_PRECISION_FAST);
        qwen_params pf = qwen_default_params();
        pf.precision = QWEN_PRECISION_FAST;
        qwen_context *f = qwen_load(model, &pf, err, sizeof(err));
        CHECK(f && qwen_get_precision(f) == QWEN_PRECISION_FAST && strstr(qwen_get_kernels(f), "int8"),
              "fast context names its int8 kernels");
        qwen_free(f);
        pf.precision = (qwen_precision)7;
        CHECK(qwen_load(model, &pf, err, sizeof(err)) == NULL && strstr(err, "precision"), "bad precision");
        qwen_context *e = qwen_load(model, NULL, err, sizeof(err));
        CHECK(e && qwen_get_precision(e) == QWEN_PRECISION_EXACT && !strstr(qwen_get_kernels(e), "int8"),
              "exact by default");
        qwen_free(e);
        CHECK(!strcmp(qwen_precision_name(QWEN_PRECISION_FAST), "fast") &&
                  !strcmp(qwen_precision_name(QWEN_PRECISION_EXACT), "exact"),
              "precision names");
    }
    printf("api: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
