/*
 * Encoder — the audio tower: mel frames are cut into chunks of 2 * n_window
 * frames; each chunk goes through three 3x3 stride-2 Conv2D + GELU layers
 * (downsample_hidden_size channels), is flattened per time step and
 * projected to d_model, plus a sinusoidal position embedding that restarts
 * in every chunk. Transformer layers (pre-LayerNorm, bidirectional attention
 * inside windows of n_window_infer frames' worth of tokens, GELU FFN) follow,
 * then ln_post and the projector proj2(gelu(proj1(x))) to the decoder width.
 *
 * Activations of the conv stem are kept channel-last ([F][T][C]) so that
 * im2col copies runs of C channels; the conv weights are re-ordered to match
 * once, at load time. On AMX tiles or the BF16 set (FAST) conv2 and conv3
 * skip the im2col (stem_implicit below). conv_out takes all the call's time steps at once.
 */
#include "internal.h"

#include "amx.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== Loading ==== */

/* Conv weight [Cout, Cin, 3, 3] -> owned f32 [Cout, 3, 3, Cin] for channel-last im2col. */
static void load_conv(qw_loader *L, qw_mat *m, float **bias, const char *prefix, int cout, int cin) {
    char name[320];
    snprintf(name, sizeof(name), "%s.weight", prefix);
    const qw_tensor *t = qw_need_tensor(L, name, cout, (int64_t)cin * 9);
    snprintf(name, sizeof(name), "%s.bias", prefix);
    *bias = qw_load_vec(L, name, cout);
    if (!t || L->rc) return;
    /* Re-ordered [cout][cin][3][3] -> [cout][3][3][cin], kept in the checkpoint's
     * dtype: the values are unchanged, the kernels widen them as for any weight. */
    const size_t esize = t->dtype == QW_F32 ? 4 : 2;
    char *w = qw_own(L->ctx, (size_t)cout * cin * 9 * esize);
    if (!w) {
        L->rc = QWEN_ERR_NOMEM;
        return;
    }
    const char *src = t->data;
    for (int o = 0; o < cout; o++)
        for (int c = 0; c < cin; c++)
            for (int k = 0; k < 9; k++)
                memcpy(w + (((size_t)o * 9 + k) * cin + c) * esize, src + (((size_t)o * cin + c) * 9 + k) * esize, esize);
    *m = (qw_mat){w, t->dtype, cout, cin * 9};
}

static int conv_out_len(int n) { return (n - 1) / 2 + 1; }

