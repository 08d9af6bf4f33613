/*
 * API — library facts, the context life cycle, the stage entry points, the
 * batch-of-one transcription loop (qwen_begin / qwen_next on top of the
 * sequences of batch.c) and the forced aligner's one pass (qwen_align, the
 * same sequence machinery without a decode step) of include/qwen.h.
 */
#include "internal.h"

#include "amx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ==== Library ==== */

const char *qwen_version(void) { return "0.1.0"; }

qwen_params qwen_default_params(void) { return (qwen_params){0, QWEN_ISA_AUTO, 0, 1, 0, 0, QWEN_PRECISION_EXACT, 0, 0, 0, 0, NULL}; }

qwen_run_params qwen_default_run_params(void) { return (qwen_run_params){0, NULL, 0, NULL, NULL, 0}; }

qwen_isa qwen_best_isa(void) { return (qwen_isa)qw_best_isa(); }

const char *qwen_isa_name(qwen_isa isa) {
    switch (isa) {
    case QWEN_ISA_AUTO: return "auto";
    case QWEN_ISA_SCALAR: return "scalar";
    case QWEN_ISA_AVX2: return "avx2";
    case QWEN_ISA_AVX512: return "avx512";
    case QWEN_ISA_AVX512BF16: return "avx512bf16";
    case QWEN_ISA_NEON: return "neon";
    default: return "unknown";
    }
}

const char *qwen_precision_name(qwen_precision precision) {
    switch (precision) {
    case QWEN_PRECISION_EXACT: return "exact";
    case QWEN_PRECISION_FAST: return "fast";
    default: return "unknown";
    }
}

/* ==== Context ==== */

void qwen_free(qwen_context *ctx) {
    if (!ctx) return;
    qw_pool_free(ctx->pool);
    qw_batch_free(ctx);
    qw_safetensors_close(&ctx->st);
    for (int i = 0; i < ctx->n_owned; i++) free(ctx->owned[i]);
    free(ctx->owned);
    qw_free_weights(ctx);
    qw_wcache_free(ctx);
    free(ctx->scratch);
    free(ctx->enc_scratch);
    free(ctx->q8_act);
    free(ctx->round_a);
    free(ctx);
}

