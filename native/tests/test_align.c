/*
 * Forced-alignment tests — qwen_align on a Qwen3-ForcedAligner checkpoint
 * (QWEN_TEST_ALIGNER) next to an ASR one (QWEN_TEST_MODEL): bad input comes
 * back as a status with a message, never a crash; each checkpoint kind
 * refuses the other's calls; the abort callback stops a pass and leaves the
 * context usable; a pass gives the same classes and logits run twice, from a
 * fresh context and (classes where the top two are apart) with other
 * prefill chunks; the classes are the first maximum of the logits.
 */
#include "qwen.h"
#include "check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *make_clip(int n, int seed) {
    float *pcm = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++)
        pcm[i] = 0.1f * (float)(((i + seed * 131) * (7919 + seed * 2)) % 200 - 100) / 100.0f;
    return pcm;
}

/* audio start, placeholders, audio end, then n_words words of 1-2 tokens, each followed by two markers */
static int32_t *make_prompt(qwen_context *c, int64_t n_audio, int n_words, int *n, int *n_markers) {
    const int32_t marker = (int32_t)qwen_model_info(c, "timestamp_token_id");
    int32_t *ids = malloc((size_t)(n_audio + 2 + 4 * n_words) * sizeof(int32_t));
    int k = 0;
    ids[k++] = (int32_t)qwen_model_info(c, "audio_start_token_id");
    for (int64_t i = 0; i < n_audio; i++) ids[k++] = (int32_t)qwen_model_info(c, "audio_token_id");
    ids[k++] = (int32_t)qwen_model_info(c, "audio_end_token_id");
    for (int w = 0; w < n_words; w++) {
        ids[k++] = 1000 + 37 * w;
        if (w % 3 == 1) ids[k++] = 2000 + 11 * w;
        ids[k++] = marker;
        ids[k++] = marker;
    }
    *n = k;
    *n_markers = 2 * n_words;
    return ids;
}

