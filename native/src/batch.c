/*
 * Batch — the sequences of a context and the scheduling step: qwen_seq_add,
 * qwen_step, qwen_seq_abort and their getters (include/qwen.h).
 *
 * A forced aligner's sequence (qwen_align) takes the same admission units
 * but no decode step: its prefill chunks apply the head at its <timestamp>
 * rows, and it ends with the last chunk.
 *
 * A step does at most one unit of admission work for the oldest sequence
 * that needs it (one encoder window, or one prefill chunk), then one decode
 * step for every sequence that was decoding, all of them in one decoder
 * pass: the weights are streamed once for the whole batch. The decode pass
 * uses the rows-invariant GEMM (matmul_rows) and per-sequence attention, and
 * a sequence's encoder windows and prefill chunks depend on that sequence
 * alone, so every sequence gets the token ids it gets alone.
 *
 * The KV cache of a sequence is one block of cap tokens per layer for keys
 * and one for values, malloc'ed when it is added (pages are only touched as
 * the cache fills) and freed the moment it ends.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEQUENCES 256

/* Task = one decoding sequence of a step: its greedy token from its row of the step's logits. */
typedef struct {
    const float *logits;
    int vocab;
    int32_t *tokens;
} argmax_job;

static void argmax_task(void *arg, int i) {
    const argmax_job *j = arg;
    j->tokens[i] = qw_argmax_row(j->logits + (size_t)i * j->vocab, j->vocab);
}

static int seq_running(const qw_seq *s) { return s->state != QW_SEQ_FREE && s->state != QW_SEQ_ENDED; }

static qw_seq *seq_at(const qwen_context *ctx, int seq) {
    return ctx && seq >= 0 && seq < ctx->max_seqs ? &ctx->seqs[seq] : NULL;
}

void qw_seq_release(qwen_context *ctx, qw_seq *s) {
    if (seq_running(s)) ctx->kv_reserved -= s->cap;
    free(s->prompt);
    free(s->mel);
    free(s->emb);
    free(s->k);
    free(s->v);
    s->prompt = NULL;
    s->mel = s->emb = s->k = s->v = NULL;
    s->abort_cb = NULL;
    s->mark_classes = NULL;
    s->mark_logits = NULL;
    s->state = QW_SEQ_ENDED; /* timings stay readable until the slot is taken again */
}

/* ==== Adding a sequence ==== */

qwen_status qwen_seq_add(qwen_context *ctx, const float *pcm, int64_t n_samples, const int32_t *prompt_ids, int n_prompt,
                         const qwen_run_params *run, int *seq) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (!seq) return qw_fail(ctx, QWEN_ERR_INVALID, "seq is NULL");
    *seq = -1;
    if (ctx->cfg.aligner)
        return qw_fail(ctx, QWEN_ERR_INVALID,
                       "this is a forced aligner checkpoint: it does not generate (use qwen_align)");
    return qw_seq_new(ctx, pcm, n_samples, prompt_ids, n_prompt, run, 0, seq);
}