int qw_encoder_load(qwen_context *ctx, char *err, size_t err_size) {
    const qw_config *c = &ctx->cfg;
    qw_encoder *e = &ctx->enc;
    qw_loader L = {ctx, err, err_size, 0};
    const int C = c->ds_hidden, d = c->d_model;
    const char *p = "thinker.audio_tower";
    char name[256];
#define NAME(...) (snprintf(name, sizeof(name), __VA_ARGS__), name)
    load_conv(&L, &e->conv1, &e->conv1_b, NAME("%s.conv2d1", p), C, 1);
    load_conv(&L, &e->conv2, &e->conv2_b, NAME("%s.conv2d2", p), C, C);
    load_conv(&L, &e->conv3, &e->conv3_b, NAME("%s.conv2d3", p), C, C);
    /* conv_out [d, C * F3] (feature c*F3 + f) -> owned [d, F3 * C] (feature f*C + c) */
    const int F3 = conv_out_len(conv_out_len(conv_out_len(c->n_mels)));
    const qw_tensor *co = qw_need_tensor(&L, NAME("%s.conv_out.weight", p), d, (int64_t)C * F3);
    if (co) {
        size_t esize = co->dtype == QW_F32 ? 4 : 2;
        char *w = qw_own(ctx, (size_t)d * C * F3 * esize);
        if (!w) return QWEN_ERR_NOMEM;
        for (int o = 0; o < d; o++)
            for (int ch = 0; ch < C; ch++)
                for (int f = 0; f < F3; f++)
                    memcpy(w + ((size_t)o * F3 * C + (size_t)f * C + ch) * esize,
                           (const char *)co->data + ((size_t)o * C * F3 + (size_t)ch * F3 + f) * esize, esize);
        e->conv_out = (qw_mat){w, co->dtype, d, C * F3};
    }
    /* Sinusoids: [sin(t * inc_i) for i < d/2, cos(...)], inc_i = exp(-i * ln(1e4) / (d/2 - 1)) */
    e->pos = qw_own(ctx, (size_t)c->max_source_positions * d * sizeof(float));
    if (!e->pos) return QWEN_ERR_NOMEM;
    const int half = d / 2;
    for (int t = 0; t < c->max_source_positions; t++)
        for (int i = 0; i < half; i++) {
            float inc = expf(-(float)(log(10000.0) / (half - 1)) * (float)i);
            float a = (float)t * inc;
            e->pos[(size_t)t * d + i] = sinf(a);
            e->pos[(size_t)t * d + half + i] = cosf(a);
        }
    e->layers = qw_own(ctx, (size_t)c->enc_layers * sizeof(qw_enc_layer));
    if (!e->layers) return QWEN_ERR_NOMEM;
    for (int l = 0; l < c->enc_layers && !L.rc; l++) {
        qw_enc_layer *y = &e->layers[l];
        char q[128];
        snprintf(q, sizeof(q), "%s.layers.%d", p, l);
        qw_load_mat(&L, &y->q, NAME("%s.self_attn.q_proj.weight", q), d, d);
        qw_load_mat(&L, &y->k, NAME("%s.self_attn.k_proj.weight", q), d, d);
        qw_load_mat(&L, &y->v, NAME("%s.self_attn.v_proj.weight", q), d, d);
        qw_load_mat(&L, &y->o, NAME("%s.self_attn.out_proj.weight", q), d, d);
        y->q_b = qw_load_vec(&L, NAME("%s.self_attn.q_proj.bias", q), d);
        y->k_b = qw_load_vec(&L, NAME("%s.self_attn.k_proj.bias", q), d);
        y->v_b = qw_load_vec(&L, NAME("%s.self_attn.v_proj.bias", q), d);
        y->o_b = qw_load_vec(&L, NAME("%s.self_attn.out_proj.bias", q), d);
        y->ln1_w = qw_load_vec(&L, NAME("%s.self_attn_layer_norm.weight", q), d);
        y->ln1_b = qw_load_vec(&L, NAME("%s.self_attn_layer_norm.bias", q), d);
        y->ln2_w = qw_load_vec(&L, NAME("%s.final_layer_norm.weight", q), d);
        y->ln2_b = qw_load_vec(&L, NAME("%s.final_layer_norm.bias", q), d);
        qw_load_mat(&L, &y->fc1, NAME("%s.fc1.weight", q), c->enc_ffn, d);
        qw_load_mat(&L, &y->fc2, NAME("%s.fc2.weight", q), d, c->enc_ffn);
        y->fc1_b = qw_load_vec(&L, NAME("%s.fc1.bias", q), c->enc_ffn);
        y->fc2_b = qw_load_vec(&L, NAME("%s.fc2.bias", q), d);
    }
    e->ln_post_w = qw_load_vec(&L, NAME("%s.ln_post.weight", p), d);
    e->ln_post_b = qw_load_vec(&L, NAME("%s.ln_post.bias", p), d);
    qw_load_mat(&L, &e->proj1, NAME("%s.proj1.weight", p), d, d);
    e->proj1_b = qw_load_vec(&L, NAME("%s.proj1.bias", p), d);
    qw_load_mat(&L, &e->proj2, NAME("%s.proj2.weight", p), c->output_dim, d);
    e->proj2_b = qw_load_vec(&L, NAME("%s.proj2.bias", p), c->output_dim);
#undef NAME
    /* FAST with AMX: every encoder matrix on bf16 tiles; with the BF16 set: its panels packed once */
    int (*repack)(qw_loader *, qw_mat *) = ctx->amx ? qw_amx_mat : NULL;
#ifdef QW_X86
    if (!repack && ctx->k == &qw_kernels_avx512bf16) repack = qw_bf16p_mat;
#endif
    if (repack) {
        qw_mat *m[] = {&e->conv1, &e->conv2, &e->conv3, &e->conv_out, &e->proj1, &e->proj2};
        for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) repack(&L, m[i]);
        for (int l = 0; l < c->enc_layers; l++) {
            qw_enc_layer *y = &e->layers[l];
            qw_mat *ml[6] = {&y->q, &y->k, &y->v, &y->o, &y->fc1, &y->fc2};
            for (int i = 0; i < 6; i++) repack(&L, ml[i]);
        }
    }
    return L.rc;
}

