/*
 * Decoder — the Qwen3 text model: token embeddings (audio placeholders
 * replaced by encoder outputs), layers of RMSNorm -> attention (per-head
 * RMSNorm on q and k, NeoX RoPE, grouped-query, causal, KV cache) ->
 * residual -> RMSNorm -> SwiGLU MLP -> residual, a final RMSNorm and the LM
 * head on the last position only.
 *
 * For audio + text prompts the three multimodal-RoPE position components
 * are equal, so interleaved M-RoPE reduces to ordinary RoPE on 0, 1, 2, ...
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qw_decoder_load(qwen_context *ctx, char *err, size_t err_size) {
    const qw_config *c = &ctx->cfg;
    qw_decoder *D = &ctx->dec;
    qw_loader L = {ctx, err, err_size, 0};
    const int H = c->hidden, hd = c->head_dim, nq = c->n_heads * hd, nkv = c->n_kv_heads * hd;
    char name[256];
#define NAME(...) (snprintf(name, sizeof(name), __VA_ARGS__), name)
    qw_load_mat(&L, &D->embed, "thinker.model.embed_tokens.weight", c->vocab, H);
    D->layers = qw_own(ctx, (size_t)c->dec_layers * sizeof(qw_dec_layer));
    if (!D->layers) return QWEN_ERR_NOMEM;
    for (int l = 0; l < c->dec_layers && !L.rc; l++) {
        qw_dec_layer *y = &D->layers[l];
        char p[128];
        snprintf(p, sizeof(p), "thinker.model.layers.%d", l);
        qw_load_mat(&L, &y->q, NAME("%s.self_attn.q_proj.weight", p), nq, H);
        qw_load_mat(&L, &y->k, NAME("%s.self_attn.k_proj.weight", p), nkv, H);
        qw_load_mat(&L, &y->v, NAME("%s.self_attn.v_proj.weight", p), nkv, H);
        qw_load_mat(&L, &y->o, NAME("%s.self_attn.o_proj.weight", p), H, nq);
        if (c->attention_bias) {
            y->q_b = qw_load_vec(&L, NAME("%s.self_attn.q_proj.bias", p), nq);
            y->k_b = qw_load_vec(&L, NAME("%s.self_attn.k_proj.bias", p), nkv);
            y->v_b = qw_load_vec(&L, NAME("%s.self_attn.v_proj.bias", p), nkv);
            y->o_b = qw_load_vec(&L, NAME("%s.self_attn.o_proj.bias", p), H);
        }
        y->q_norm = qw_load_vec(&L, NAME("%s.self_attn.q_norm.weight", p), hd);
        y->k_norm = qw_load_vec(&L, NAME("%s.self_attn.k_norm.weight", p), hd);
        y->ln1 = qw_load_vec(&L, NAME("%s.input_layernorm.weight", p), H);
        y->ln2 = qw_load_vec(&L, NAME("%s.post_attention_layernorm.weight", p), H);
        qw_load_mat(&L, &y->gate, NAME("%s.mlp.gate_proj.weight", p), c->inter, H);
        qw_load_mat(&L, &y->up, NAME("%s.mlp.up_proj.weight", p), c->inter, H);
        qw_load_mat(&L, &y->down, NAME("%s.mlp.down_proj.weight", p), H, c->inter);
    }
    D->norm = qw_load_vec(&L, "thinker.model.norm.weight", H);
    if (!L.rc) {
        if (!c->tie_embeddings && qw_safetensors_find(&ctx->st, "thinker.lm_head.weight"))
            qw_load_mat(&L, &D->lm_head, "thinker.lm_head.weight", c->vocab, H);
        else
            D->lm_head = D->embed; /* tied */
    }
#undef NAME
    if (L.rc) return L.rc;
    D->rope_inv_freq = qw_own(ctx, (size_t)(hd / 2) * sizeof(float));
    if (!D->rope_inv_freq) return QWEN_ERR_NOMEM;
    for (int i = 0; i < hd / 2; i++) D->rope_inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hd);
    return QWEN_OK;
}