qwen_status qw_seq_new(qwen_context *ctx, const float *pcm, int64_t n_samples, const int32_t *prompt_ids, int n_prompt,
                       const qwen_run_params *run, int align, int *seq) {
    const qw_config *c = &ctx->cfg;
    qwen_run_params rp = run ? *run : qwen_default_run_params();
    if (n_samples < 0 || (n_samples > 0 && !pcm) || !prompt_ids || n_prompt <= 0)
        return qw_fail(ctx, QWEN_ERR_INVALID, "a sequence needs PCM and a non-empty prompt");
    if (rp.max_new_tokens < 0 || rp.n_eos_ids < 0 || rp.n_eos_ids > 8 || (rp.n_eos_ids && !rp.eos_ids))
        return qw_fail(ctx, QWEN_ERR_INVALID, "bad run parameters");
    int n_placeholders = 0;
    for (int i = 0; i < n_prompt; i++) {
        if (prompt_ids[i] < 0 || prompt_ids[i] >= c->vocab)
            return qw_fail(ctx, QWEN_ERR_INVALID, "prompt token %d is out of the vocabulary", prompt_ids[i]);
        n_placeholders += prompt_ids[i] == c->audio_token_id;
    }
    const int64_t n_audio = qwen_audio_token_count(ctx, n_samples);
    if (n_placeholders != n_audio)
        return qw_fail(ctx, QWEN_ERR_INVALID, "the prompt has %d audio placeholders but the audio gives %lld tokens",
                       n_placeholders, (long long)n_audio);
    int64_t cap = rp.max_new_tokens ? (int64_t)n_prompt + rp.max_new_tokens : ctx->max_context;
    if (cap > ctx->max_context) cap = ctx->max_context;
    if (align) cap = n_prompt; /* one pass over the prompt, nothing generated */
    if (align ? n_prompt > ctx->max_context : n_prompt >= cap)
        return qw_fail(ctx, QWEN_ERR_INVALID, "a prompt of %d tokens leaves no room in max_context (%d tokens)", n_prompt,
                       ctx->max_context);
    if (ctx->kv_budget && cap > ctx->kv_budget)
        return qw_fail(ctx, QWEN_ERR_BUSY, "the sequence needs %lld KV tokens, more than the whole budget of %lld",
                       (long long)cap, (long long)ctx->kv_budget);
    int slot = -1;
    for (int i = 0; i < ctx->max_seqs && slot < 0; i++)
        if (!seq_running(&ctx->seqs[i])) slot = i;
    if (slot < 0) return qw_fail(ctx, QWEN_ERR_BUSY, "all %d sequence slots are in use", ctx->max_seqs);
    if (ctx->kv_budget && ctx->kv_reserved + cap > ctx->kv_budget)
        return qw_fail(ctx, QWEN_ERR_BUSY, "the KV budget is reserved: %lld of %lld tokens in use, %lld needed",
                       (long long)ctx->kv_reserved, (long long)ctx->kv_budget, (long long)cap);

    qw_seq *s = &ctx->seqs[slot];
    memset(s, 0, sizeof(*s));
    const int64_t nf = qw_mel_frames(n_samples);
    const size_t kv = (size_t)c->dec_layers * (size_t)cap * c->n_kv_heads * qw_kv_row(ctx);
    s->prompt = malloc((size_t)n_prompt * sizeof(int32_t));
    s->k = malloc(kv);
    s->v = malloc(kv);
    if (n_audio > 0) {
        s->mel = malloc((size_t)c->n_mels * (size_t)nf * sizeof(float));
        s->emb = malloc((size_t)n_audio * c->hidden * sizeof(float));
    }
    if (!s->prompt || !s->k || !s->v || (n_audio > 0 && (!s->mel || !s->emb))) {
        qw_seq_release(ctx, s);
        s->state = QW_SEQ_FREE;
        return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for a sequence of %lld KV tokens", (long long)cap);
    }
    memcpy(s->prompt, prompt_ids, (size_t)n_prompt * sizeof(int32_t));
    s->n_prompt = n_prompt;
    s->max_new = rp.max_new_tokens;
    if (rp.n_eos_ids) {
        memcpy(s->eos, rp.eos_ids, (size_t)rp.n_eos_ids * sizeof(int32_t));
        s->n_eos = rp.n_eos_ids;
    } else { /* <|im_end|>, <|endoftext|>: what the official generate() stops on */
        s->eos[0] = 151645;
        s->eos[1] = 151643;
        s->n_eos = 2;
    }
    s->cap = (int)cap;
    s->align = align;
    s->n_audio = (int)n_audio;
    s->n_frames = nf;
    s->last_token = -1;
    if (n_audio > 0) {
        ctx->abort_cb = NULL;
        const double t0 = qw_now_ms();
        qwen_status st = qw_mel(ctx, pcm, n_samples, s->mel, nf);
        s->t_mel = qw_now_ms() - t0;
        if (st != QWEN_OK) {
            qw_seq_release(ctx, s);
            s->state = QW_SEQ_FREE;
            return st;
        }
        s->n_windows = qw_encoder_windows(ctx, nf);
    }
    s->state = n_audio > 0 ? QW_SEQ_ENCODE : QW_SEQ_PREFILL;
    s->order = ctx->n_admitted++;
    s->abort_cb = rp.abort_callback;
    s->abort_ud = rp.abort_user_data;
    s->logprobs = rp.logprobs && !align;
    ctx->kv_reserved += cap;
    *seq = slot;
    return QWEN_OK;
}

