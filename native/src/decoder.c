/*
 * Decoder — the Qwen3 text model: token embeddings (audio placeholders
 * replaced by encoder outputs), layers of RMSNorm -> attention (per-head
 * RMSNorm on q and k, NeoX RoPE, grouped-query, causal, KV cache) ->
 * residual -> RMSNorm -> SwiGLU MLP -> residual, a final RMSNorm and the LM
 * head on the last position only (or, for the forced aligner, on the rows a
 * group names: its <timestamp> markers; the head then has classify_num rows).
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
        if (ctx->precision == QWEN_PRECISION_FAST) { /* int8 copies replace the linears */
            qw_mat *lin[7] = {&y->q, &y->k, &y->v, &y->o, &y->gate, &y->up, &y->down};
            for (int i = 0; i < 7; i++) qw_quantize_mat(&L, lin[i], NULL);
        }
    }
    D->norm = qw_load_vec(&L, "thinker.model.norm.weight", H);
    if (!L.rc && c->aligner) {
        /* The aligner's head: [classify_num, hidden], its own tensor (never tied). It stays in the
         * checkpoint's dtype for FAST too: it runs only at the marker rows, and f32 products there
         * keep the time bins of the int8 decoder's hidden states. */
        qw_load_mat(&L, &D->lm_head, "thinker.lm_head.weight", c->classify_num, H);
    } else if (!L.rc) {
        if (!c->tie_embeddings && qw_safetensors_find(&ctx->st, "thinker.lm_head.weight"))
            qw_load_mat(&L, &D->lm_head, "thinker.lm_head.weight", c->vocab, H);
        else
            D->lm_head = D->embed; /* tied */
        /* FAST: the LM head in int8 too (README: no greedy token changed on the test sets; half the
         * bytes of bf16 per step). A tied embedding keeps its own entry: only the rows looked up are
         * read back from the checkpoint's file. */
        if (ctx->precision == QWEN_PRECISION_FAST) /* and its 4-bit screen where steps screen the head */
            qw_quantize_mat(&L, &D->lm_head, ctx->head_blocks > 0 ? &D->screen : NULL);
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
    size_t esize = E->dt == QW_F32 ? 4 : 2; /* never QW_Q8: embeddings keep the checkpoint's dtype */
    ctx->k->to_f32(out, (const char *)E->data + (size_t)id * E->cols * esize, E->dt, E->cols);
}

/* ==== Attention ==== */

typedef struct {
    qwen_context *ctx;
    const qw_dec_group *groups;
    const int *row0, *task0;  /* per group: its first row, its first task */
    int n_groups;
    const float *q;           /* [rows, H * hd] */
    float *out;               /* [rows, H * hd] */
    int layer, heads, kv_heads, hd;
} dec_attn_job;

/* Task = (group, KV head, block of up to ATT_QB queries): causal attention
 * of the group's rows over its sequence's cache, positions 0 .. n_past + i
 * for its query i, for all the query heads that share the KV head in one
 * qw_attention call, which reads the head's run of keys and values once.
 * Each head's result is what it is computed alone. */
#define ATT_QB 128

static void dec_attn_task(void *arg, int t) {
    dec_attn_job *j = arg;
    int g = 0;
    while (g + 1 < j->n_groups && t >= j->task0[g + 1]) g++;
    t -= j->task0[g];
    const qw_dec_group *G = &j->groups[g];
    const qw_seq *s = G->s;
    const int nb = (G->n + ATT_QB - 1) / ATT_QB;
    const int kvh = t / nb, i0 = t % nb * ATT_QB, m = G->n - i0 < ATT_QB ? G->n - i0 : ATT_QB;
    const int group = j->heads / j->kv_heads, hd = j->hd;
    const size_t qrow = (size_t)j->heads * hd;
    const size_t head = ((size_t)j->layer * j->kv_heads + kvh) * s->cap * qw_kv_row(j->ctx);
    const int p0 = s->n_past; /* before this pass: the group's rows sit at p0 .. p0 + n - 1 */
    const size_t at = (size_t)(j->row0[g] + i0) * qrow + (size_t)kvh * group * hd;
    qw_attention(j->ctx->k, j->ctx->amx, j->out + at, (int)qrow, j->q + at, (int)qrow, m, group, (const char *)s->k + head,
                 (const char *)s->v + head, j->ctx->kv_dt, hd, p0 + i0 + m, hd, p0 + i0);
}