qwen_context *qwen_load(const char *model_dir, const qwen_params *params, char *err, size_t err_size) {
    char dummy[8];
    if (!err || !err_size) {
        err = dummy;
        err_size = sizeof(dummy);
    }
    err[0] = 0;
    if (!model_dir) {
        snprintf(err, err_size, "model_dir is NULL");
        return NULL;
    }
    qwen_params p = params ? *params : qwen_default_params();
    qwen_context *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    if (p.precision != QWEN_PRECISION_EXACT && p.precision != QWEN_PRECISION_FAST) {
        snprintf(err, err_size, "unknown precision %d", (int)p.precision);
        qwen_free(ctx);
        return NULL;
    }
    ctx->precision = p.precision;
    int isa = 0;
    /* FAST with AUTO: the encoder on AMX bf16 tiles where the CPU has them
     * (and the OS grants them), else bf16 dot products where it has those. A kernel set asked
     * for by name is used as it is (with the int8 decoder). */
    const int fast_auto = p.precision == QWEN_PRECISION_FAST && p.isa == QWEN_ISA_AUTO;
    if (fast_auto && qw_kernels_for(QWEN_ISA_AVX512BF16, NULL)) p.isa = QWEN_ISA_AVX512BF16;
    ctx->k = qw_kernels_for(p.isa, &isa);
    if (!ctx->k) {
        snprintf(err, err_size, "kernel set '%s' is not supported by this CPU", qwen_isa_name(p.isa));
        qwen_free(ctx);
        return NULL;
    }
    ctx->isa = (qwen_isa)isa;
    ctx->q8 = qw_q8_for(isa);
    ctx->amx = fast_auto && (isa == QWEN_ISA_AVX512 || isa == QWEN_ISA_AVX512BF16) && qw_amx_available() &&
               qw_amx_selfcheck(); /* a unit that disagrees with double precision is never used */
#ifdef QWEN_HAVE_AMX
    /* the int8 products of 16 rows and more (prefill) on AMX-INT8 tiles, the same bits as the
     * VNNI table which takes fewer rows (every CPU with AMX has AVX-512 VNNI) */
    if (ctx->amx && qw_amx_int8_available() && qw_q8_amx_selfcheck())
        ctx->q8 = &qw_q8_amx;
#endif
    /* FAST: the LM head of a step screened where the int8 table has a screen (quant.h) */
    if (p.precision == QWEN_PRECISION_FAST && ctx->q8->screen && p.head_screen >= 0)
        ctx->head_blocks = p.head_screen == 0 ? 32 : p.head_screen < QW_Q4_MAX_BLOCKS ? p.head_screen : QW_Q4_MAX_BLOCKS;
    if (p.precision == QWEN_PRECISION_FAST)
        snprintf(ctx->kernels_name, sizeof(ctx->kernels_name), "%s%s + int8 %s", ctx->k->name,
                 ctx->amx ? " + amx" : "", ctx->q8->name);
    else
        snprintf(ctx->kernels_name, sizeof(ctx->kernels_name), "%s", ctx->k->name);
    int n = p.n_threads > 0 ? p.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    ctx->n_threads = n > 0 ? n : 1;
    ctx->pool = qw_pool_create(ctx->n_threads); /* before the weights: FAST packs them across it */
    int rc = ctx->pool ? 0 : QWEN_ERR_NOMEM;
    if (!rc) rc = qw_config_load(model_dir, &ctx->cfg, err, err_size);
    /* FAST keeps the KV cache in int8 (bf16 should head_dim not be a multiple of 32): a decode step of
     * B sequences reads B caches, which pass the weights' bytes from a few hundred tokens on. */
    ctx->kv_dt = p.precision != QWEN_PRECISION_FAST      ? QW_F32
                 : ctx->cfg.head_dim % QW_KV8_BLOCK == 0 ? QW_KV8
                                                         : QW_BF16;
    if (!rc) rc = qw_safetensors_open(model_dir, &ctx->st, err, err_size);
    if (!rc) qw_wcache_begin(ctx, p.weight_cache, model_dir);
    if (!rc) rc = qw_encoder_load(ctx, err, err_size);
    if (!rc) rc = qw_decoder_load(ctx, err, err_size);
    if (!rc) qw_trim_weights(ctx);
    if (!rc) rc = qw_wcache_end(ctx, err, err_size);
    if (!rc && qw_mel_init(ctx)) rc = QWEN_ERR_NOMEM;
    if (!rc && qw_batch_init(ctx, &p)) rc = QWEN_ERR_NOMEM;
    if (rc) {
        if (rc == QWEN_ERR_NOMEM && !err[0]) snprintf(err, err_size, "out of memory");
        qwen_free(ctx);
        return NULL;
    }
    ctx->n_threads = qw_pool_threads(ctx->pool);
    return ctx;
}

const char *qwen_last_error(const qwen_context *ctx) { return ctx ? ctx->err : "context is NULL"; }
qwen_isa qwen_get_isa(const qwen_context *ctx) { return ctx ? ctx->isa : QWEN_ISA_AUTO; }
qwen_precision qwen_get_precision(const qwen_context *ctx) { return ctx ? ctx->precision : QWEN_PRECISION_EXACT; }
const char *qwen_get_kernels(const qwen_context *ctx) { return ctx ? ctx->kernels_name : ""; }
int qwen_get_threads(const qwen_context *ctx) { return ctx ? ctx->n_threads : 0; }