/* ==== Geometry ==== */

/* Tokens of one chunk of n mel frames after the three stride-2 convs. */
static int chunk_tokens(int n) { return conv_out_len(conv_out_len(conv_out_len(n))); }

int64_t qw_encoder_tokens(const qwen_context *ctx, int64_t n_frames) {
    const int cl = 2 * ctx->cfg.n_window;
    int64_t full = n_frames / cl, tail = n_frames % cl;
    return full * chunk_tokens(cl) + (tail ? chunk_tokens((int)tail) : 0);
}

/* Conv chunks per encoder window: attention stays inside n_window_infer frames. */
static int chunks_per_window(const qw_config *c) {
    const int w = c->n_window_infer / (2 * c->n_window);
    return w > 0 ? w : 1;
}

static int n_conv_chunks(const qwen_context *ctx, int64_t n_frames) {
    const int cl = 2 * ctx->cfg.n_window;
    return (int)((n_frames + cl - 1) / cl);
}

int qw_encoder_windows(const qwen_context *ctx, int64_t n_frames) {
    const int cpw = chunks_per_window(&ctx->cfg);
    return (n_conv_chunks(ctx, n_frames) + cpw - 1) / cpw;
}

int qw_encoder_window_frames(const qwen_context *ctx) { return chunks_per_window(&ctx->cfg) * 2 * ctx->cfg.n_window; }

int64_t qw_encoder_window_start(const qwen_context *ctx, int64_t n_frames, int w) {
    const int64_t f = (int64_t)w * chunks_per_window(&ctx->cfg) * 2 * ctx->cfg.n_window;
    return qw_encoder_tokens(ctx, f < n_frames ? f : n_frames);
}

/* ==== Conv stem ==== */

/* One 3x3 stride-2 pad-1 conv as im2col + matmul, channel-last in and out:
 * in[Fi][Ti][Cin] -> out[Fo][To][Cout], then GELU. */
static void conv3x3(qwen_context *ctx, float *out, const float *in, int Fi, int Ti, int Cin, const qw_mat *W,
                    const float *b, float *cols) {
    const int Fo = conv_out_len(Fi), To = conv_out_len(Ti);
    for (int fo = 0; fo < Fo; fo++)
        for (int to = 0; to < To; to++) {
            float *row = cols + ((size_t)fo * To + to) * 9 * Cin;
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    int fi = 2 * fo - 1 + ky, ti = 2 * to - 1 + kx;
                    float *dst = row + (ky * 3 + kx) * Cin;
                    if (fi < 0 || fi >= Fi || ti < 0 || ti >= Ti)
                        memset(dst, 0, (size_t)Cin * sizeof(float));
                    else
                        memcpy(dst, in + ((size_t)fi * Ti + ti) * Cin, (size_t)Cin * sizeof(float));
                }
        }
    qw_matmul(ctx, out, cols, W, b, Fo * To);
    qw_gelu_mt(ctx, out, (size_t)Fo * To * W->rows);
}

/* ==== Conv stem without im2col ==== */

/* FAST on AMX tiles or the BF16 set's packed weights: the activations are time-major ([T][F][C]) bf16
 * copies with a zero border, from which conv2's and conv3's A rows are read as they are
 * (qw_amx_conv3x3, qw_bf16p_conv3x3: kernels.h): consecutive output frequencies of one time step are
 * input rows 2 C apart. No im2col (conv2's was 14 MB a chunk, copied on one thread; conv1, one input
 * channel, gives its small one) and no rounding pass; GELU and the rounding for the next conv run in
 * the products' epilogue on blocks still in L1, and conv3's rows land in the layout conv_out takes.
 * Each element is the same chain, GELU and rounding as in conv3x3's path: the same bits
 * (native/tests/test_amx.c and test_kernels.c for the convolutions, tests/engine for the encoder's
 * output). */
static int stem_implicit(const qw_encoder *e, int F2, int F3, int C) {
    const qw_dtype dt = e->conv1.dt;
    if (e->conv2.dt != dt || e->conv3.dt != dt) return 0;
    return (dt == QW_AMX && C % 32 == 0 && F2 % 16 == 0 && F3 % 16 == 0) || (dt == QW_BF16P && C % 2 == 0);
}

