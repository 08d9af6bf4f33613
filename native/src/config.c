/*
 * Config — reads the hyperparameters from the checkpoint's config.json
 * (Qwen3ASRConfig: thinker_config -> audio_config + text_config), and
 * whether it is a forced aligner (thinker model_type "qwen3_forced_aligner":
 * classify_num in thinker_config, timestamp_token_id and
 * timestamp_segment_time at the top level).
 */
#include "internal.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *qw_read_file(const char *path, size_t *len); /* safetensors.c */

static int get_int(const qj_value *obj, const char *key, int def, int *out) {
    const qj_value *v = qj_get_type(obj, key, QJ_NUMBER);
    *out = v ? (int)v->number : def;
    return v != NULL;
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
    struct { const qj_value *o; const char *key; int *dst; } req[] = {
        {audio, "num_mel_bins", &c->n_mels},
        {audio, "d_model", &c->d_model},
        {audio, "encoder_layers", &c->enc_layers},
        {audio, "encoder_attention_heads", &c->enc_heads},
        {audio, "encoder_ffn_dim", &c->enc_ffn},
        {audio, "output_dim", &c->output_dim},
        {audio, "downsample_hidden_size", &c->ds_hidden},
        {audio, "n_window", &c->n_window},
        {audio, "n_window_infer", &c->n_window_infer},
        {tc, "hidden_size", &c->hidden},
        {tc, "intermediate_size", &c->inter},
        {tc, "num_hidden_layers", &c->dec_layers},
        {tc, "num_attention_heads", &c->n_heads},
        {tc, "vocab_size", &c->vocab},
    };
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
        if (!get_int(req[i].o, req[i].key, 0, req[i].dst) || *req[i].dst <= 0) {
            snprintf(err, err_size, "%s: missing or invalid \"%s\"", path, req[i].key);
            rc = QWEN_ERR_FORMAT;
            goto done;
        }
    }
    get_int(audio, "max_source_positions", 1500, &c->max_source_positions);
    get_int(tc, "num_key_value_heads", c->n_heads, &c->n_kv_heads);
    get_int(tc, "head_dim", c->hidden / c->n_heads, &c->head_dim);
    c->rope_theta = get_float(tc, "rope_theta", 1e6f);
    c->rms_eps = get_float(tc, "rms_norm_eps", 1e-6f);
    const qj_value *ab = qj_get_type(tc, "attention_bias", QJ_BOOL);
    c->attention_bias = ab ? (int)ab->number : 0;
    c->tie_embeddings = get_tie(root, thinker, tc);
    get_int(thinker, "audio_token_id", 151646, &c->audio_token_id);
    get_int(thinker, "audio_start_token_id", 151647, &c->audio_start_id);
    get_int(thinker, "audio_end_token_id", c->audio_start_id + 1, &c->audio_end_id);
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
    } else if (c->aligner && c->classify_num <= 0) {
        snprintf(err, err_size, "%s: a forced aligner needs thinker_config.classify_num", path);
        rc = QWEN_ERR_FORMAT;
    } else if (c->aligner && (c->timestamp_id < 0 || c->timestamp_id >= c->vocab)) {
        snprintf(err, err_size, "%s: a forced aligner needs a timestamp_token_id inside the vocabulary", path);
        rc = QWEN_ERR_FORMAT;
    }
done:
    qj_free(root);
    return rc;
}