int64_t qwen_model_info(const qwen_context *ctx, const char *key) {
    if (!ctx || !key) return -1;
    const qw_config *c = &ctx->cfg;
    struct { const char *k; int64_t v; } t[] = {
        {"vocab_size", c->vocab}, {"hidden_size", c->hidden}, {"audio_token_id", c->audio_token_id},
        {"audio_start_token_id", c->audio_start_id}, {"audio_end_token_id", c->audio_end_id},
        {"num_mel_bins", c->n_mels}, {"encoder_layers", c->enc_layers}, {"decoder_layers", c->dec_layers},
        {"output_dim", c->output_dim}, {"d_model", c->d_model}, {"tie_word_embeddings", c->tie_embeddings},
        {"classify_num", c->aligner ? c->classify_num : -1}, {"timestamp_token_id", c->timestamp_id},
        {"timestamp_segment_time", c->timestamp_ms},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (!strcmp(key, t[i].k)) return t[i].v;
    return -1;
}

int64_t qwen_audio_token_count(const qwen_context *ctx, int64_t n_samples) {
    if (!ctx || n_samples < 0) return -1;
    return qw_encoder_tokens(ctx, qw_mel_frames(n_samples));
}

/* ==== Stages ==== */

qwen_status qwen_compute_mel(qwen_context *ctx, const float *pcm, int64_t n_samples, float *out, int64_t *n_frames) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (!n_frames || n_samples < 0 || (n_samples > 0 && !pcm)) return qw_fail(ctx, QWEN_ERR_INVALID, "bad arguments to qwen_compute_mel");
    ctx->abort_cb = NULL;
    int64_t nf = qw_mel_frames(n_samples);
    if (out && *n_frames < nf) return qw_fail(ctx, QWEN_ERR_INVALID, "mel buffer too small: need %lld frames", (long long)nf);
    *n_frames = nf;
    if (!out || nf == 0) return QWEN_OK;
    return qw_mel(ctx, pcm, n_samples, out, nf);
}

qwen_status qwen_encode_audio(qwen_context *ctx, const float *pcm, int64_t n_samples, float *out, int64_t *n_tokens) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (!n_tokens || n_samples < 0 || (n_samples > 0 && !pcm)) return qw_fail(ctx, QWEN_ERR_INVALID, "bad arguments to qwen_encode_audio");
    ctx->abort_cb = NULL; /* a stage call has no abort callback */
    int64_t n = qwen_audio_token_count(ctx, n_samples);
    if (out && *n_tokens < n) return qw_fail(ctx, QWEN_ERR_INVALID, "buffer too small: need %lld tokens", (long long)n);
    *n_tokens = n;
    if (!out || n == 0) return QWEN_OK;
    const int64_t nf = qw_mel_frames(n_samples);
    float *mel = malloc((size_t)ctx->cfg.n_mels * (size_t)nf * sizeof(float));
    if (!mel) return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for %lld mel frames", (long long)nf);
    qwen_status st = qw_mel(ctx, pcm, n_samples, mel, nf);
    /* In passes of enc_windows_per_pass windows, as a sequence's admission units run it alone. */
    for (int w = 0, nw = qw_encoder_windows(ctx, nf), k = ctx->enc_windows_per_pass; w < nw && st == QWEN_OK; w += k)
        st = qw_encode(ctx, mel, nf, w, w + k < nw ? w + k : nw,
                       out + (size_t)qw_encoder_window_start(ctx, nf, w) * ctx->cfg.output_dim);
    free(mel);
    return st;
}

/* ==== Transcription, batch of one ==== */

static void one_reset(qwen_context *ctx) {
    for (int i = 0; i < ctx->max_seqs; i++) qw_seq_release(ctx, &ctx->seqs[i]);
    ctx->one_seq = -1;
    ctx->one_pending = -1;
    ctx->one_state = 0;
}

/* The event of the batch-of-one sequence in ctx->events after a step: its token and status. */
static qwen_status one_event(qwen_context *ctx, int n, int32_t *token) {
    for (int i = 0; i < n; i++)
        if (ctx->events[i].seq == ctx->one_seq) {
            *token = ctx->events[i].token;
            return ctx->events[i].status;
        }
    *token = -1;
    return QWEN_OK;
}

qwen_status qwen_begin(qwen_context *ctx, const float *pcm, int64_t n_samples, const int32_t *prompt_ids, int n_prompt,
                       const qwen_run_params *run) {
    if (!ctx) return QWEN_ERR_INVALID;
    one_reset(ctx);
    qwen_status st = qwen_seq_add(ctx, pcm, n_samples, prompt_ids, n_prompt, run, &ctx->one_seq);
    if (st != QWEN_OK) return st;
    /* Encoder windows and prefill chunks until the first token. */
    for (int32_t token = -1; token < 0;) {
        int n = 0;
        st = qwen_step(ctx, ctx->events, &n);
        if (st == QWEN_DONE) return qw_fail(ctx, QWEN_ERR_INVALID, "the sequence ended before its first token");
        if (st == QWEN_OK) st = one_event(ctx, n, &token);
        if (st < 0) return st;
        ctx->one_pending = token;
        ctx->one_pending_st = st;
    }
    ctx->one_state = 1;
    return QWEN_OK;
}