typedef struct {
    qw_conv3x3 c;
    int tasks, bf16p; /* bf16p: qw_bf16p_conv3x3, else qw_amx_conv3x3 */
} stem_conv_job;

static void stem_conv_task(void *arg, int t) {
    const stem_conv_job *j = arg;
    const int n0 = qw_slice_edge(j->c.Cout, j->tasks, t), n1 = qw_slice_edge(j->c.Cout, j->tasks, t + 1);
    if (n1 <= n0) return;
#ifdef QW_X86
    if (j->bf16p) {
        qw_bf16p_conv3x3(&j->c, n0, n1);
        return;
    }
#endif
    qw_amx_conv3x3(&j->c, n0, n1);
}

/* Column slices across the pool, 2 a thread (as qw_matmul_n for 16 rows and more). */
static void stem_conv(qwen_context *ctx, const qw_conv3x3 *c) {
    const int tasks = (c->Cout + 15) / 16 < 2 * ctx->n_threads ? (c->Cout + 15) / 16 : 2 * ctx->n_threads;
    stem_conv_job j = {*c, tasks, ctx->enc.conv1.dt == QW_BF16P};
    qw_pool_run(ctx->pool, tasks, stem_conv_task, &j);
}

/* One chunk's stem: xin[F][Ti] mel -> out[To3][F3 * C] f32 (conv_out's rows). rows: conv1's im2col
 * in bf16, [T1 * F1][32]; a1p, a2p: the padded bf16 inputs of conv2 and conv3, borders zero. */
static void stem_rows(qwen_context *ctx, float *out, const float *xin, int F, int Ti, uint16_t *rows, uint16_t *a1p,
                      uint16_t *a2p) {
    const qw_encoder *e = &ctx->enc;
    const int C = ctx->cfg.ds_hidden, F1 = conv_out_len(F), T1 = conv_out_len(Ti);
    const int F2 = conv_out_len(F1), T2 = conv_out_len(T1);
    /* conv1 has one input channel (K = 9): its im2col, time-major, is small; rounded as the products
     * round A, zeros to 32 */
    for (int to = 0; to < T1; to++)
        for (int fo = 0; fo < F1; fo++) {
            uint16_t *row = rows + ((size_t)to * F1 + fo) * 32;
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    const int fi = 2 * fo - 1 + ky, ti = 2 * to - 1 + kx;
                    row[ky * 3 + kx] =
                        fi < 0 || fi >= F || ti < 0 || ti >= Ti ? 0 : qw_f32_to_bf16(xin[(size_t)fi * Ti + ti]);
                }
            memset(row + 9, 0, 23 * sizeof(uint16_t));
        }
    const qw_conv3x3 c1 = {NULL, rows, Ti, F, 1, e->conv1.data, e->conv1_b, C, ctx->k->gelu, NULL, a1p, C};
    stem_conv(ctx, &c1);
    const qw_conv3x3 c2 = {a1p, NULL, T1, F1, C, e->conv2.data, e->conv2_b, C, ctx->k->gelu, NULL, a2p, C};
    stem_conv(ctx, &c2);
    const qw_conv3x3 c3 = {a2p, NULL, T2, F2, C, e->conv3.data, e->conv3_b, C, ctx->k->gelu, out, NULL, C};
    stem_conv(ctx, &c3);
}

/* ==== Attention inside windows ==== */

typedef struct {
    qwen_context *ctx;
    const float *q, *k, *v; /* [n, d] */
    float *out;             /* [n, d] */
    int n, d, heads, hd, window;
} enc_attn_job;

/* Task = (window, head). Bidirectional attention over the window's tokens. */
static void enc_attn_task(void *arg, int t) {
    enc_attn_job *j = arg;
    const int w = t / j->heads, h = t % j->heads;
    const int s0 = w * j->window, s1 = s0 + j->window < j->n ? s0 + j->window : j->n;
    const size_t at = (size_t)s0 * j->d + (size_t)h * j->hd;
    qw_attention(j->ctx->k, j->ctx->amx, j->out + at, j->d, j->q + at, j->d, s1 - s0, 1, j->k + at, j->v + at, QW_F32, j->d,
                 s1 - s0, j->hd, -1);
}