/* ==== Tokens ==== */

/* Records token t of sequence s: QWEN_DONE (and the sequence released) on
 * an EOS id, at max_new_tokens, or when its KV cache cannot take t. */
static qwen_status take_token(qwen_context *ctx, qw_seq *s, int32_t t) {
    s->last_token = t;
    s->n_generated++;
    int end = s->max_new && s->n_generated >= s->max_new;
    end |= s->n_past >= s->cap; /* no room to feed t back */
    for (int i = 0; i < s->n_eos; i++) end |= t == s->eos[i];
    if (!end) return QWEN_OK;
    qw_seq_release(ctx, s);
    return QWEN_DONE;
}

static void emit(qwen_event *ev, int *n, int seq, int32_t token, qwen_status st, float logprob) {
    ev[*n] = (qwen_event){seq, token, st, logprob};
    (*n)++;
}

/* ==== Log-probabilities (qwen_run_params.logprobs) ==== */

/* The whole head's logits behind the last token of those of the n sequences ss whose head was
 * screened (head_x set: only the best blocks in logits), in one product from the head's input
 * rows the step kept. */
static qwen_status whole_logits(qwen_context *ctx, qw_seq *const *ss, int n) {
    const int H = ctx->cfg.hidden, V = ctx->cfg.vocab;
    int k = 0;
    for (int i = 0; i < n; i++) k += ss[i]->logits && ss[i]->head_x;
    if (!k) return QWEN_OK;
    float *x = malloc((size_t)k * H * sizeof(float)), *out = malloc((size_t)k * V * sizeof(float));
    if (!x || !out) {
        free(x);
        free(out);
        return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for the whole head");
    }
    for (int i = 0, r = 0; i < n; i++)
        if (ss[i]->logits && ss[i]->head_x) memcpy(x + (size_t)r++ * H, ss[i]->head_x, (size_t)H * sizeof(float));
    qw_matmul_rows(ctx, out, x, &ctx->dec.lm_head, NULL, k);
    for (int i = 0, r = 0; i < n; i++)
        if (ss[i]->logits && ss[i]->head_x) { /* logits points into the context's step or prefill buffer */
            memcpy((float *)(uintptr_t)ss[i]->logits, out + (size_t)r++ * V, (size_t)V * sizeof(float));
            ss[i]->head_x = NULL;
        }
    ctx->head_whole_rows += k;
    free(x);
    free(out);
    return QWEN_OK;
}

/* log softmax(s->logits)[token], the whole head's (whole_logits first); tmp holds a vocabulary.
 * A likely token's is log1p of minus the others' probabilities (summed in double): its own
 * probability rounds to 1 in float long before its logarithm is 0. */
static float token_logprob(const qwen_context *ctx, const qw_seq *s, int32_t token, float *tmp) {
    const int V = ctx->cfg.vocab;
    memcpy(tmp, s->logits, (size_t)V * sizeof(float));
    ctx->k->softmax(tmp, V);
    double rest = 0;
    for (int i = 0; i < V; i++) rest += i == token ? 0 : tmp[i];
    if (rest < 0.5) return (float)log1p(-rest);
    return tmp[token] > 0 ? logf(tmp[token]) : -INFINITY;
}

/* Task = one row of logprobs_of: its log-probability, with a vocabulary of tmp of its own. */
typedef struct {
    const qwen_context *ctx;
    qw_seq *const *ss;
    const int32_t *tokens;
    float *tmp, *out;
} logprob_job;

static void logprob_task(void *arg, int i) {
    const logprob_job *j = arg;
    j->out[i] = token_logprob(j->ctx, j->ss[i], j->tokens[i], j->tmp + (size_t)i * j->ctx->cfg.vocab);
}

/* out[i] = the log-probability of tokens[i] under the logits behind the last token of ss[i], for
 * the n sequences ss: the screened ones' whole head rows in one product, then the rows across the
 * pool. NaN each where the memory for it ran out. */
static void logprobs_of(qwen_context *ctx, qw_seq *const *ss, const int32_t *tokens, int n, float *out) {
    float *tmp = malloc((size_t)n * ctx->cfg.vocab * sizeof(float));
    if (tmp && whole_logits(ctx, ss, n) == QWEN_OK) {
        logprob_job job = {ctx, ss, tokens, tmp, out};
        qw_pool_run(ctx->pool, n, logprob_task, &job);
    } else {
        for (int i = 0; i < n; i++) out[i] = NAN;
    }
    free(tmp);
}

