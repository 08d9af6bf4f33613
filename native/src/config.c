/*
 * Config — reads the hyperparameters from the checkpoint's config.json
 * (Qwen3ASRConfig: thinker_config -> audio_config + text_config), and
 * whether it is a forced aligner (thinker model_type "qwen3_forced_aligner":
 * classify_num in thinker_config, timestamp_token_id and
 * timestamp_segment_time at the top level).
 */
#include "internal.h"
#include "json.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *qw_read_file(const char *path, size_t *len); /* safetensors.c */

/* Bounds on what a config may ask for, far above any Qwen3-ASR release (0.6B / 1.7B: widths up to
 * 6144, 16 heads of 128, 28 layers, 151936 tokens), so that the sizes the loader and the passes
 * compute from them (n_heads x head_dim, frames x n_mels, ...) stay far inside int. */
#define QW_MAX_WIDTH (1 << 16)   /* d_model, ffn, hidden, intermediate, output_dim, downsample, n_mels */
#define QW_MAX_COUNT 4096        /* layers, heads, head_dim */
#define QW_MAX_VOCAB (1 << 24)
#define QW_MAX_FRAMES (1 << 16)  /* n_window, n_window_infer, max_source_positions */
#define QW_BAD_INT INT_MIN       /* a number that is not a whole one inside int: every check refuses it */

/* obj[key] into *out, or def when absent; 1 when present. A number that is not a whole one inside
 * int's range reads as QW_BAD_INT (a cast would be undefined for it). */
static int get_int(const qj_value *obj, const char *key, int def, int *out) {
    const qj_value *v = qj_get_type(obj, key, QJ_NUMBER);
    if (!v) {
        *out = def;
        return 0;
    }
    const double x = v->number;
    *out = x > (double)INT_MIN && x <= (double)INT_MAX && x == floor(x) ? (int)x : QW_BAD_INT;
    return 1;
}

static float get_float(const qj_value *obj, const char *key, float def) {
    const qj_value *v = qj_get_type(obj, key, QJ_NUMBER);
    return v ? (float)v->number : def;
}

/* tie_word_embeddings may sit in text_config, thinker_config or the top level. */
static int get_tie(const qj_value *root, const qj_value *thinker, const qj_value *text) {
    const qj_value *objs[3] = {text, thinker, root};
    for (int i = 0; i < 3; i++) {
        const qj_value *v = qj_get_type(objs[i], "tie_word_embeddings", QJ_BOOL);
        if (v) return (int)v->number;
    }
    return 0;
}