void qw_embed_token(qwen_context *ctx, int32_t id, float *out) {
    const qw_mat *E = &ctx->dec.embed;
    size_t esize = E->dt == QW_F32 ? 4 : 2;
    ctx->k->to_f32(out, (const char *)E->data + (size_t)id * E->cols * esize, E->dt, E->cols);
}

int qw_kv_reserve(qwen_context *ctx, int n_tokens) {
    if (n_tokens <= ctx->kv_cap) return QWEN_OK;
    const qw_config *c = &ctx->cfg;
    int cap = ctx->kv_cap ? ctx->kv_cap : 256;
    while (cap < n_tokens) cap *= 2;
    const size_t row = (size_t)c->n_kv_heads * c->head_dim;
    float *k = malloc((size_t)c->dec_layers * cap * row * sizeof(float));
    float *v = malloc((size_t)c->dec_layers * cap * row * sizeof(float));
    if (!k || !v) {
        free(k); free(v);
        return QWEN_ERR_NOMEM;
    }
    for (int l = 0; l < c->dec_layers && ctx->n_past; l++) {
        memcpy(k + (size_t)l * cap * row, ctx->k_cache + (size_t)l * ctx->kv_cap * row, (size_t)ctx->n_past * row * sizeof(float));
        memcpy(v + (size_t)l * cap * row, ctx->v_cache + (size_t)l * ctx->kv_cap * row, (size_t)ctx->n_past * row * sizeof(float));
    }
    free(ctx->k_cache);
    free(ctx->v_cache);
    ctx->k_cache = k;
    ctx->v_cache = v;
    ctx->kv_cap = cap;
    return QWEN_OK;
}

/* ==== Attention ==== */

typedef struct {
    qwen_context *ctx;
    const float *q;       /* [n, H * hd] */
    const float *kc, *vc; /* layer cache [cap, KV * hd] */
    float *out;           /* [n, H * hd] */
    int n, n_past, heads, kv_heads, hd;
} dec_attn_job;

/* Task = (head, block of up to ATT_QB queries): causal attention over
 * positions 0 .. n_past + i for query i (qw_attention). */
#define ATT_QB 64

static void dec_attn_task(void *arg, int t) {
    dec_attn_job *j = arg;
    const int nb = (j->n + ATT_QB - 1) / ATT_QB;
    const int h = t / nb, i0 = t % nb * ATT_QB, m = j->n - i0 < ATT_QB ? j->n - i0 : ATT_QB;
    const int kvh = h / (j->heads / j->kv_heads), hd = j->hd;
    const size_t kvrow = (size_t)j->kv_heads * hd, qrow = (size_t)j->heads * hd;
    const size_t at = (size_t)i0 * qrow + (size_t)h * hd;
    qw_attention(j->ctx->k, j->out + at, (int)qrow, j->q + at, (int)qrow, m, j->kc + (size_t)kvh * hd,
                 j->vc + (size_t)kvh * hd, (int)kvrow, j->n_past + i0 + m, hd, j->n_past + i0);
}

/* NeoX rotation of one head: pairs (i, i + hd/2). */
static void rope(float *x, const float *inv_freq, int hd, int pos) {
    const int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float a = (float)pos * inv_freq[i];
        float cs = cosf(a), sn = sinf(a);
        float x0 = x[i], x1 = x[i + half];
        x[i] = x0 * cs - x1 * sn;
        x[i + half] = x1 * cs + x0 * sn;
    }
}

/* ==== Forward ==== */