/* The log-probabilities of the m decode rows' tokens ([m], 0 for rows that did not ask for them),
 * or NULL when no row asked or there was no memory for the list (the rows that asked then get NaN). */
static float *step_logprobs(qwen_context *ctx, const qw_dec_group *groups, int m, const int32_t *tokens) {
    int n = 0;
    for (int i = 0; i < m; i++) n += groups[i].s->logprobs;
    qw_seq **ss = n ? malloc((size_t)n * sizeof(*ss)) : NULL;
    int32_t *tok = n ? malloc((size_t)n * sizeof(*tok)) : NULL;
    float *lp = n ? calloc((size_t)m + n, sizeof(float)) : NULL; /* [m] results, then [n] of logprobs_of */
    if (ss && tok && lp) {
        for (int i = 0, j = 0; i < m; i++)
            if (groups[i].s->logprobs) {
                tok[j] = tokens[i];
                ss[j++] = groups[i].s;
            }
        logprobs_of(ctx, ss, tok, n, lp + m);
        for (int i = 0, j = 0; i < m; i++)
            if (groups[i].s->logprobs) lp[i] = lp[m + j++];
    } else {
        free(lp);
        lp = NULL;
    }
    free(ss);
    free(tok);
    return lp;
}

/* The log-probability of the token s took (its logits set), where s asked for them; else 0. */
static float seq_logprob(qwen_context *ctx, qw_seq *s, int32_t token) {
    float lp = 0;
    if (s->logprobs && token >= 0 && s->logits) logprobs_of(ctx, &s, &token, 1, &lp);
    return lp;
}

/* ==== Prefill chunks ==== */

/* The rows of s's next prefill chunk (its first takes a kept prefix, if one matches). */
static int prefill_next(qwen_context *ctx, qw_seq *s) {
    if (!s->n_prefilled) qw_prefix_reuse(ctx, s);
    const int left = s->n_prompt - s->n_prefilled;
    return left < ctx->prefill_chunk ? left : ctx->prefill_chunk;
}

/* The chunk's input rows x [n, hidden]: the prompt's embeddings with the audio spliced in. */
static void prefill_rows(qwen_context *ctx, qw_seq *s, int n, float *x) {
    const int H = ctx->cfg.hidden;
    for (int i = 0; i < n; i++) {
        const int32_t id = s->prompt[s->n_prefilled + i];
        if (id == ctx->cfg.audio_token_id)
            memcpy(x + (size_t)i * H, s->emb + (size_t)(s->audio_used++) * H, (size_t)H * sizeof(float));
        else
            qw_embed_token(ctx, id, x + (size_t)i * H);
    }
}

/* After a chunk's pass: counts its n rows; after the last, keeps the prefix and takes the first
 * token from logits (the last row's; NULL for an aligner, whose pass then ends). */
static qwen_status prefill_done(qwen_context *ctx, qw_seq *s, int n, float *logits, const float *head_x,
                                int32_t *token) {
    s->n_prefilled += n;
    if (s->n_prefilled < s->n_prompt) return QWEN_OK;
    qw_prefix_keep(ctx, s);
    free(s->emb);
    s->emb = NULL;
    if (s->align) { /* the aligner's one pass is done: nothing to generate */
        qw_seq_release(ctx, s);
        return QWEN_DONE;
    }
    s->state = QW_SEQ_DECODE;
    s->logits = logits;
    s->head_x = head_x;
    *token = qw_argmax_row(logits, ctx->cfg.vocab);
    return take_token(ctx, s, *token);
}

/* ==== Admission work: one encoder window or one prefill chunk ==== */