/* ==== Forward ==== */

qwen_status qw_encode(qwen_context *ctx, const float *mel, int64_t n_frames, int w0, int w1, float *out) {
    const qw_config *c = &ctx->cfg;
    const qw_encoder *e = &ctx->enc;
    const int C = c->ds_hidden, d = c->d_model, F = c->n_mels;
    const int cl = 2 * c->n_window;
    const int n_chunks = n_conv_chunks(ctx, n_frames), cpw = chunks_per_window(c);
    const int ch0 = w0 * cpw, ch1 = w1 * cpw < n_chunks ? w1 * cpw : n_chunks; /* this call's conv chunks */
    const int64_t n_tok = qw_encoder_window_start(ctx, n_frames, w1) - qw_encoder_window_start(ctx, n_frames, w0);
    if (n_tok <= 0) return QWEN_OK;
    /* The official code pads every chunk to the longest one (a full chunk
     * when there are several) before the convs; padding changes the last
     * valid outputs through the conv biases, so we pad the same way. */
    const int Lp = n_chunks > 1 ? cl : (int)n_frames;
    const int F1 = conv_out_len(F), T1 = conv_out_len(Lp);
    const int F2 = conv_out_len(F1), T2 = conv_out_len(T1);
    const int F3 = conv_out_len(F2), T3 = conv_out_len(T2);
    const int ffn = c->enc_ffn;
    const int window = chunk_tokens(Lp) * cpw;
    if (T3 > c->max_source_positions) return qw_fail(ctx, QWEN_ERR_INVALID, "chunk longer than max_source_positions");

    /* the largest im2col: conv2's ([F2 * T2, 9 * C]); conv1's has one input channel */
    const int tiles = stem_implicit(e, F2, F3, C);
    size_t n_cols = (size_t)F2 * T2 * 9 * C > (size_t)F1 * T1 * 9 ? (size_t)F2 * T2 * 9 * C : (size_t)F1 * T1 * 9;
    const size_t pad1 = (size_t)(T1 + 2) * (F1 + 2) * C, pad2 = (size_t)(T2 + 2) * (F2 + 2) * C; /* bf16 */
    if (tiles) n_cols = (size_t)F1 * T1 * 16 + (pad1 + pad2 + 1) / 2; /* conv1's rows in bf16, the pads */
    const size_t n_act = tiles ? 0 : (size_t)F1 * T1 * C + (size_t)F2 * T2 * C + (size_t)F3 * T3 * C; /* a1-a3 */
    size_t need = (size_t)F * Lp                 /* chunk input */
                  + n_act + n_cols
                  + (size_t)(n_tok + T3) * F3 * C /* flattened, all chunks (conv3's last rows past n_tok) */
                  + (size_t)n_tok * d * 5        /* x, q, k, v, attn */
                  + (size_t)n_tok * (ffn > d ? ffn : d);
    if (need > ctx->enc_scratch_size) {
        free(ctx->enc_scratch);
        ctx->enc_scratch = malloc(need * sizeof(float));
        ctx->enc_scratch_size = ctx->enc_scratch ? need : 0;
        if (!ctx->enc_scratch)
            return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory in the encoder (%lld tokens)", (long long)n_tok);
    }
    float *buf = ctx->enc_scratch;
    float *xin = buf, *a1 = xin + (size_t)F * Lp, *a2 = a1 + (size_t)F1 * T1 * C, *a3 = a2 + (size_t)F2 * T2 * C;
    float *cols = xin + (size_t)F * Lp + n_act, *flat = cols + n_cols; /* a1-a3: not on the tiles' path */
    float *x = flat + (size_t)(n_tok + T3) * F3 * C, *q = x + (size_t)n_tok * d, *kk = q + (size_t)n_tok * d;
    float *v = kk + (size_t)n_tok * d, *att = v + (size_t)n_tok * d, *hbuf = att + (size_t)n_tok * d;
    uint16_t *rows1 = (uint16_t *)(void *)cols, *a1p = rows1 + (size_t)F1 * T1 * 32;
    uint16_t *a2p = a1p + pad1;
    if (tiles) memset(a1p, 0, (pad1 + pad2) * sizeof(uint16_t)); /* the borders; the insides are written */

    /* Conv stem, chunk by chunk, into flat[t][f * C + c]. */
    int64_t tok = 0;
    for (int ch = ch0; ch < ch1; ch++) {
        if (qw_aborted(ctx)) { return qw_fail(ctx, QWEN_ERR_ABORTED, "aborted"); }
        int64_t f0 = (int64_t)ch * cl;
        int len = (int)(n_frames - f0 < cl ? n_frames - f0 : cl);
        /* mel [F, n_frames] -> xin[F][Lp][1], zero padded */
        for (int f = 0; f < F; f++) {
            memcpy(xin + (size_t)f * Lp, mel + (size_t)f * n_frames + f0, (size_t)len * sizeof(float));
            memset(xin + (size_t)f * Lp + len, 0, (size_t)(Lp - len) * sizeof(float));
        }
        const int valid = chunk_tokens(len);
        float *fl = flat + (size_t)tok * F3 * C;
        if (tiles) {
            stem_rows(ctx, fl, xin, F, Lp, rows1, a1p, a2p);
        } else {
            conv3x3(ctx, a1, xin, F, Lp, 1, &e->conv1, e->conv1_b, cols);
            conv3x3(ctx, a2, a1, F1, T1, C, &e->conv2, e->conv2_b, cols);
            conv3x3(ctx, a3, a2, F2, T2, C, &e->conv3, e->conv3_b, cols);
            /* a3[F3][T3][C] -> flat[t][f*C + c] for the valid time steps */
            for (int t = 0; t < valid; t++)
                for (int f = 0; f < F3; f++)
                    memcpy(fl + ((size_t)t * F3 + f) * C, a3 + ((size_t)f * T3 + t) * C, (size_t)C * sizeof(float));
        }
        tok += valid;
    }
    /* conv_out for all the chunks at once (its 7680 x 896 weights read once, not once a chunk), then
     * the position embedding, which restarts in every chunk */
    qw_matmul(ctx, x, flat, &e->conv_out, NULL, (int)n_tok);
    tok = 0;
    for (int ch = ch0; ch < ch1; ch++) {
        const int64_t f0 = (int64_t)ch * cl;
        const int valid = chunk_tokens((int)(n_frames - f0 < cl ? n_frames - f0 : cl));
        for (int t = 0; t < valid; t++)
            for (int i = 0; i < d; i++) x[(size_t)(tok + t) * d + i] += e->pos[(size_t)t * d + i];
        tok += valid;
    }

    /* Transformer layers. */
    const int heads = c->enc_heads, hd = d / heads, n = (int)n_tok;
    const int n_windows = (n + window - 1) / window;
    for (int l = 0; l < c->enc_layers; l++) {
        if (qw_aborted(ctx)) { return qw_fail(ctx, QWEN_ERR_ABORTED, "aborted"); }
        const qw_enc_layer *y = &e->layers[l];
        qw_add_layernorm_rows(ctx, x, l ? att : NULL, hbuf, y->ln1_w, y->ln1_b, n, d); /* + the last layer's FFN */
        float *qkv_out[3] = {q, kk, v};
        const qw_mat *qkv_w[3] = {&y->q, &y->k, &y->v};
        const float *qkv_b[3] = {y->q_b, y->k_b, y->v_b};
        qw_matmul_n(ctx, 3, qkv_out, hbuf, qkv_w, qkv_b, n, 0);
        enc_attn_job job = {ctx, q, kk, v, att, n, d, heads, hd, window};
        qw_pool_run(ctx->pool, n_windows * heads, enc_attn_task, &job);
        qw_matmul(ctx, hbuf, att, &y->o, y->o_b, n);
        qw_add_layernorm_rows(ctx, x, hbuf, att, y->ln2_w, y->ln2_b, n, d);
        qw_matmul_gelu_matmul(ctx, att, att, &y->fc1, y->fc1_b, &y->fc2, y->fc2_b, n, hbuf); /* added to x with the next norm */
    }
    qw_add_layernorm_rows(ctx, x, c->enc_layers ? att : NULL, x, e->ln_post_w, e->ln_post_b, n, d); /* + its FFN */
    qw_matmul_gelu_matmul(ctx, out, x, &e->proj1, e->proj1_b, &e->proj2, e->proj2_b, n, q);
    return QWEN_OK;
}