/* Row `at` of the cache = x (n = head_dim values), in the cache's dtype (bf16: nearest even). */
static void kv_store(const qwen_context *ctx, void *cache, size_t at, const float *x, int n) {
    if (ctx->kv_dt == QW_KV8) {
        ctx->k->kv8_quantize((char *)cache + at * qw_kv8_row_bytes(n), x, n);
    } else if (ctx->kv_dt == QW_BF16) {
        uint16_t *d = (uint16_t *)cache + at * n;
        for (int i = 0; i < n; i++) d[i] = qw_f32_to_bf16(x[i]);
    } else {
        memcpy((float *)cache + at * n, x, (size_t)n * sizeof(float));
    }
}

/* NeoX rotation of one head, pairs (i, i + hd/2), by a row's cos / sin (hd / 2 of each). */
static void rope(float *x, const float *cs, const float *sn, int hd) {
    const int half = hd / 2;
    for (int i = 0; i < half; i++) {
        const float x0 = x[i], x1 = x[i + half];
        x[i] = x0 * cs[i] - x1 * sn[i];
        x[i + half] = x1 * cs[i] + x0 * sn[i];
    }
}

/* Task = one row of a pass: its query and key heads RMS-normed and rotated to its position, its
 * keys and values written to its sequence's cache at [layer, head, position]. Rows are
 * independent, so they run across the pool; each head's arithmetic is the same wherever. */
typedef struct {
    qwen_context *ctx;
    const qw_dec_group *groups;
    const int *row0;
    int n_groups, layer;
    float *q, *k;
    const float *v;
    float *angles; /* [rows][hd]: each row's cos (hd / 2), then its sin, for its position */
} dec_qk_job;

/* The pass's group of row i and that row's position in its sequence. */
static const qw_dec_group *row_group(const dec_qk_job *j, int i, int *pos) {
    int g = 0;
    while (g + 1 < j->n_groups && i >= j->row0[g + 1]) g++;
    *pos = j->groups[g].s->n_past + i - j->row0[g];
    return &j->groups[g];
}

/* Task = one row of a pass: the cos and sin of its position's RoPE angles, once for every layer
 * and head of the pass (sincos for each layer was 5% of a prefill). */
static void dec_angles_task(void *arg, int i) {
    const dec_qk_job *j = arg;
    const int hd = j->ctx->cfg.head_dim;
    int pos;
    row_group(j, i, &pos);
    float *cs = j->angles + (size_t)i * hd, *sn = cs + hd / 2;
    for (int f = 0; f < hd / 2; f++) {
        const float a = (float)pos * j->ctx->dec.rope_inv_freq[f];
        cs[f] = cosf(a), sn[f] = sinf(a);
    }
}

static void dec_qk_task(void *arg, int i) {
    const dec_qk_job *j = arg;
    const qw_config *c = &j->ctx->cfg;
    const qw_dec_layer *y = &j->ctx->dec.layers[j->layer];
    const int hd = c->head_dim, nq = c->n_heads * hd, nk = c->n_kv_heads * hd;
    int pos;
    qw_seq *s = row_group(j, i, &pos)->s;
    const float *cs = j->angles + (size_t)i * hd, *sn = cs + hd / 2;
    for (int hh = 0; hh < c->n_heads; hh++) {
        float *qh = j->q + (size_t)i * nq + (size_t)hh * hd;
        qw_rmsnorm(qh, qh, y->q_norm, hd, c->rms_eps);
        rope(qh, cs, sn, hd);
    }
    for (int hh = 0; hh < c->n_kv_heads; hh++) {
        float *kh = j->k + (size_t)i * nk + (size_t)hh * hd;
        qw_rmsnorm(kh, kh, y->k_norm, hd, c->rms_eps);
        rope(kh, cs, sn, hd);
        const size_t at = ((size_t)j->layer * c->n_kv_heads + hh) * s->cap + pos; /* row [layer, head, pos] */
        kv_store(j->ctx, s->k, at, kh, hd);
        kv_store(j->ctx, s->v, at, j->v + (size_t)i * nk + (size_t)hh * hd, hd);
    }
}