static qwen_status admission_unit(qwen_context *ctx, qw_seq *s, int alone, int32_t *token) {
    const qw_config *c = &ctx->cfg;
    const int H = c->hidden;
    *token = -1;
    ctx->abort_cb = s->abort_cb;
    ctx->abort_ud = s->abort_ud;
    qwen_status st = QWEN_OK;
    if (s->state == QW_SEQ_ENCODE) {
        /* Complete windows found in the cache cost no unit: take them all, then encode one (or, with
         * no sequence decoding, the next few in one pass). */
        const int wf = qw_encoder_window_frames(ctx);
        while (s->state == QW_SEQ_ENCODE) {
            const int w = s->windows_done;
            const double t0 = qw_now_ms();
            uint64_t hash[QW_MAX_WINDOWS_PER_PASS] = {0};
            int w1 = w; /* encode windows [w, w1) */
            int hit = 0, hit_next = 0;
            for (; w1 < s->n_windows && w1 - w < (alone ? ctx->enc_windows_per_pass : 1); w1++) {
                const int64_t t0w = qw_encoder_window_start(ctx, s->n_frames, w1), f0 = (int64_t)w1 * wf;
                const size_t n_out = (size_t)(qw_encoder_window_start(ctx, s->n_frames, w1 + 1) - t0w) * H;
                if (f0 + wf <= s->n_frames && qw_enc_cache_get(&ctx->enc_cache, s->mel, s->n_frames, f0, wf,
                                                               c->n_mels, s->emb + (size_t)t0w * H, n_out,
                                                               &hash[w1 - w])) {
                    hit = w1 == w, hit_next = w1 > w; /* a later window found: taken after this pass */
                    break;
                }
            }
            if (!hit) {
                st = qw_encode(ctx, s->mel, s->n_frames, w, w1,
                               s->emb + (size_t)qw_encoder_window_start(ctx, s->n_frames, w) * H);
                for (int i = w; st == QWEN_OK && i < w1; i++) {
                    const int64_t t0w = qw_encoder_window_start(ctx, s->n_frames, i), f0 = (int64_t)i * wf;
                    const size_t n_out = (size_t)(qw_encoder_window_start(ctx, s->n_frames, i + 1) - t0w) * H;
                    if (f0 + wf <= s->n_frames)
                        qw_enc_cache_put(&ctx->enc_cache, hash[i - w], s->mel, s->n_frames, f0, wf, c->n_mels,
                                         s->emb + (size_t)t0w * H, n_out);
                }
            }
            s->t_enc += qw_now_ms() - t0;
            if (st != QWEN_OK) {
                ctx->abort_cb = NULL;
                return st;
            }
            s->windows_done = hit ? w + 1 : w1 + hit_next;
            if (s->windows_done == s->n_windows) {
                free(s->mel);
                s->mel = NULL;
                s->state = QW_SEQ_PREFILL;
            }
            if (!hit) break;
        }
        ctx->abort_cb = NULL;
        return QWEN_OK;
    }
    /* A prefill chunk. An aligner sequence takes the head at its <timestamp>
     * rows instead of the last row. */
    const int n = prefill_next(ctx, s), p0 = s->n_prefilled;
    const int C = c->n_out;
    float *x = malloc((size_t)n * H * sizeof(float));
    int *rows = s->align ? malloc((size_t)n * sizeof(int)) : NULL;
    int n_rows = 0;
    for (int i = 0; rows && i < n; i++)
        if (s->prompt[p0 + i] == c->timestamp_id) rows[n_rows++] = i;
    float *marks = n_rows ? malloc((size_t)n_rows * C * sizeof(float)) : NULL; /* [n_rows, classify_num] */
    if (!x || (s->align && !rows) || (n_rows && !marks)) {
        ctx->abort_cb = NULL;
        free(x);
        free(rows);
        free(marks);
        return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for the prompt");
    }
    prefill_rows(ctx, s, n, x);
    const qw_dec_group g = {s, n, p0 + n == s->n_prompt && !s->align, rows, n_rows};
    const double t0 = qw_now_ms();
    int screened = 0;
    /* the head's screen only where the whole row will not be read anyway (qwen_run_params.logprobs) */
    st = qw_decoder_forward(ctx, x, &g, 1, 0, s->align ? marks : ctx->prefill_logits,
                            s->align || s->logprobs ? NULL : ctx->prefill_x, &screened);
    s->t_prefill += qw_now_ms() - t0;
    ctx->abort_cb = NULL;
    free(x);
    free(rows);
    for (int r = 0; st == QWEN_OK && r < n_rows; r++, s->n_marked++) { /* per marker: the first maximum */
        const float *row = marks + (size_t)r * C;
        s->mark_classes[s->n_marked] = qw_argmax_row(row, C);
        if (s->mark_logits) memcpy(s->mark_logits + (size_t)s->n_marked * C, row, (size_t)C * sizeof(float));
    }
    free(marks);
    if (st != QWEN_OK) return st;
    return prefill_done(ctx, s, n, ctx->prefill_logits, screened ? ctx->prefill_x : NULL, token);
}

