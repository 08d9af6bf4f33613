/*
 * API — context life cycle, the pull-style transcription loop and the
 * stage entry points of include/qwen.h.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ==== Helpers ==== */

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

/* ==== Library ==== */

const char *qwen_version(void) { return "0.1.0"; }

qwen_params qwen_default_params(void) { return (qwen_params){0, QWEN_ISA_AUTO, 0}; }

qwen_run_params qwen_default_run_params(void) { return (qwen_run_params){0, NULL, 0, NULL, NULL}; }

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

/* ==== Context ==== */

void qwen_free(qwen_context *ctx) {
    if (!ctx) return;
    qw_pool_free(ctx->pool);
    qw_safetensors_close(&ctx->st);
    for (int i = 0; i < ctx->n_owned; i++) free(ctx->owned[i]);
    free(ctx->owned);
    free(ctx->k_cache);
    free(ctx->v_cache);
    free(ctx->logits);
    free(ctx->x);
    free(ctx->scratch);
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
    int isa = 0;
    ctx->k = qw_kernels_for(p.isa, &isa);
    if (!ctx->k) {
        snprintf(err, err_size, "kernel set '%s' is not supported by this CPU", qwen_isa_name(p.isa));
        qwen_free(ctx);
        return NULL;
    }
    ctx->isa = (qwen_isa)isa;
    int n = p.n_threads > 0 ? p.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    ctx->n_threads = n > 0 ? n : 1;
    int rc = qw_config_load(model_dir, &ctx->cfg, err, err_size);
    if (!rc) rc = qw_safetensors_open(model_dir, &ctx->st, err, err_size);
    if (!rc) rc = qw_encoder_load(ctx, err, err_size);
    if (!rc) rc = qw_decoder_load(ctx, err, err_size);
    if (!rc && qw_mel_init(ctx)) rc = QWEN_ERR_NOMEM;
    if (!rc) {
        ctx->logits = malloc((size_t)ctx->cfg.vocab * sizeof(float));
        ctx->pool = qw_pool_create(ctx->n_threads);
        if (!ctx->logits || !ctx->pool) rc = QWEN_ERR_NOMEM;
    }
    if (!rc && p.max_context > 0 && qw_kv_reserve(ctx, p.max_context)) rc = QWEN_ERR_NOMEM;
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
int qwen_get_threads(const qwen_context *ctx) { return ctx ? ctx->n_threads : 0; }

int64_t qwen_model_info(const qwen_context *ctx, const char *key) {
    if (!ctx || !key) return -1;
    const qw_config *c = &ctx->cfg;
    struct { const char *k; int64_t v; } t[] = {
        {"vocab_size", c->vocab}, {"hidden_size", c->hidden}, {"audio_token_id", c->audio_token_id},
        {"audio_start_token_id", c->audio_start_id}, {"audio_end_token_id", c->audio_end_id},
        {"num_mel_bins", c->n_mels}, {"encoder_layers", c->enc_layers}, {"decoder_layers", c->dec_layers},
        {"output_dim", c->output_dim}, {"d_model", c->d_model}, {"tie_word_embeddings", c->tie_embeddings},
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

/* mel + encoder into a new buffer [n_tokens, output_dim]; times the stages. */
static qwen_status encode_pcm(qwen_context *ctx, const float *pcm, int64_t n_samples, float **out, int64_t *n_tok) {
    int64_t nf = qw_mel_frames(n_samples);
    *n_tok = qw_encoder_tokens(ctx, nf);
    *out = NULL;
    if (*n_tok <= 0) return QWEN_OK;
    float *mel = malloc((size_t)ctx->cfg.n_mels * (size_t)nf * sizeof(float));
    float *emb = malloc((size_t)*n_tok * ctx->cfg.output_dim * sizeof(float));
    if (!mel || !emb) {
        free(mel); free(emb);
        return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for %lld mel frames", (long long)nf);
    }
    double t0 = qw_now_ms();
    qwen_status st = qw_mel(ctx, pcm, n_samples, mel, nf);
    double t1 = qw_now_ms();
    if (st == QWEN_OK) st = qw_encode(ctx, mel, nf, emb);
    ctx->t_mel += t1 - t0;
    ctx->t_enc += qw_now_ms() - t1;
    free(mel);
    if (st != QWEN_OK) {
        free(emb);
        return st;
    }
    *out = emb;
    return QWEN_OK;
}

qwen_status qwen_encode_audio(qwen_context *ctx, const float *pcm, int64_t n_samples, float *out, int64_t *n_tokens) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (!n_tokens || n_samples < 0 || (n_samples > 0 && !pcm)) return qw_fail(ctx, QWEN_ERR_INVALID, "bad arguments to qwen_encode_audio");
    ctx->abort_cb = NULL; /* a stage call has no abort callback; drop any from an earlier run */
    ctx->state = 0;
    int64_t n = qwen_audio_token_count(ctx, n_samples);
    if (out && *n_tokens < n) return qw_fail(ctx, QWEN_ERR_INVALID, "buffer too small: need %lld tokens", (long long)n);
    *n_tokens = n;
    if (!out || n == 0) return QWEN_OK;
    float *emb;
    int64_t got;
    qwen_status st = encode_pcm(ctx, pcm, n_samples, &emb, &got);
    if (st != QWEN_OK) return st;
    memcpy(out, emb, (size_t)got * ctx->cfg.output_dim * sizeof(float));
    free(emb);
    return QWEN_OK;
}

/* ==== Transcription ==== */

qwen_status qwen_begin(qwen_context *ctx, const float *pcm, int64_t n_samples, const int32_t *prompt_ids, int n_prompt,
                       const qwen_run_params *run) {
    if (!ctx) return QWEN_ERR_INVALID;
    const qw_config *c = &ctx->cfg;
    qwen_run_params rp = run ? *run : qwen_default_run_params();
    ctx->state = 0;
    ctx->abort_cb = NULL; /* set below once the arguments are valid */
    ctx->n_past = 0;
    ctx->n_generated = 0;
    ctx->t_mel = ctx->t_enc = ctx->t_prefill = ctx->t_decode = 0;
    ctx->n_prompt = n_prompt;
    ctx->n_audio = 0;
    if (n_samples < 0 || (n_samples > 0 && !pcm) || !prompt_ids || n_prompt <= 0)
        return qw_fail(ctx, QWEN_ERR_INVALID, "qwen_begin needs PCM and a non-empty prompt");
    if (rp.max_new_tokens < 0 || rp.n_eos_ids < 0 || rp.n_eos_ids > 8 || (rp.n_eos_ids && !rp.eos_ids))
        return qw_fail(ctx, QWEN_ERR_INVALID, "bad run parameters");
    int n_placeholders = 0;
    for (int i = 0; i < n_prompt; i++) {
        if (prompt_ids[i] < 0 || prompt_ids[i] >= c->vocab)
            return qw_fail(ctx, QWEN_ERR_INVALID, "prompt token %d is out of the vocabulary", prompt_ids[i]);
        n_placeholders += prompt_ids[i] == c->audio_token_id;
    }
    int64_t n_audio = qwen_audio_token_count(ctx, n_samples);
    if (n_placeholders != n_audio)
        return qw_fail(ctx, QWEN_ERR_INVALID, "the prompt has %d audio placeholders but the audio gives %lld tokens",
                       n_placeholders, (long long)n_audio);
    ctx->abort_cb = rp.abort_callback;
    ctx->abort_ud = rp.abort_user_data;
    ctx->max_new_tokens = rp.max_new_tokens;
    if (rp.n_eos_ids) {
        memcpy(ctx->eos, rp.eos_ids, (size_t)rp.n_eos_ids * sizeof(int32_t));
        ctx->n_eos = rp.n_eos_ids;
    } else { /* <|im_end|>, <|endoftext|>: what the official generate() stops on */
        ctx->eos[0] = 151645;
        ctx->eos[1] = 151643;
        ctx->n_eos = 2;
    }
    ctx->n_audio = (int)n_audio;

    float *emb = NULL;
    int64_t got = 0;
    qwen_status st = encode_pcm(ctx, pcm, n_samples, &emb, &got);
    if (st != QWEN_OK) {
        ctx->abort_cb = NULL;
        return st;
    }
    /* Prompt embeddings with the audio spliced in. */
    const int H = c->hidden;
    float *x = malloc((size_t)n_prompt * H * sizeof(float));
    if (!x) {
        free(emb);
        return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for the prompt");
    }
    int a = 0;
    for (int i = 0; i < n_prompt; i++) {
        if (prompt_ids[i] == c->audio_token_id)
            memcpy(x + (size_t)i * H, emb + (size_t)(a++) * H, (size_t)H * sizeof(float));
        else
            qw_embed_token(ctx, prompt_ids[i], x + (size_t)i * H);
    }
    free(emb);
    double t0 = qw_now_ms();
    st = qw_decoder_forward(ctx, x, n_prompt);
    ctx->t_prefill = qw_now_ms() - t0;
    free(x);
    if (st != QWEN_OK) {
        ctx->abort_cb = NULL;
        return st;
    }
    if (!ctx->x) ctx->x = malloc((size_t)H * sizeof(float));
    if (!ctx->x) return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory");
    ctx->state = 1;
    ctx->last_token = -1;
    return QWEN_OK;
}

static int32_t argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

qwen_status qwen_next(qwen_context *ctx, int32_t *token) {
    if (!ctx) return QWEN_ERR_INVALID;
    if (!token) return qw_fail(ctx, QWEN_ERR_INVALID, "token is NULL");
    *token = -1;
    if (ctx->state == 2) return QWEN_DONE;
    if (ctx->state != 1) return qw_fail(ctx, QWEN_ERR_INVALID, "qwen_next before a successful qwen_begin");
    if (qw_aborted(ctx)) {
        ctx->state = 0;
        ctx->abort_cb = NULL;
        return qw_fail(ctx, QWEN_ERR_ABORTED, "aborted");
    }
    double t0 = qw_now_ms();
    if (ctx->last_token >= 0) { /* feed the previous token; its logits come out */
        qw_embed_token(ctx, ctx->last_token, ctx->x);
        qwen_status st = qw_decoder_forward(ctx, ctx->x, 1);
        if (st != QWEN_OK) {
            ctx->state = 0;
            ctx->abort_cb = NULL;
            return st;
        }
    }
    int32_t t = argmax(ctx->logits, ctx->cfg.vocab);
    ctx->t_decode += qw_now_ms() - t0;
    ctx->n_generated++;
    ctx->last_token = t;
    *token = t;
    for (int i = 0; i < ctx->n_eos; i++)
        if (t == ctx->eos[i]) {
            ctx->state = 2;
            ctx->abort_cb = NULL; /* the run is over: the callback may go away now */
            return QWEN_DONE;
        }
    if (ctx->max_new_tokens && ctx->n_generated >= ctx->max_new_tokens) {
        ctx->state = 2;
        ctx->abort_cb = NULL;
    }
    return QWEN_OK;
}

const float *qwen_last_logits(const qwen_context *ctx, int *n_vocab) {
    if (!ctx) return NULL;
    if (n_vocab) *n_vocab = ctx->cfg.vocab;
    return ctx->logits;
}

double qwen_get_timing(const qwen_context *ctx, const char *key) {
    if (!ctx || !key) return -1;
    if (!strcmp(key, "mel")) return ctx->t_mel;
    if (!strcmp(key, "encoder")) return ctx->t_enc;
    if (!strcmp(key, "prefill")) return ctx->t_prefill;
    if (!strcmp(key, "decode")) return ctx->t_decode;
    if (!strcmp(key, "n_prompt")) return ctx->n_prompt;
    if (!strcmp(key, "n_audio")) return ctx->n_audio;
    if (!strcmp(key, "n_decoded")) return ctx->n_generated;
    return -1;
}