/* ==== Forward ==== */

qwen_status qw_decoder_forward(qwen_context *ctx, float *x, const qw_dec_group *groups, int n_groups, int rows_invariant,
                               float *logits, float *head_x, int *screened) {
    const qw_config *c = &ctx->cfg;
    const qw_decoder *D = &ctx->dec;
    const int H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const int nq = nh * hd, nk = nkv * hd, I = c->inter;
    int n = 0, n_logits = 0, n_tasks = 0;
    for (int g = 0; g < n_groups; g++) {
        const qw_seq *s = groups[g].s;
        if (groups[g].n <= 0 || s->n_past + groups[g].n > s->cap)
            return qw_fail(ctx, QWEN_ERR_INVALID, "decoder pass past a sequence's KV capacity");
        n += groups[g].n;
        n_logits += groups[g].rows ? groups[g].n_rows : groups[g].want_logits;
    }
    if (n_groups <= 0) return QWEN_OK;
    /* + the last layer's rows that reach the head, gathered (xo) */
    size_t need = (size_t)n * (H + nq + 2 * nk + nq + 2 * I + hd) + (size_t)n_logits * 2 * H + 2 * (size_t)n_groups;
    if (need > ctx->scratch_size) {
        free(ctx->scratch);
        ctx->scratch = malloc(need * sizeof(float));
        ctx->scratch_size = ctx->scratch ? need : 0;
        if (!ctx->scratch) return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory in the decoder");
    }
    const int kmax = H > nq ? (H > I ? H : I) : (nq > I ? nq : I); /* the widest K of the int8 linears */
    if (ctx->precision == QWEN_PRECISION_FAST && qw_q8_reserve(ctx, n, kmax))
        return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory in the decoder");
    float *h = ctx->scratch, *q = h + (size_t)n * H, *kk = q + (size_t)n * nq, *v = kk + (size_t)n * nk;
    float *att = v + (size_t)n * nk, *g_ = att + (size_t)n * nq, *u = g_ + (size_t)n * I;
    float *angles = u + (size_t)n * I;                   /* [n, hd] */
    float *last = angles + (size_t)n * hd;               /* [n_logits, H] */
    float *xo = last + (size_t)n_logits * H;             /* [n_logits, H] */
    int *row0 = (int *)(xo + (size_t)n_logits * H);      /* [n_groups] */
    int *task0 = row0 + n_groups;                        /* [n_groups] */
    for (int g = 0, r = 0; g < n_groups; r += groups[g].n, g++) {
        row0[g] = r;
        task0[g] = n_tasks;
        n_tasks += nkv * ((groups[g].n + ATT_QB - 1) / ATT_QB);
    }
    void (*mm)(qwen_context *, float *, const float *, const qw_mat *, const float *, int) =
        rows_invariant ? qw_matmul_rows : qw_matmul;

    dec_qk_job qk = {ctx, groups, row0, n_groups, 0, q, kk, v, angles};
    qw_pool_run(ctx->pool, n, dec_angles_task, &qk);
    for (int l = 0; l < c->dec_layers; l++) {
        if (n > 1 && qw_aborted(ctx)) return qw_fail(ctx, QWEN_ERR_ABORTED, "aborted");
        const qw_dec_layer *y = &D->layers[l];
        qw_add_rmsnorm_rows(ctx, x, l ? h : NULL, h, y->ln1, n, H, c->rms_eps); /* + the last layer's MLP */
        float *qkv_out[3] = {q, kk, v};
        const qw_mat *qkv_w[3] = {&y->q, &y->k, &y->v};
        const float *qkv_b[3] = {y->q_b, y->k_b, y->v_b};
        qw_matmul_n(ctx, 3, qkv_out, h, qkv_w, c->attention_bias ? qkv_b : NULL, n, rows_invariant);
        qk.layer = l;
        qw_pool_run(ctx->pool, n, dec_qk_task, &qk); /* every row's keys and values go to the cache */
        /* Past its keys and values, the last layer's output reaches only the head: it runs for the
         * rows that want logits (none in a prefill chunk before the last), gathered in logits order
         * into xo and att (in a decode step, every row in its own place). fast: the same bits (its
         * int8 products are per row); exact's prefill GEMM may round such a row differently at
         * M = 1 (4e-5 of a logit seen, the same tokens). */
        const int head_only = l == c->dec_layers - 1;
        if (head_only && !n_logits) break;
        dec_attn_job job = {ctx, groups, row0, task0, n_groups, q, att, l, nh, nkv, hd};
        qw_pool_run(ctx->pool, n_tasks, dec_attn_task, &job);
        float *xl = x;
        int nl = n;
        if (head_only) {
            for (int g = 0, r = 0; g < n_groups; g++) {
                const qw_dec_group *G = &groups[g];
                for (int i = 0, m = G->rows ? G->n_rows : G->want_logits; i < m; i++, r++) {
                    const size_t row = (size_t)row0[g] + (size_t)(G->rows ? G->rows[i] : G->n - 1);
                    memcpy(xo + (size_t)r * H, x + row * H, (size_t)H * sizeof(float));
                    if ((size_t)r != row) memmove(att + (size_t)r * nq, att + row * nq, (size_t)nq * sizeof(float)); /* r < row */
                }
            }
            xl = xo, nl = n_logits;
        }
        mm(ctx, h, att, &y->o, y->o_b, nl);
        qw_add_rmsnorm_rows(ctx, xl, h, h, y->ln2, nl, H, c->rms_eps);
        float *gu_out[2] = {g_, u};
        const qw_mat *gu_w[2] = {&y->gate, &y->up};
        qw_matmul_n(ctx, 2, gu_out, h, gu_w, NULL, nl, rows_invariant);
        qw_swiglu_mt(ctx, g_, u, (size_t)nl * I); /* SiLU(gate) * up */
        mm(ctx, h, g_, &y->down, NULL, nl); /* added to x with the next norm */
        if (head_only) { /* the residual stream's end: the gathered rows */
            for (size_t i = 0; i < (size_t)nl * H; i++) xl[i] += h[i];
            x = xl;
        }
    }
    for (int g = 0; g < n_groups; g++) groups[g].s->n_past += groups[g].n;
    /* Final norm and the head on the rows that want logits (the last row of each group that wants
     * them, or the rows it names), in one GEMM: the last layer left them in x = xo, in order. */
    if (!n_logits) return QWEN_OK;
    for (int r = 0; r < n_logits; r++) qw_rmsnorm(last + (size_t)r * H, x + (size_t)r * H, D->norm, H, c->rms_eps);
    /* FAST: a step's few rows take the head's screen (qw_head_screened: their best blocks only),
     * their inputs kept in head_x for the whole rows should the caller ask for them */
    if (head_x && D->screen && n_logits <= ctx->q8->screen_rows) { /* a screen is built only with head_blocks > 0 */
        memcpy(head_x, last, (size_t)n_logits * H * sizeof(float));
        qw_head_screened(ctx, logits, head_x, n_logits);
        if (screened) *screened = 1;
        return QWEN_OK;
    }
    mm(ctx, logits, last, &D->lm_head, NULL, n_logits); /* [n_logits, n_out] */
    return QWEN_OK;
}