qwen_status qw_decoder_forward(qwen_context *ctx, float *x, int n) {
    const qw_config *c = &ctx->cfg;
    const qw_decoder *D = &ctx->dec;
    const int H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const int nq = nh * hd, nk = nkv * hd, I = c->inter;
    if (qw_kv_reserve(ctx, ctx->n_past + n)) return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory for the KV cache");
    size_t need = (size_t)n * (H + nq + 2 * nk + nq + 2 * I);
    if (need > ctx->scratch_size) {
        free(ctx->scratch);
        ctx->scratch = malloc(need * sizeof(float));
        ctx->scratch_size = ctx->scratch ? need : 0;
        if (!ctx->scratch) return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory in the decoder");
    }
    float *h = ctx->scratch, *q = h + (size_t)n * H, *kk = q + (size_t)n * nq, *v = kk + (size_t)n * nk;
    float *att = v + (size_t)n * nk, *g = att + (size_t)n * nq, *u = g + (size_t)n * I;
    const int p0 = ctx->n_past;

    for (int l = 0; l < c->dec_layers; l++) {
        if (n > 1 && qw_aborted(ctx)) return qw_fail(ctx, QWEN_ERR_ABORTED, "aborted");
        const qw_dec_layer *y = &D->layers[l];
        for (int i = 0; i < n; i++) qw_rmsnorm(h + (size_t)i * H, x + (size_t)i * H, y->ln1, H, c->rms_eps);
        float *qkv_out[3] = {q, kk, v};
        const qw_mat *qkv_w[3] = {&y->q, &y->k, &y->v};
        const float *qkv_b[3] = {y->q_b, y->k_b, y->v_b};
        qw_matmul_n(ctx, 3, qkv_out, h, qkv_w, c->attention_bias ? qkv_b : NULL, n);
        float *kc = ctx->k_cache + (size_t)l * ctx->kv_cap * nk;
        float *vc = ctx->v_cache + (size_t)l * ctx->kv_cap * nk;
        for (int i = 0; i < n; i++) {
            for (int hh = 0; hh < nh; hh++) {
                float *qh = q + (size_t)i * nq + (size_t)hh * hd;
                qw_rmsnorm(qh, qh, y->q_norm, hd, c->rms_eps);
                rope(qh, D->rope_inv_freq, hd, p0 + i);
            }
            for (int hh = 0; hh < nkv; hh++) {
                float *kh = kk + (size_t)i * nk + (size_t)hh * hd;
                qw_rmsnorm(kh, kh, y->k_norm, hd, c->rms_eps);
                rope(kh, D->rope_inv_freq, hd, p0 + i);
            }
            memcpy(kc + (size_t)(p0 + i) * nk, kk + (size_t)i * nk, (size_t)nk * sizeof(float));
            memcpy(vc + (size_t)(p0 + i) * nk, v + (size_t)i * nk, (size_t)nk * sizeof(float));
        }
        dec_attn_job job = {ctx, q, kc, vc, att, n, p0, nh, nkv, hd};
        qw_pool_run(ctx->pool, nh * ((n + ATT_QB - 1) / ATT_QB), dec_attn_task, &job);
        qw_matmul(ctx, h, att, &y->o, y->o_b, n);
        for (size_t i = 0; i < (size_t)n * H; i++) x[i] += h[i];
        for (int i = 0; i < n; i++) qw_rmsnorm(h + (size_t)i * H, x + (size_t)i * H, y->ln2, H, c->rms_eps);
        float *gu_out[2] = {g, u};
        const qw_mat *gu_w[2] = {&y->gate, &y->up};
        qw_matmul_n(ctx, 2, gu_out, h, gu_w, NULL, n);
        qw_swiglu_mt(ctx, g, u, (size_t)n * I); /* SiLU(gate) * up */
        qw_matmul(ctx, h, g, &y->down, NULL, n);
        for (size_t i = 0; i < (size_t)n * H; i++) x[i] += h[i];
    }
    ctx->n_past += n;
    /* Final norm and LM head on the last position only. */
    float *last = h;
    qw_rmsnorm(last, x + (size_t)(n - 1) * H, D->norm, H, c->rms_eps);
    qw_matmul(ctx, ctx->logits, last, &D->lm_head, NULL, 1);
    return QWEN_OK;
}