/* ==== The step ==== */

qwen_status qwen_step(qwen_context *ctx, qwen_event *events, int *n_events) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (!events || !n_events) return qw_fail(ctx, QWEN_ERR_INVALID, "events and n_events are required");
    *n_events = 0;
    const qw_config *c = &ctx->cfg;
    const int H = c->hidden;
    int held = 0;
    qw_seq *admit = NULL;
    for (int i = 0; i < ctx->max_seqs; i++) {
        qw_seq *s = &ctx->seqs[i];
        s->logits = NULL;
        s->head_x = NULL;
        if (!seq_running(s)) continue;
        held++;
        if (s->abort_cb && s->abort_cb(s->abort_ud)) {
            qw_seq_release(ctx, s);
            emit(events, n_events, i, -1, qw_fail(ctx, QWEN_ERR_ABORTED, "aborted"), 0);
            continue;
        }
        if (s->state != QW_SEQ_DECODE && (!admit || s->order < admit->order)) admit = s;
    }
    if (!held) return QWEN_DONE;

    /* Those decoding now take this step's decode pass; the one admitted below waits for the next. */
    qw_dec_group *groups = ctx->groups;
    int m = 0;
    for (int i = 0; i < ctx->max_seqs; i++)
        if (ctx->seqs[i].state == QW_SEQ_DECODE) groups[m++] = (qw_dec_group){&ctx->seqs[i], 1, 1, NULL, 0};

    /* With int8 weights (FAST) every row of a pass gets the same bits whatever else is in it
     * (quant.h), so a prefill chunk joins the decode pass: one read of the weights for both. In
     * EXACT the chunk takes the GEMM and the decode rows the row-invariant kernels: two passes. */
    const int join = admit && m && admit->state == QW_SEQ_PREFILL && !admit->align &&
                     ctx->precision == QWEN_PRECISION_FAST;
    if (admit && !join) {
        const int slot = (int)(admit - ctx->seqs);
        int32_t token;
        qwen_status st = admission_unit(ctx, admit, !m, &token);
        if (st < 0) qw_seq_release(ctx, admit);
        /* QWEN_DONE with token -1: an aligner's pass ended */
        if (st != QWEN_OK || token >= 0) emit(events, n_events, slot, token, st, seq_logprob(ctx, admit, token));
    }
    if (!m) return QWEN_OK;

    const int n_pre = join ? prefill_next(ctx, admit) : 0; /* rows m .. m + n_pre - 1: the chunk */
    float *x = malloc((size_t)(m + n_pre) * H * sizeof(float));
    qwen_status st = x ? QWEN_OK : qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for a decode step");
    for (int i = 0; i < m && x; i++) qw_embed_token(ctx, groups[i].s->last_token, x + (size_t)i * H);
    if (join && x) {
        ctx->prefill_joined++;
        prefill_rows(ctx, admit, n_pre, x + (size_t)m * H);
        groups[m] = (qw_dec_group){admit, n_pre, admit->n_prefilled + n_pre == admit->n_prompt, NULL, 0};
    }
    /* The head's screen only where no row will read its whole row anyway (qwen_run_params.logprobs):
     * the screen and then those rows' whole product read more than the whole head of all the rows. */
    int asks = join && admit->logprobs;
    for (int i = 0; i < m; i++) asks |= groups[i].s->logprobs;
    const double t0 = qw_now_ms();
    int screened = 0;
    if (st == QWEN_OK)
        st = qw_decoder_forward(ctx, x, groups, m + join, 1, ctx->step_logits, asks ? NULL : ctx->step_x, &screened);
    const double dt = qw_now_ms() - t0;
    free(x);
    int32_t *tokens = ctx->step_tokens;
    if (st == QWEN_OK) { /* the rows' argmax across the pool: a vocabulary each */
        argmax_job aj = {ctx->step_logits, c->vocab, tokens};
        qw_pool_run(ctx->pool, m, argmax_task, &aj);
    }
    for (int i = 0; i < m && st == QWEN_OK; i++) {
        groups[i].s->logits = ctx->step_logits + (size_t)i * c->vocab;
        groups[i].s->head_x = screened ? ctx->step_x + (size_t)i * H : NULL;
    }
    float *logprobs = st == QWEN_OK ? step_logprobs(ctx, groups, m, tokens) : NULL;
    for (int i = 0; i < m; i++) {
        qw_seq *s = groups[i].s;
        const int slot = (int)(s - ctx->seqs);
        if (st != QWEN_OK) {
            qw_seq_release(ctx, s);
            emit(events, n_events, slot, -1, st, 0);
            continue;
        }
        s->t_decode += dt;
        const float lp = logprobs ? logprobs[i] : s->logprobs ? NAN : 0;
        emit(events, n_events, slot, tokens[i], take_token(ctx, s, tokens[i]), lp);
    }
    free(logprobs);
    if (join) { /* its logits, if this was its last chunk, follow the m decode rows' */
        const int slot = (int)(admit - ctx->seqs);
        int32_t token = -1;
        admit->t_prefill += dt;
        if (st == QWEN_OK) st = prefill_done(ctx, admit, n_pre, ctx->step_logits + (size_t)m * c->vocab,
                                             screened ? ctx->step_x + (size_t)m * H : NULL, &token);
        else qw_seq_release(ctx, admit);
        if (st != QWEN_OK || token >= 0) emit(events, n_events, slot, token, st, seq_logprob(ctx, admit, token));
    }
    return QWEN_OK;
}