qwen_status qwen_next(qwen_context *ctx, int32_t *token) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (!token) return qw_fail(ctx, QWEN_ERR_INVALID, "token is NULL");
    *token = -1;
    if (ctx->one_state == 2) return QWEN_DONE;
    if (ctx->one_state != 1) return qw_fail(ctx, QWEN_ERR_INVALID, "qwen_next before a successful qwen_begin");
    qw_seq *s = &ctx->seqs[ctx->one_seq];
    qwen_status st;
    int32_t t = -1;
    if (ctx->one_pending >= 0) { /* the first token came out of qwen_begin's prefill */
        if (s->abort_cb && s->abort_cb(s->abort_ud)) {
            one_reset(ctx);
            return qw_fail(ctx, QWEN_ERR_ABORTED, "aborted");
        }
        t = ctx->one_pending;
        st = ctx->one_pending_st;
        ctx->one_pending = -1;
    } else {
        int n = 0;
        st = qwen_step(ctx, ctx->events, &n);
        if (st == QWEN_OK) st = one_event(ctx, n, &t);
        if (st < 0) {
            ctx->one_state = 0;
            return st;
        }
    }
    *token = t;
    if (st != QWEN_DONE) return QWEN_OK;
    for (int i = 0; i < s->n_eos; i++)
        if (t == s->eos[i]) {
            ctx->one_state = 2;
            return QWEN_DONE;
        }
    ctx->one_state = 2; /* the limit: this token now, QWEN_DONE on the next call */
    return QWEN_OK;
}

/* ==== Forced alignment: one pass ==== */

qwen_status qwen_align(qwen_context *ctx, const float *pcm, int64_t n_samples, const int32_t *prompt_ids, int n_prompt,
                       const qwen_run_params *run, int32_t *out_classes, float *out_logits, int max_markers,
                       int *n_markers) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (n_markers) *n_markers = 0;
    if (!ctx->cfg.aligner)
        return qw_fail(ctx, QWEN_ERR_INVALID, "not a forced aligner checkpoint (no classify_num head): use qwen_begin");
    if (!n_markers || !prompt_ids || n_prompt <= 0 || max_markers < 0 || (max_markers > 0 && !out_classes))
        return qw_fail(ctx, QWEN_ERR_INVALID, "bad arguments to qwen_align");
    int m = 0;
    for (int i = 0; i < n_prompt; i++) m += prompt_ids[i] == ctx->cfg.timestamp_id;
    *n_markers = m;
    if (m > max_markers)
        return qw_fail(ctx, QWEN_ERR_INVALID, "the prompt has %d timestamp markers but the output has room for %d", m,
                       max_markers);
    one_reset(ctx);
    int seq = -1;
    qwen_status st = qw_seq_new(ctx, pcm, n_samples, prompt_ids, n_prompt, run, 1, &seq);
    if (st != QWEN_OK) return st;
    ctx->seqs[seq].mark_classes = out_classes;
    ctx->seqs[seq].mark_logits = out_logits;
    ctx->one_seq = seq; /* qwen_get_timing reads this pass */
    /* Encoder windows, then prefill chunks: the head at the markers of each. */
    for (;;) {
        int n = 0;
        int32_t token;
        st = qwen_step(ctx, ctx->events, &n);
        if (st == QWEN_DONE) return qw_fail(ctx, QWEN_ERR_INVALID, "the alignment pass ended early");
        if (st == QWEN_OK) st = one_event(ctx, n, &token);
        if (st != QWEN_OK) return st < 0 ? st : QWEN_OK; /* QWEN_DONE: the last chunk ran */
    }
}

const float *qwen_last_logits(qwen_context *ctx, int *n_vocab) {
    if (!ctx) return NULL;
    if (n_vocab) *n_vocab = ctx->cfg.vocab;
    return ctx->one_seq >= 0 ? qwen_seq_logits(ctx, ctx->one_seq, n_vocab) : NULL;
}

double qwen_get_timing(const qwen_context *ctx, const char *key) {
    if (!ctx || !key) return -1;
    if (ctx->one_seq >= 0) return qwen_seq_timing(ctx, ctx->one_seq, key);
    static const char *keys[] = {"mel", "encoder", "prefill", "decode", "n_prompt", "n_audio", "n_decoded"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (!strcmp(key, keys[i])) return 0;
    return -1;
}