int qw_config_load(const char *model_dir, qw_config *c, char *err, size_t err_size) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", model_dir);
    size_t len;
    char *text = qw_read_file(path, &len);
    if (!text) {
        snprintf(err, err_size, "cannot read %s", path);
        return QWEN_ERR_IO;
    }
    char jerr[256] = "";
    qj_value *root = qj_parse(text, len, jerr, sizeof(jerr));
    free(text);
    if (!root) {
        snprintf(err, err_size, "%s: %s", path, jerr);
        return QWEN_ERR_FORMAT;
    }
    const qj_value *thinker = qj_get_type(root, "thinker_config", QJ_OBJECT);
    if (!thinker) thinker = root;
    const qj_value *audio = qj_get_type(thinker, "audio_config", QJ_OBJECT);
    const qj_value *tc = qj_get_type(thinker, "text_config", QJ_OBJECT);
    int rc = QWEN_OK;
    if (!audio || !tc) {
        snprintf(err, err_size, "%s: missing thinker_config.audio_config or text_config", path);
        rc = QWEN_ERR_FORMAT;
        goto done;
    }
    memset(c, 0, sizeof(*c));
    /* Required keys: no silent defaults for the shapes. */
    struct { const qj_value *o; const char *key; int *dst, max; } req[] = {
        {audio, "num_mel_bins", &c->n_mels, QW_MAX_WIDTH},
        {audio, "d_model", &c->d_model, QW_MAX_WIDTH},
        {audio, "encoder_layers", &c->enc_layers, QW_MAX_COUNT},
        {audio, "encoder_attention_heads", &c->enc_heads, QW_MAX_COUNT},
        {audio, "encoder_ffn_dim", &c->enc_ffn, QW_MAX_WIDTH},
        {audio, "output_dim", &c->output_dim, QW_MAX_WIDTH},
        {audio, "downsample_hidden_size", &c->ds_hidden, QW_MAX_WIDTH},
        {audio, "n_window", &c->n_window, QW_MAX_FRAMES},
        {audio, "n_window_infer", &c->n_window_infer, QW_MAX_FRAMES},
        {tc, "hidden_size", &c->hidden, QW_MAX_WIDTH},
        {tc, "intermediate_size", &c->inter, QW_MAX_WIDTH},
        {tc, "num_hidden_layers", &c->dec_layers, QW_MAX_COUNT},
        {tc, "num_attention_heads", &c->n_heads, QW_MAX_COUNT},
        {tc, "vocab_size", &c->vocab, QW_MAX_VOCAB},
    };
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
        if (!get_int(req[i].o, req[i].key, 0, req[i].dst) || *req[i].dst <= 0 || *req[i].dst > req[i].max) {
            snprintf(err, err_size, "%s: missing or invalid \"%s\" (a whole number from 1 to %d)", path, req[i].key,
                     req[i].max);
            rc = QWEN_ERR_FORMAT;
            goto done;
        }
    }
    get_int(audio, "max_source_positions", 1500, &c->max_source_positions);
    get_int(tc, "num_key_value_heads", c->n_heads, &c->n_kv_heads);
    get_int(tc, "head_dim", c->hidden / c->n_heads, &c->head_dim);
    /* the optional ones, as the required: an explicit 0 would divide by zero below and later */
    struct { const char *key; int v, max; } opt[] = {
        {"max_source_positions", c->max_source_positions, QW_MAX_FRAMES},
        {"num_key_value_heads", c->n_kv_heads, c->n_heads},
        {"head_dim", c->head_dim, QW_MAX_COUNT},
    };
    for (size_t i = 0; i < sizeof(opt) / sizeof(opt[0]); i++) {
        if (opt[i].v <= 0 || opt[i].v > opt[i].max) {
            snprintf(err, err_size, "%s: invalid \"%s\" (a whole number from 1 to %d)", path, opt[i].key, opt[i].max);
            rc = QWEN_ERR_FORMAT;
            goto done;
        }
    }
    c->rope_theta = get_float(tc, "rope_theta", 1e6f);
    c->rms_eps = get_float(tc, "rms_norm_eps", 1e-6f);
    const qj_value *ab = qj_get_type(tc, "attention_bias", QJ_BOOL);
    c->attention_bias = ab ? (int)ab->number : 0;
    c->tie_embeddings = get_tie(root, thinker, tc);
    get_int(thinker, "audio_token_id", 151646, &c->audio_token_id);
    get_int(thinker, "audio_start_token_id", 151647, &c->audio_start_id);
    get_int(thinker, "audio_end_token_id", c->audio_start_id < INT_MAX ? c->audio_start_id + 1 : QW_BAD_INT,
            &c->audio_end_id);
    /* The official model builds the classify_num-way head when the thinker's model_type
     * contains "forced_aligner"; the timestamp keys are extra top-level keys of the release. */
    const qj_value *mt = qj_get_type(thinker, "model_type", QJ_STRING);
    c->aligner = mt && strstr(mt->string, "forced_aligner") != NULL;
    if (c->aligner) get_int(thinker, "classify_num", 0, &c->classify_num);
    if (!get_int(root, "timestamp_token_id", -1, &c->timestamp_id))
        get_int(thinker, "timestamp_token_id", -1, &c->timestamp_id);
    const qj_value *seg = qj_get_type(root, "timestamp_segment_time", QJ_NUMBER);
    if (!seg) seg = qj_get_type(thinker, "timestamp_segment_time", QJ_NUMBER);
    c->timestamp_ms = seg && seg->number >= 0 && seg->number < 1e9 ? (int)(seg->number + 0.5) : -1;
    c->n_out = c->aligner ? c->classify_num : c->vocab;

    const qj_value *act = qj_get_type(audio, "activation_function", QJ_STRING);
    const qj_value *hact = qj_get_type(tc, "hidden_act", QJ_STRING);
    if ((act && strcmp(act->string, "gelu")) || (hact && strcmp(hact->string, "silu"))) {
        snprintf(err, err_size, "%s: unsupported activation (want gelu encoder, silu decoder)", path);
        rc = QWEN_ERR_UNSUPPORTED;
    } else if (c->d_model % c->enc_heads || c->n_heads % c->n_kv_heads || c->head_dim % 2 ||
               c->output_dim != c->hidden || c->n_window_infer % (2 * c->n_window)) {
        snprintf(err, err_size, "%s: inconsistent dimensions", path);
        rc = QWEN_ERR_FORMAT;
    } else if (c->aligner && (c->classify_num <= 0 || c->classify_num > QW_MAX_VOCAB)) {
        snprintf(err, err_size, "%s: a forced aligner needs thinker_config.classify_num (1 to %d)", path, QW_MAX_VOCAB);
        rc = QWEN_ERR_FORMAT;
    } else if (c->aligner && (c->timestamp_id < 0 || c->timestamp_id >= c->vocab)) {
        snprintf(err, err_size, "%s: a forced aligner needs a timestamp_token_id inside the vocabulary", path);
        rc = QWEN_ERR_FORMAT;
    }
done:
    qj_free(root);
    return rc;
}