/* ==== Ending and reading sequences ==== */

qwen_status qwen_seq_abort(qwen_context *ctx, int seq) {
    qw_seq *s = seq_at(ctx, seq);
    if (!ctx) return QWEN_ERR_INVALID;
    if (!s || s->state == QW_SEQ_FREE) return qw_fail(ctx, QWEN_ERR_INVALID, "no sequence in slot %d", seq);
    if (seq_running(s)) qw_seq_release(ctx, s);
    return QWEN_OK; /* an ended sequence: nothing left to stop */
}

const float *qwen_seq_logits(qwen_context *ctx, int seq, int *n_vocab) {
    qw_seq *s = seq_at(ctx, seq);
    if (!s) return NULL;
    if (n_vocab) *n_vocab = ctx->cfg.vocab;
    if (whole_logits(ctx, &s, 1) != QWEN_OK) return NULL; /* a screened head: the whole row now */
    return s->logits;
}

double qwen_seq_timing(const qwen_context *ctx, int seq, const char *key) {
    const qw_seq *s = seq_at(ctx, seq);
    if (!s || !key || s->state == QW_SEQ_FREE) return -1;
    if (!strcmp(key, "mel")) return s->t_mel;
    if (!strcmp(key, "encoder")) return s->t_enc;
    if (!strcmp(key, "prefill")) return s->t_prefill;
    if (!strcmp(key, "decode")) return s->t_decode;
    if (!strcmp(key, "n_prompt")) return s->n_prompt;
    if (!strcmp(key, "n_audio")) return s->n_audio;
    if (!strcmp(key, "n_decoded")) return s->n_generated;
    return -1;
}