static int first_max(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int abort_calls;
static int abort_after(void *ud) { return ++abort_calls > *(const int *)ud; }

typedef struct {
    int32_t *classes;
    float *logits;
    int n;
} run_out;

static qwen_status run_align(qwen_context *c, const float *pcm, int n_samples, const int32_t *ids, int n_ids, int m,
                             int classify, run_out *o) {
    o->classes = calloc((size_t)m + 1, sizeof(int32_t));
    o->logits = calloc(((size_t)m + 1) * classify, sizeof(float));
    o->n = -1;
    return qwen_align(c, pcm, n_samples, ids, n_ids, NULL, o->classes, o->logits, m, &o->n);
}

static void run_free(run_out *o) {
    free(o->classes);
    free(o->logits);
}

static void test_aligner(const char *aligner, const char *asr) {
    char err[512];
    qwen_params p = qwen_default_params();
    p.n_threads = 2;
    qwen_context *a = qwen_load(aligner, &p, err, sizeof(err));
    CHECK(a != NULL, "load the aligner");
    if (!a) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    const int C = (int)qwen_model_info(a, "classify_num");
    CHECK(C > 1 && qwen_model_info(a, "timestamp_token_id") > 0 && qwen_model_info(a, "timestamp_segment_time") > 0,
          "aligner info: classify_num, timestamp_token_id, timestamp_segment_time");

    /* A clip over one encoder window (8 s) and a prompt over several prefill chunks. */
    const int n_samples = 150000;
    float *pcm = make_clip(n_samples, 3);
    const int64_t n_audio = qwen_audio_token_count(a, n_samples);
    int n_ids, m;
    int32_t *ids = make_prompt(a, n_audio, 40, &n_ids, &m);

    /* ==== Bad input ==== */
    int32_t cls[4];
    int nm = -1;
    CHECK(qwen_align(NULL, pcm, n_samples, ids, n_ids, NULL, cls, NULL, 4, &nm) == QWEN_ERR_INVALID, "NULL context");
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, NULL, cls, NULL, 4, NULL) == QWEN_ERR_INVALID, "NULL n_markers");
    CHECK(qwen_align(a, pcm, n_samples, NULL, n_ids, NULL, cls, NULL, 4, &nm) == QWEN_ERR_INVALID, "NULL prompt");
    CHECK(qwen_align(a, pcm, n_samples, ids, 0, NULL, cls, NULL, 4, &nm) == QWEN_ERR_INVALID, "empty prompt");
    CHECK(qwen_align(a, NULL, n_samples, ids, n_ids, NULL, cls, NULL, m, &nm) == QWEN_ERR_INVALID, "NULL pcm");
    CHECK(qwen_align(a, pcm, -1, ids, n_ids, NULL, cls, NULL, m, &nm) == QWEN_ERR_INVALID, "negative n_samples");
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, NULL, NULL, NULL, m, &nm) == QWEN_ERR_INVALID, "NULL out_classes");
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, NULL, cls, NULL, -1, &nm) == QWEN_ERR_INVALID, "negative max_markers");
    nm = -1;
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, NULL, cls, NULL, 4, &nm) == QWEN_ERR_INVALID && nm == m &&
              strstr(qwen_last_error(a), "room"),
          "too few out slots: refused, with the marker count");
    CHECK(qwen_align(a, pcm, 16000, ids, n_ids, NULL, cls, NULL, m, &nm) == QWEN_ERR_INVALID &&
              strstr(qwen_last_error(a), "placeholders"),
          "wrong placeholder count");
    const int32_t saved = ids[n_ids - 3];
    ids[n_ids - 3] = (int32_t)qwen_model_info(a, "vocab_size");
    int32_t *big = calloc((size_t)m, sizeof(int32_t));
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, NULL, big, NULL, m, &nm) == QWEN_ERR_INVALID &&
              strstr(qwen_last_error(a), "vocabulary"),
          "token outside the vocabulary");
    ids[n_ids - 3] = saved;
    free(big);

    /* ==== The other kind of checkpoint ==== */
    int seq = 0;
    CHECK(qwen_seq_add(a, pcm, n_samples, ids, n_ids, NULL, &seq) == QWEN_ERR_INVALID && seq == -1 &&
              strstr(qwen_last_error(a), "qwen_align"),
          "seq_add refused on an aligner");
    CHECK(qwen_begin(a, pcm, n_samples, ids, n_ids, NULL) == QWEN_ERR_INVALID && strstr(qwen_last_error(a), "qwen_align"),
          "begin refused on an aligner");
    int32_t tok;
    CHECK(qwen_next(a, &tok) == QWEN_ERR_INVALID, "next refused on an aligner");
    if (asr && *asr) {
        qwen_context *r = qwen_load(asr, &p, err, sizeof(err));
        CHECK(r != NULL, "load the ASR checkpoint");
        if (r) {
            CHECK(qwen_model_info(r, "classify_num") == -1 && qwen_model_info(r, "timestamp_token_id") == -1 &&
                      qwen_model_info(r, "timestamp_segment_time") == -1,
                  "ASR info: no aligner keys");
            int32_t *rids = malloc((size_t)(n_audio + 2) * sizeof(int32_t));
            memcpy(rids, ids, (size_t)(n_audio + 2) * sizeof(int32_t));
            CHECK(qwen_align(r, pcm, n_samples, rids, (int)n_audio + 2, NULL, cls, NULL, 4, &nm) == QWEN_ERR_INVALID &&
                      strstr(qwen_last_error(r), "not a forced aligner"),
                  "align refused on an ASR checkpoint");
            free(rids);
        }
        qwen_free(r);
    }

    /* ==== A pass, again, and from a fresh context ==== */
    run_out o1, o2, o3;
    CHECK(run_align(a, pcm, n_samples, ids, n_ids, m, C, &o1) == QWEN_OK && o1.n == m, "align");
    int in_range = 1, is_argmax = 1, distinct = 0;
    for (int i = 0; i < m; i++) {
        in_range &= o1.classes[i] >= 0 && o1.classes[i] < C;
        is_argmax &= o1.classes[i] == first_max(o1.logits + (size_t)i * C, C);
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= o1.classes[j] == o1.classes[i];
        distinct += !seen;
    }
    CHECK(in_range && is_argmax, "classes are the first maximum of the logits");
    CHECK(distinct > 1, "the classes vary across markers");
    CHECK(qwen_get_timing(a, "n_prompt") == n_ids && qwen_get_timing(a, "n_audio") == n_audio &&
              qwen_get_timing(a, "prefill") > 0 && qwen_get_timing(a, "encoder") > 0,
          "timings of the pass");
    CHECK(qwen_get_info(a, "active") == 0 && qwen_get_info(a, "kv_reserved") == 0, "nothing held after a pass");
    CHECK(run_align(a, pcm, n_samples, ids, n_ids, m, C, &o2) == QWEN_OK && o2.n == m &&
              memcmp(o1.classes, o2.classes, (size_t)m * sizeof(int32_t)) == 0 &&
              memcmp(o1.logits, o2.logits, (size_t)m * C * sizeof(float)) == 0,
          "twice: the same classes and logits, bitwise");
    qwen_context *f = qwen_load(aligner, &p, err, sizeof(err));
    CHECK(f && run_align(f, pcm, n_samples, ids, n_ids, m, C, &o3) == QWEN_OK &&
              memcmp(o1.classes, o3.classes, (size_t)m * sizeof(int32_t)) == 0 &&
              memcmp(o1.logits, o3.logits, (size_t)m * C * sizeof(float)) == 0,
          "fresh context: the same classes and logits, bitwise");
    run_free(&o3);
    qwen_free(f);
    /* Logits optional. */
    int32_t *only = calloc((size_t)m, sizeof(int32_t));
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, NULL, only, NULL, m, &nm) == QWEN_OK && nm == m &&
              memcmp(only, o1.classes, (size_t)m * sizeof(int32_t)) == 0,
          "without logits: the same classes");
    free(only);
    /* No markers: nothing to classify, still a pass. */
    CHECK(qwen_align(a, pcm, n_samples, ids, (int)n_audio + 3, NULL, NULL, NULL, 0, &nm) == QWEN_OK && nm == 0,
          "a prompt without markers");

    /* ==== Other prefill chunks: the same model, other summation orders ==== */
    qwen_params pc = p;
    pc.prefill_chunk = 7;
    qwen_context *ch = qwen_load(aligner, &pc, err, sizeof(err));
    run_out o4;
    CHECK(ch && run_align(ch, pcm, n_samples, ids, n_ids, m, C, &o4) == QWEN_OK && o4.n == m, "align, chunks of 7");
    if (ch && o4.n == m) {
        float worst = 0, scale = 0;
        int same = 1;
        for (int i = 0; i < m; i++) {
            const float *l1 = o1.logits + (size_t)i * C, *l4 = o4.logits + (size_t)i * C;
            float top = -INFINITY, second = -INFINITY;
            for (int k = 0; k < C; k++) {
                worst = fmaxf(worst, fabsf(l1[k] - l4[k]));
                scale = fmaxf(scale, fabsf(l1[k]));
                if (l1[k] > top) { second = top; top = l1[k]; }
                else if (l1[k] > second) second = l1[k];
            }
            if (top - second > 1e-3f * fabsf(top) + 1e-4f) same &= o1.classes[i] == o4.classes[i];
        }
        CHECK(worst <= 1e-4f * scale + 1e-5f, "chunks of 7: logits within 1e-4 of the largest");
        CHECK(same, "chunks of 7: the same classes wherever the top two are apart");
    }
    run_free(&o4);
    qwen_free(ch);

    /* ==== Abort: at once, and in the middle; the context stays usable ==== */
    qwen_run_params rp = qwen_default_run_params();
    int after = 0;
    rp.abort_callback = abort_after;
    rp.abort_user_data = &after;
    int32_t *ac = calloc((size_t)m, sizeof(int32_t));
    abort_calls = 0;
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, &rp, ac, NULL, m, &nm) == QWEN_ERR_ABORTED &&
              strstr(qwen_last_error(a), "abort"),
          "abort at once");
    after = 6; /* inside the encoder or the prefill */
    abort_calls = 0;
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, &rp, ac, NULL, m, &nm) == QWEN_ERR_ABORTED && abort_calls == 7,
          "abort in the middle");
    CHECK(qwen_get_info(a, "active") == 0 && qwen_get_info(a, "kv_reserved") == 0, "an aborted pass frees its KV");
    after = 1 << 30;
    CHECK(qwen_align(a, pcm, n_samples, ids, n_ids, &rp, ac, NULL, m, &nm) == QWEN_OK &&
              memcmp(ac, o1.classes, (size_t)m * sizeof(int32_t)) == 0,
          "after an abort: the same classes");
    free(ac);

    /* ==== KV room: the prompt must fit max_context ==== */
    qwen_params ps = p;
    ps.max_context = n_ids - 1;
    qwen_context *sm = qwen_load(aligner, &ps, err, sizeof(err));
    int32_t *sc = calloc((size_t)m, sizeof(int32_t));
    CHECK(sm && qwen_align(sm, pcm, n_samples, ids, n_ids, NULL, sc, NULL, m, &nm) == QWEN_ERR_INVALID &&
              strstr(qwen_last_error(sm), "max_context"),
          "a prompt over max_context is refused");
    qwen_free(sm);
    ps.max_context = n_ids; /* exactly the prompt: nothing is generated */
    sm = qwen_load(aligner, &ps, err, sizeof(err));
    CHECK(sm && qwen_align(sm, pcm, n_samples, ids, n_ids, NULL, sc, NULL, m, &nm) == QWEN_OK &&
              memcmp(sc, o1.classes, (size_t)m * sizeof(int32_t)) == 0,
          "a prompt of exactly max_context runs");
    qwen_free(sm);
    free(sc);

    /* ==== FAST: int8 decoder linears, the head in the checkpoint's dtype ==== */
    qwen_params pf = p;
    pf.precision = QWEN_PRECISION_FAST;
    qwen_context *fa = qwen_load(aligner, &pf, err, sizeof(err));
    run_out o5;
    CHECK(fa && run_align(fa, pcm, n_samples, ids, n_ids, m, C, &o5) == QWEN_OK && o5.n == m, "align, fast");
    if (fa && o5.n == m) {
        int agree = 0;
        for (int i = 0; i < m; i++) agree += o5.classes[i] == o1.classes[i];
        printf("fast: %d of %d markers in exact's class\n", agree, m);
    }
    run_free(&o5);
    qwen_free(fa);

    run_free(&o1);
    run_free(&o2);
    free(ids);
    free(pcm);
    qwen_free(a);
}

int main(void) {
    int nm = 0;
    CHECK(qwen_align(NULL, NULL, 0, NULL, 0, NULL, NULL, NULL, 0, &nm) == QWEN_ERR_INVALID, "all NULL");
    const char *aligner = getenv("QWEN_TEST_ALIGNER");
    if (aligner && *aligner) test_aligner(aligner, getenv("QWEN_TEST_MODEL"));
    printf("align: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