int64_t qwen_get_info(const qwen_context *ctx, const char *key) {
    if (!ctx || !key) return -1;
    int active = 0;
    for (int i = 0; i < ctx->max_seqs; i++) active += seq_running(&ctx->seqs[i]);
    if (!strcmp(key, "active")) return active;
    if (!strcmp(key, "free_slots")) return ctx->max_seqs - active;
    if (!strcmp(key, "max_sequences")) return ctx->max_seqs;
    if (!strcmp(key, "kv_reserved")) return ctx->kv_reserved;
    if (!strcmp(key, "kv_budget")) return ctx->kv_budget;
    if (!strcmp(key, "max_context")) return ctx->max_context;
    if (!strcmp(key, "encoder_cache_hits")) return ctx->enc_cache.hits;
    if (!strcmp(key, "encoder_cache_misses")) return ctx->enc_cache.misses;
    if (!strcmp(key, "encoder_cache_windows")) return ctx->enc_cache.n;
    if (!strcmp(key, "prefix_cache_hits")) return ctx->prefix_cache.hits;
    if (!strcmp(key, "prefix_cache_tokens_reused")) return ctx->prefix_cache.tokens_reused;
    if (!strcmp(key, "prefix_cache_tokens")) return ctx->prefix_cache.tokens;
    if (!strcmp(key, "prefill_joined")) return ctx->prefill_joined;
    if (!strcmp(key, "head_blocks")) return ctx->dec.screen ? ctx->head_blocks : 0;
    if (!strcmp(key, "head_screen_rows")) return ctx->dec.screen ? ctx->q8->screen_rows : 0;
    if (!strcmp(key, "head_screened_rows")) return ctx->head_screened_rows;
    if (!strcmp(key, "head_whole_rows")) return ctx->head_whole_rows;
    if (!strcmp(key, "weight_cache")) return ctx->wcache.state == QW_WCACHE_MISS ? 0 : ctx->wcache.state;
    if (!strcmp(key, "weight_cache_errno")) return ctx->wcache.err_no;
    if (!strcmp(key, "weight_cache_bytes")) return (int64_t)ctx->arena_used;
    return -1;
}

/* ==== Context set-up ==== */

int qw_batch_init(qwen_context *ctx, const qwen_params *p) {
    ctx->max_seqs = p->max_sequences > 0 ? p->max_sequences : 1;
    if (ctx->max_seqs > MAX_SEQUENCES) ctx->max_seqs = MAX_SEQUENCES;
    ctx->max_context = p->max_context > 0 ? p->max_context : 8192;
    ctx->prefill_chunk = p->prefill_chunk > 0 ? p->prefill_chunk : 96;
    ctx->enc_windows_per_pass = p->encoder_windows_per_pass > 0 && p->encoder_windows_per_pass < QW_MAX_WINDOWS_PER_PASS
                                    ? p->encoder_windows_per_pass
                                    : QW_MAX_WINDOWS_PER_PASS;
    ctx->kv_budget = p->kv_budget_tokens > 0 ? p->kv_budget_tokens : 0;
    ctx->seqs = calloc((size_t)ctx->max_seqs, sizeof(qw_seq));
    ctx->groups = calloc((size_t)ctx->max_seqs, sizeof(qw_dec_group));
    ctx->events = calloc((size_t)ctx->max_seqs, sizeof(qwen_event));
    ctx->step_logits = malloc((size_t)ctx->max_seqs * ctx->cfg.vocab * sizeof(float));
    ctx->step_tokens = malloc((size_t)ctx->max_seqs * sizeof(int32_t));
    ctx->prefill_logits = malloc((size_t)ctx->cfg.vocab * sizeof(float));
    ctx->step_x = malloc((size_t)ctx->max_seqs * ctx->cfg.hidden * sizeof(float));
    ctx->prefill_x = malloc((size_t)ctx->cfg.hidden * sizeof(float));
    ctx->one_seq = -1;
    const int cache = p->encoder_cache_windows == 0 ? 32 : p->encoder_cache_windows;
    if (qw_enc_cache_init(&ctx->enc_cache, cache > 0 ? cache : 0)) return QWEN_ERR_NOMEM;
    const int64_t prefix = p->prefix_cache_tokens == 0 ? 1024 : p->prefix_cache_tokens;
    qw_prefix_cache_init(&ctx->prefix_cache, prefix > 0 ? prefix : 0);
    return ctx->seqs && ctx->groups && ctx->events && ctx->step_logits && ctx->step_tokens && ctx->prefill_logits &&
                   ctx->step_x && ctx->prefill_x
               ? QWEN_OK
               : QWEN_ERR_NOMEM;
}

void qw_batch_free(qwen_context *ctx) {
    for (int i = 0; ctx->seqs && i < ctx->max_seqs; i++) qw_seq_release(ctx, &ctx->seqs[i]);
    free(ctx->seqs);
    free(ctx->groups);
    free(ctx->events);
    free(ctx->step_logits);
    free(ctx->step_tokens);
    free(ctx->prefill_logits);
    free(ctx->step_x);
    free(ctx->prefill_x);
    qw_enc_cache_free(&ctx->enc_cache);
    qw_prefix_cache_free(&ctx->prefix_cache);
}
