/*
 * Ops — threaded matmul on top of the kernel table, and the small
 * element-wise layers (norms, activations, softmax).
 */
#include "internal.h"

#include "amx.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ==== Threaded matmul ==== */

typedef struct {
    const qw_kernels *k;
    int n;
    float *const *C;
    const float *A;
    const qw_mat *const *W;
    const float *const *bias;
    int M, rows_invariant;
    int tasks_per_mat[4]; /* column slices of W[i] (qw_slice_edge) */
    const qw_q8_kernels *q8;
    qw_q8_act act;              /* A quantized by rows, for int8 weights */
    const uint16_t *Ab;         /* A rounded to bf16 once for AMX or BF16P weights (row stride K rounded to 32), or NULL */
    uint16_t *Cb;               /* or NULL; else (AMX or BF16P weights, Ab) C is not written: Cb = bf16(fn(C)) */
    void (*fn)(float *x, int n);
} mm_job;

typedef struct {
    const qw_q8_kernels *k;
    uint8_t *q; /* the arrays of an act from qw_q8_act_at, in ctx->q8_act */
    float *scale;
    const float *A;
    int M, K, Kp, ng, rows_per_task;
} q8_quant_job;

static void q8_quant_task(void *arg, int t) {
    q8_quant_job *j = arg;
    const int r0 = t * j->rows_per_task, r1 = r0 + j->rows_per_task < j->M ? r0 + j->rows_per_task : j->M;
    j->k->quantize_rows(j->q + (size_t)r0 * j->Kp, j->scale + (size_t)r0 * j->ng, j->A + (size_t)r0 * j->K, j->K,
                        r1 - r0, j->K, j->Kp, j->ng);
}

typedef struct {
    uint16_t *Ab;
    const float *A;
    int M, K, rows_per_task;
    void (*round)(uint16_t *Ab, const float *A, int lda, int M, int K);
} round_job;

/* Row stride of A rounded to bf16 for a product (amx.h, kernels.h: K rounded up to 32). */
static size_t rounded_kp(int K) { return ((size_t)K + 31) / 32 * 32; }

static void round_task(void *arg, int t) {
    round_job *j = arg;
    const int r0 = t * j->rows_per_task, r1 = r0 + j->rows_per_task < j->M ? r0 + j->rows_per_task : j->M;
    j->round(j->Ab + (size_t)r0 * rounded_kp(j->K), j->A + (size_t)r0 * j->K, j->K, r1 - r0, j->K);
}

/* A rounded to bf16 once for all the slices of a product on AMX tiles or BF16P weights (each slice
 * rounded all of A itself before: 4 times a product with 2 threads, 10% of an encoder's time on
 * AMX), across the pool; NULL when the buffer cannot grow (the slices round A themselves then, the
 * same bits). */
static const uint16_t *round_once(qwen_context *ctx, const float *A, int M, int K, qw_dtype dt) {
    const size_t need = (size_t)M * rounded_kp(K) * sizeof(uint16_t);
    if (need > ctx->round_a_size) {
        free(ctx->round_a);
        ctx->round_a = aligned_alloc(64, (need + 63) & ~(size_t)63);
        ctx->round_a_size = ctx->round_a ? need : 0;
        if (!ctx->round_a) return NULL;
    }
    round_job j = {ctx->round_a, A, M, K, 8, qw_amx_round_rows};
#ifdef QW_X86
    if (dt == QW_BF16P) j.round = qw_bf16p_round_rows;
#endif
    qw_pool_run(ctx->pool, (M + j.rows_per_task - 1) / j.rows_per_task, round_task, &j);
    return ctx->round_a;
}

/* A's rows quantized for W's int8 product: across the pool for a batch's or a prefill's rows
 * (each row alone either way, so the same bytes), on this thread for a single row. */
static qw_q8_act q8_quantize(qwen_context *ctx, const float *A, int M, const qw_q8 *W) {
    if (M < 2 || ctx->n_threads < 2) return qw_q8_quantize(ctx->q8, ctx->q8_act, A, W->K, M, W);
    const qw_q8_act act = qw_q8_act_at(ctx->q8_act, M, W);
    q8_quant_job j = {ctx->q8, ctx->q8_act, qw_q8_act_scale(ctx->q8_act, M, W), A, M, W->K, W->Kp, W->ng, M < 16 ? 1 : 4};
    qw_pool_run(ctx->pool, (M + j.rows_per_task - 1) / j.rows_per_task, q8_quant_task, &j);
    return act;
}

/* Columns [n0, n1) of product i (n0 a multiple of 16) */
static void mm_cols(const mm_job *j, int i, int n0, int n1) {
    const qw_mat *W = j->W[i];
    if (n1 <= n0) return;
    const float *b = j->bias ? j->bias[i] : NULL;
    if (W->dt == QW_Q8) /* batch-invariant by construction (quant.h) */
        j->q8->matmul(j->C[i], W->rows, &j->act, W->data, b, j->M, n0, n1);
#ifdef QW_X86
    else if (j->Cb && W->dt == QW_BF16P) /* qw_matmul_gelu_matmul: BF16P weights, A rounded */
        qw_bf16p_matmul_act_bf16(j->Cb, (int)rounded_kp(W->rows), j->Ab, W->data, b, j->fn, j->M, W->cols, n0, n1);
    else if (W->dt == QW_BF16P && j->Ab)
        qw_bf16p_matmul_rounded(j->C[i], W->rows, j->Ab, W->data, b, j->M, W->cols, n0, n1);
#endif
    else if (j->Cb) /* qw_matmul_gelu_matmul: AMX weights, A rounded */
        qw_amx_matmul_act_bf16(j->Cb, (int)rounded_kp(W->rows), j->Ab, W->data, b, j->fn, j->M, W->rows, W->cols, n0, n1);
    else if (W->dt == QW_AMX && j->Ab) /* each element one chain over k: batch-invariant too (amx.h) */
        qw_amx_matmul_rounded(j->C[i], W->rows, j->Ab, W->data, b, j->M, W->rows, W->cols, n0, n1);
    else if (W->dt == QW_AMX)
        qw_amx_matmul(j->C[i], W->rows, j->A, W->cols, W->data, b, j->M, W->rows, W->cols, n0, n1);
#ifdef QW_X86
    else if (W->dt == QW_BF16P) /* the BF16 set's product on weights packed at load */
        qw_bf16p_matmul(j->C[i], W->rows, j->A, W->cols, W->data, b, j->M, W->cols, n0, n1);
#endif
    else if (j->rows_invariant)
        j->k->matmul_rows(j->C[i], W->rows, j->A, W->cols, W->data, W->dt, b, j->M, W->cols, n0, n1);
    else
        j->k->matmul(j->C[i], W->rows, j->A, W->cols, W->data, W->dt, b, j->M, W->cols, n0, n1);
}

static void mm_task(void *arg, int t) {
    mm_job *j = arg;
    int i = 0;
    while (t >= j->tasks_per_mat[i]) t -= j->tasks_per_mat[i++];
    const int rows = j->W[i]->rows;
    mm_cols(j, i, qw_slice_edge(rows, j->tasks_per_mat[i], t), qw_slice_edge(rows, j->tasks_per_mat[i], t + 1));
}

/* ==== A decode step's products: parts, and their ends taken ====
 *
 * A product of a few rows is bound by reading its weights and lasts tens of microseconds; where
 * the threads end apart, one streams alone until the other is done, and each claim of a slice
 * crosses between the cores. Both cost most where the two cores sit on different CCDs of an EPYC
 * (each CCD its own path to memory: 65-72 GB/s together, against ~40 from one; a cache line from
 * the other core ~200 ns away instead of ~50): there the decoder's products streamed at 0.90 of
 * the LM head's pace in slices claimed in turn, and at 0.95 as below (Zen 5, in-process pairs).
 * So each thread owns a part (the columns split evenly, multiples of 16) and takes it from the
 * front, PART_CHUNK columns at a time (a compare-and-swap on its own cache line, which stays in
 * its core while nobody else wants it); done with its own, it takes half of what is left of
 * another part from that part's end, until nothing is left anywhere. The threads meet within a
 * chunk, and a thread held up (off its core, asleep) has most of its part taken by the others.
 * Each column is computed as in a slice: the same bits (test_matmul).
 *
 * Int8 weights only (precision FAST): their decode path reads 16 columns at a time, so a chunk
 * costs nothing there. Exact's rows path takes 3 columns a group from 4 rows on, and would take
 * the rest of every chunk one column at a time; its steps were level either way in the pairs run
 * (batch 1 27.5 against 27.6 ms a token), so it keeps its slices.
 */
#define PARTS_ROWS 15 /* the most rows: a decode step's, below the 16 from which the AMX-INT8 table runs its
                       * tiles (configured, and an 8 KiB block cleared, each call: a chunk would pay that) */
#define PART_CHUNK 32 /* 32 KB of int8 weights at K = 1024; 16 streamed a little slower, 64 the same */
#define PARTS_MAX 16

typedef struct {
    _Alignas(64) _Atomic uint64_t span; /* the columns not yet taken: [lo, hi) as hi << 32 | lo */
} mm_part;

typedef struct {
    const mm_job *j;
    int off[5]; /* product i's columns are [off[i], off[i + 1]) of the pass (each a multiple of 16) */
    int parts;
    mm_part part[PARTS_MAX];
} parts_job;

/* [*a, *b): PART_CHUNK columns from the front of p, or (back) half of what is left (>= 16) from its end. */
static int take(mm_part *p, int back, int *a, int *b) {
    uint64_t v = atomic_load_explicit(&p->span, memory_order_relaxed);
    for (;;) {
        const int lo = (int)(uint32_t)v, hi = (int)(v >> 32);
        if (lo >= hi) return 0;
        int c = back ? (hi - lo) / 2 / 16 * 16 : PART_CHUNK;
        if (c < 16) c = 16;
        if (c > hi - lo) c = hi - lo;
        const uint64_t nv = back ? (uint64_t)(hi - c) << 32 | (uint32_t)lo : (uint64_t)hi << 32 | (uint32_t)(lo + c);
        if (atomic_compare_exchange_weak_explicit(&p->span, &v, nv, memory_order_relaxed, memory_order_relaxed)) {
            *a = back ? hi - c : lo, *b = back ? hi : lo + c;
            return 1;
        }
    }
}

/* The pass's columns [a, b) across its products. */
static void parts_cols(const parts_job *pj, int a, int b) {
    for (int i = 0; i < pj->j->n; i++) {
        const int n0 = (a > pj->off[i] ? a : pj->off[i]) - pj->off[i];
        const int n1 = (b < pj->off[i + 1] ? b : pj->off[i + 1]) - pj->off[i];
        mm_cols(pj->j, i, n0, n1 < pj->j->W[i]->rows ? n1 : pj->j->W[i]->rows);
    }
}

/* Task t: part t from its front, then the other parts from their ends. */
static void parts_task(void *arg, int t) {
    parts_job *pj = arg;
    int a, b;
    while (take(&pj->part[t], 0, &a, &b)) parts_cols(pj, a, b);
    for (int u = 1; u < pj->parts; u++)
        while (take(&pj->part[(t + u) % pj->parts], 1, &a, &b)) parts_cols(pj, a, b);
}

static void run_parts(qwen_context *ctx, const mm_job *j) {
    parts_job pj;
    pj.j = j;
    pj.off[0] = 0;
    for (int i = 0; i < j->n; i++) pj.off[i + 1] = pj.off[i] + (j->W[i]->rows + 15) / 16 * 16;
    const int total = pj.off[j->n];
    pj.parts = ctx->n_threads < PARTS_MAX ? ctx->n_threads : PARTS_MAX;
    if (pj.parts > total / 16) pj.parts = total / 16 > 0 ? total / 16 : 1;
    for (int p = 0; p < pj.parts; p++) {
        const uint64_t lo = (uint64_t)qw_slice_edge(total, pj.parts, p);
        atomic_init(&pj.part[p].span, (uint64_t)qw_slice_edge(total, pj.parts, p + 1) << 32 | lo);
    }
    qw_pool_run(ctx->pool, pj.parts, parts_task, &pj);
}

/* Columns per slice of a product over total_rows output columns (matmul_n's comment; a decode step's
 * int8 products take parts instead, above; the LM head's screen slices): a multiple of 16, 2 slices a
 * thread. Each slice is a new stream of weights from memory for the thread that
 * claims it: a batch-1 decode step's products streamed at 0.79-0.89 of the LM head screen's pace
 * (one long slice a thread) with 8 slices a thread, 0.72-0.74 with 16, 0.87-0.97 with 2 or 1 (0.6B,
 * Zen 5, rounds alternating within minutes; a step of 10.7-11.0 ms became 9.4-10.2), and steps of
 * 2-8 rows took 2-3% less with 2 than with 4 (4 pairs of runs each). A software prefetch of each
 * slice's first 32 KiB, or none past its end, changed nothing. */
static int slice_width(const qwen_context *ctx, int total_rows) {
    const int per = total_rows / (ctx->n_threads * 2) + 1;
    return ((per < 16 ? 16 : per) + 15) & ~15;
}

/* qw_matmul_n; Ab: A already rounded for AMX or BF16P weights (or NULL); Cb, act: the epilogue of
 * qw_matmul_gelu_matmul (one AMX or BF16P product; or NULL). -1 when Cb was asked for but A could not be
 * rounded (no memory): nothing computed then. */
static int matmul_n(qwen_context *ctx, int n, float *const *C, const float *A, const qw_mat *const *W,
                    const float *const *bias, int M, int rows_invariant, const uint16_t *Ab, uint16_t *Cb,
                    void (*act)(float *, int)) {
    if (M <= 0) return 0;
    /* A decode step's rows on int8 weights take parts (run_parts); else column slices
     * (slice_width): 2 a thread, so that a thread held up by another process
     * does not hold up the whole product; multiples of 16 keep the SIMD
     * kernels on their full-width path. Fewer, longer slices also set up less
     * (the AMX kernels convert or stream A, configure the tiles, start a cold
     * panel of weights: Intel Xeon with AMX, 2 threads, encoder of 10 s
     * 44-47 ms with 4 a thread, 40-42 with 2, 38-41 with 1). */
    mm_job j = {ctx->k, n, C, A, W, bias, M, rows_invariant, {0}, ctx->q8, {0}, Ab, Cb, act};
    if (W[0]->dt == QW_Q8) { /* the products of one call share A and so K */
        const qw_q8 *q = W[0]->data;
        if (qw_q8_act_bytes(M, q->K) > ctx->q8_act_size) { /* qw_q8_reserve was not called: a bug */
            qw_fail(ctx, QWEN_ERR_INVALID, "int8 activation buffer not reserved for %d rows", M);
            return 0;
        }
        j.act = q8_quantize(ctx, A, M, q);
    }
    /* all on tiles, or all on BF16P weights, with one K: A rounded once */
    int round_all = W[0]->dt == QW_AMX || W[0]->dt == QW_BF16P;
    for (int i = 0; i < n; i++) round_all &= W[i]->dt == W[0]->dt && W[i]->cols == W[0]->cols;
    if (round_all && !j.Ab) j.Ab = round_once(ctx, A, M, W[0]->cols, W[0]->dt);
    if (Cb && !j.Ab) return -1;
    if (M <= PARTS_ROWS && W[0]->dt == QW_Q8) { /* a decode step's rows on int8 weights */
        run_parts(ctx, &j);
        return 0;
    }
    int total_rows = 0;
    for (int i = 0; i < n; i++) total_rows += W[i]->rows;
    const int per = slice_width(ctx, total_rows);
    int tasks = 0;
    for (int i = 0; i < n; i++) {
        j.tasks_per_mat[i] = (W[i]->rows + per - 1) / per;
        tasks += j.tasks_per_mat[i];
    }
    qw_pool_run(ctx->pool, tasks, mm_task, &j);
    return 0;
}

void qw_matmul_n(qwen_context *ctx, int n, float *const *C, const float *A, const qw_mat *const *W,
                 const float *const *bias, int M, int rows_invariant) {
    matmul_n(ctx, n, C, A, W, bias, M, rows_invariant, NULL, NULL, NULL);
}

void qw_matmul_gelu_matmul(qwen_context *ctx, float *C, const float *A, const qw_mat *W1, const float *b1,
                           const qw_mat *W2, const float *b2, int M, void *buf) {
    const qw_mat *W[1] = {W1};
    const float *bias1[1] = {b1}, *bias2[1] = {b2};
    if (M > 0 && (W1->dt == QW_AMX || W1->dt == QW_BF16P) && W2->dt == W1->dt && W1->rows % 32 == 0 &&
        W2->cols == W1->rows &&
        !matmul_n(ctx, 1, NULL, A, W, b1 ? bias1 : NULL, M, 0, NULL, buf, ctx->k->gelu)) {
        /* buf: W2's A, rounded (row stride W1->rows, a multiple of 32: no padding) */
        W[0] = W2;
        matmul_n(ctx, 1, &C, NULL, W, b2 ? bias2 : NULL, M, 0, buf, NULL, NULL);
        return;
    }
    qw_matmul(ctx, buf, A, W1, b1, M);
    qw_gelu_mt(ctx, buf, (size_t)M * W1->rows);
    qw_matmul(ctx, C, buf, W2, b2, M);
}

static void matmul_one(qwen_context *ctx, float *C, const float *A, const qw_mat *W, const float *bias, int M,
                       int rows_invariant) {
    float *Cs[1] = {C};
    const qw_mat *Ws[1] = {W};
    const float *bs[1] = {bias};
    qw_matmul_n(ctx, 1, Cs, A, Ws, bias ? bs : NULL, M, rows_invariant);
}

int qw_q8_reserve(qwen_context *ctx, int rows, int K) {
    const size_t need = qw_q8_act_bytes(rows, K);
    if (need <= ctx->q8_act_size) return 0;
    free(ctx->q8_act);
    ctx->q8_act = malloc(need);
    ctx->q8_act_size = ctx->q8_act ? need : 0;
    return ctx->q8_act ? 0 : -1;
}

void qw_matmul(qwen_context *ctx, float *C, const float *A, const qw_mat *W, const float *bias, int M) {
    matmul_one(ctx, C, A, W, bias, M, 0);
}

void qw_matmul_rows(qwen_context *ctx, float *C, const float *A, const qw_mat *W, const float *bias, int M) {
    matmul_one(ctx, C, A, W, bias, M, 1);
}

/* ==== The LM head, screened (precision FAST) ==== */

typedef struct {
    qwen_context *ctx;
    float *C; /* [M, N]: each row's block maxima (the screen's) first, then its logits */
    const qw_q8_act *act;
    const qw_q8 *W;
    const qw_q4 *S;
    int M, N, tasks, blocks;
    int *whole; /* per row: the screen was not finite there, the whole product is wanted */
} screen_job;

static void screen_task(void *arg, int t) {
    screen_job *j = arg;
    const int n0 = qw_slice_edge(j->N, j->tasks, t), n1 = qw_slice_edge(j->N, j->tasks, t + 1);
    if (n1 > n0) j->ctx->q8->screen(j->C, j->N, j->act, j->S, j->M, n0, n1);
}

/* Row r: its best blocks by the screen's maxima (the row's first N / 16 floats), the row -inf, then
 * those blocks on the int8 matrix. */
static void rescore_task(void *arg, int r) {
    screen_job *j = arg;
    float *row = j->C + (size_t)r * j->N;
    int blocks[QW_Q4_MAX_BLOCKS];
    const int nb = qw_q4_top_blocks(row, (j->N + 15) / 16, j->blocks, blocks);
    j->whole[r] = !nb;
    if (!nb) return;
    for (int n = 0; n < j->N; n++) row[n] = -INFINITY;
    const qw_q8_act a = {j->act->q + (size_t)r * j->act->Kp, j->act->scale + (size_t)r * j->act->ng, 1, j->act->Kp,
                         j->act->ng};
    for (int i = 0; i < nb; i++) {
        const int n0 = blocks[i] * 16, n1 = n0 + 16 < j->N ? n0 + 16 : j->N;
        j->ctx->q8->matmul(row, j->N, &a, j->W, NULL, 1, n0, n1);
    }
}

void qw_head_screened(qwen_context *ctx, float *logits, const float *x, int M) {
    const qw_mat *head = &ctx->dec.lm_head;
    const qw_q8 *W = head->data;
    const int N = head->rows;
    const qw_q8_act act = q8_quantize(ctx, x, M, W);
    int whole[QW_HEAD_SCREEN_ROWS];
    const int per = slice_width(ctx, N); /* the screen streams its bytes as a product does */
    screen_job j = {ctx, logits, &act, W, ctx->dec.screen, M, N, (N + per - 1) / per, ctx->head_blocks, whole};
    qw_pool_run(ctx->pool, j.tasks, screen_task, &j);
    qw_pool_run(ctx->pool, M, rescore_task, &j);
    ctx->head_screened_rows += M;
    for (int r = 0; r < M; r++)
        if (whole[r]) qw_matmul_rows(ctx, logits + (size_t)r * N, x + (size_t)r * head->cols, head, NULL, 1);
}

/* ==== Element-wise ==== */

/* The moments of a LayerNorm in double, each in 8 running sums (lane j takes the j of every 8) added
 * pairwise at the end: vectors, not one 4-cycle chain through every element (the two chains were
 * 3-4% of an encoder). d: x - mean (0 for the mean itself), sq: square the terms. */
static double ln_sum(const float *x, int n, double d, int sq) {
    double p[8] = {0.0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) p[j] += sq ? ((double)x[i + j] - d) * ((double)x[i + j] - d) : (double)x[i + j];
    for (int j = 0; i < n; i++, j++) p[j] += sq ? ((double)x[i] - d) * ((double)x[i] - d) : (double)x[i];
    for (int w = 4; w; w /= 2)
        for (int j = 0; j < w; j++) p[j] += p[j + w];
    return p[0];
}

/* LayerNorm over n features, in place: (x - mean) / sqrt(var + eps) * w + b, the moments in double */
void qw_layernorm(float *x, const float *w, const float *b, int n, float eps) {
    const double mean = ln_sum(x, n, 0.0, 0) / n;
    const double var = ln_sum(x, n, mean, 1) / n;
    float inv = (float)(1.0 / sqrt(var + eps));
    float m = (float)mean;
    for (int i = 0; i < n; i++) x[i] = (x[i] - m) * inv * w[i] + b[i];
}

/* RMSNorm: out = x / sqrt(mean(x^2) + eps) * w (out may alias x) */
void qw_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    /* The sum of squares in 16 running sums (lane i takes the i of every 16), added pairwise at the end:
     * the compiler's vectors, and no 4-cycle chain through every element (one chain made the decoder's
     * norms ~5% of a 145-token prefill). The same order on every kernel set and any row count. */
    float p[16] = {0.0f};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) p[j] += x[i + j] * x[i + j];
    for (int j = 0; i < n; i++, j++) p[j] += x[i] * x[i];
    for (int w2 = 8; w2; w2 /= 2)
        for (int j = 0; j < w2; j++) p[j] += p[j + w2];
    const float ss = p[0];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

/* ==== Threaded element-wise ==== */

typedef struct {
    const qw_kernels *k;
    float *x;
    const float *w; /* SwiGLU's up, or NULL */
    size_t n;       /* elements */
    size_t per;     /* elements per task */
} ew_job;

static void gelu_task(void *arg, int t) {
    ew_job *j = arg;
    size_t i0 = (size_t)t * j->per, i1 = i0 + j->per < j->n ? i0 + j->per : j->n;
    j->k->gelu(j->x + i0, (int)(i1 - i0));
}

void qw_gelu_mt(qwen_context *ctx, float *x, size_t n) {
    ew_job j = {ctx->k, x, NULL, n, 1 << 14};
    qw_pool_run(ctx->pool, (int)((n + j.per - 1) / j.per), gelu_task, &j);
}

static void swiglu_task(void *arg, int t) {
    ew_job *j = arg;
    size_t i0 = (size_t)t * j->per, i1 = i0 + j->per < j->n ? i0 + j->per : j->n;
    j->k->swiglu(j->x + i0, j->w + i0, (int)(i1 - i0)); /* SiLU(gate) * up */
}

void qw_swiglu_mt(qwen_context *ctx, float *g, const float *u, size_t n) {
    ew_job j = {ctx->k, g, u, n, 1 << 14};
    qw_pool_run(ctx->pool, (int)((n + j.per - 1) / j.per), swiglu_task, &j);
}

/* ==== Residual + norm ==== */

typedef struct {
    float *x;
    const float *h, *w, *b;
    float *out;
    int rows, d, rms, per;
    float eps;
} addnorm_job;

static void addnorm_task(void *arg, int t) {
    const addnorm_job *j = arg;
    for (int r = t * j->per; r < (t + 1) * j->per && r < j->rows; r++) {
        float *x = j->x + (size_t)r * j->d, *o = j->out + (size_t)r * j->d;
        if (j->h)
            for (int i = 0; i < j->d; i++) x[i] += j->h[(size_t)r * j->d + i];
        if (j->rms) {
            qw_rmsnorm(o, x, j->w, j->d, j->eps);
        } else {
            if (o != x) memcpy(o, x, (size_t)j->d * sizeof(float));
            qw_layernorm(o, j->w, j->b, j->d, j->eps);
        }
    }
}

/* Rows of x += h (h may be NULL; rows of d), then out = RMSNorm(x) (rms) or LayerNorm(x) (out may be
 * x): one pass over the rows, across the pool in tasks of 4 rows from 16 rows. */
static void add_norm_rows(qwen_context *ctx, float *x, const float *h, float *out, const float *w, const float *b,
                          int rows, int d, int rms, float eps) {
    addnorm_job j = {x, h, w, b, out, rows, d, rms, rows < 16 ? rows : 4, eps};
    if (rows < 16)
        addnorm_task(&j, 0);
    else
        qw_pool_run(ctx->pool, (rows + j.per - 1) / j.per, addnorm_task, &j);
}

void qw_add_rmsnorm_rows(qwen_context *ctx, float *x, const float *h, float *out, const float *w, int rows, int d,
                         float eps) {
    add_norm_rows(ctx, x, h, out, w, NULL, rows, d, 1, eps);
}

void qw_add_layernorm_rows(qwen_context *ctx, float *x, const float *h, float *out, const float *w, const float *b,
                           int rows, int d) {
    add_norm_rows(ctx, x, h, out, w, b, rows, d, 0, 1e-5f);
}

/* ==== Attention of one head ==== */

#define ATT_GEMM_MIN 8 /* queries from which the GEMM way pays for its copies */

/* Keys that query r sees: all T, or the causal prefix up to position causal0 + r. */
static inline int attention_len(int causal0, int r, int T) {
    return causal0 < 0 || causal0 + r + 1 > T ? T : causal0 + r + 1;
}

/* Bytes from one key (or value) row of a cache to the next: ldkv elements, or one QW_KV8 row of hd. */
static inline size_t kv_stride(qw_dtype dt, int ldkv, int hd) { return qw_kv_row_bytes(dt, dt == QW_KV8 ? hd : ldkv); }

/* Keys (or values) s0 .. s0 + n - 1 of a cache as f32 rows: in place for f32 (stride ldkv), widened
 * into wide for bf16 and QW_KV8 (the table's to_f32; stride hd). *ld gets the stride. */
static const float *kv_rows(const qw_kernels *k, const void *kv, qw_dtype dt, int ldkv, int s0, int n, int hd,
                            float *wide, int *ld) {
    if (dt == QW_F32) {
        *ld = ldkv;
        return (const float *)kv + (size_t)s0 * ldkv;
    }
    const size_t rb = kv_stride(dt, ldkv, hd), used = qw_kv_row_bytes(dt, hd);
    const char *rows = (const char *)kv + (size_t)s0 * rb;
    for (int s = 0; s < n; s++) {
        qw_prefetch_kv_row(rows, rb, s, used); /* the row QW_KV_AHEAD ahead (kernels.h) */
        k->to_f32(wide + (size_t)s * hd, rows + (size_t)s * rb, dt, hd);
    }
    *ld = hd;
    return wide;
}

/* One query over len keys in one pass, no buffer for the scores: a running maximum (online
 * softmax), one dot and one axpy per key; o must be zero. */
static void attention_online(const qw_kernels *k, float *o, const float *qr, const void *keys, const void *vals,
                             qw_dtype dt, int ldkv, int len, int hd, float *wide) {
    const float scale = 1.0f / sqrtf((float)hd);
    float mx = -INFINITY, sum = 0.0f;
    int ld;
    for (int s = 0; s < len; s++) {
        const float v = k->dot(qr, kv_rows(k, keys, dt, ldkv, s, 1, hd, wide, &ld), hd) * scale;
        if (v > mx) { /* a new maximum: rescale what was summed so far */
            const float f = expf(mx - v);
            for (int d = 0; d < hd; d++) o[d] *= f;
            sum *= f;
            mx = v;
        }
        const float e = expf(v - mx);
        sum += e;
        k->axpy(o, e, kv_rows(k, vals, dt, ldkv, s, 1, hd, wide, &ld), hd);
    }
    const float inv = 1.0f / sum;
    for (int d = 0; d < hd; d++) o[d] *= inv;
}

/* Few queries (decode), or no memory for the GEMM way, for the `group` query heads that share
 * the keys and values (head h's query and output at + h * hd in each row). Per row: each head's
 * scores of all len keys by dot_rows into a buffer (on the stack up to 4096 scores, else
 * malloc'ed), times scale, the table's softmax, then the values by axpy_rows. f32 keys and
 * values are read in place, all len at once; QW_KV8 ones by the table's kv8_dot_rows /
 * kv8_axpy_rows where it has them (widened in registers, for all the group's heads in one call:
 * AVX-512 widens each row once for a pair of heads); else bf16 and QW_KV8 ones are
 * widened to f32 (kv_rows) in blocks that fit a 16 KiB buffer on the stack, once for the group.
 * dot_rows gives every row its own dot whatever the stride, and axpy_rows in blocks is the same
 * axpys in the same order (the kv8 ones those over the widened rows), so each query gets bit for
 * bit the attention over an f32 copy of the cache, and each head what it gets alone; a bf16
 * cache is read once for the group, at half the bytes. Should the malloc
 * fail: attention_online, per head. Single-threaded; each query's result depends on its own q,
 * keys and values only. */
static void attention_rows(const qw_kernels *k, float *out, int ldo, const float *q, int ldq, int m, int group,
                           const void *keys, const void *vals, qw_dtype dt, int ldkv, int T, int hd, int causal0) {
    enum { ATT_STACK = 4096, WIDE = 4096 }; /* scores and widened rows on the stack: 16 KiB each */
    const float scale = 1.0f / sqrtf((float)hd);
    const int blk = dt != QW_F32 ? WIDE / hd : T; /* keys at a time (hd <= 4096: qw_attention) */
    const int fused = dt == QW_KV8 && k->kv8_dot_rows; /* QW_KV8 rows widened in registers, not in wide */
    float stack[ATT_STACK], wide[WIDE], *heap = NULL;
    size_t heap_len = 0;
    int ld;
    /* The runs' first QW_KV_AHEAD rows (qw_prefetch_kv_row of s - QW_KV_AHEAD), which the table's
     * prefetch (that far ahead of the row it reads) never reaches: each run starts cold, the cache's
     * runs a request's capacity apart (the values' too, so they arrive while the scores are
     * computed). Batch-8 steps 0.971-0.982 (bench_ab.py, 5 s and 30 s clips, Zen 5); batch 1 within
     * the noise. */
    if (fused) {
        const size_t rb = qw_kv_row_bytes(QW_KV8, hd);
        for (int s = 0; s < QW_KV_AHEAD; s++) {
            qw_prefetch_kv_row(keys, rb, s - QW_KV_AHEAD, rb);
            qw_prefetch_kv_row(vals, rb, s - QW_KV_AHEAD, rb);
        }
    }
    for (int r = 0; r < m; r++) {
        const int len = attention_len(causal0, r, T);
        const size_t need = (size_t)group * len;
        const float *qr = q + (size_t)r * ldq;
        float *o = out + (size_t)r * ldo, *p = stack;
        if (need > ATT_STACK) {
            if (need > heap_len) {
                free(heap);
                heap = malloc(need * sizeof(float));
                heap_len = heap ? need : 0;
            }
            p = heap;
        }
        for (int h = 0; h < group; h++) memset(o + (size_t)h * hd, 0, (size_t)hd * sizeof(float));
        if (!p) {
            for (int h = 0; h < group; h++)
                attention_online(k, o + (size_t)h * hd, qr + (size_t)h * hd, keys, vals, dt, ldkv, len, hd, wide);
            continue;
        }
        if (fused) {
            k->kv8_dot_rows(p, len, qr, hd, group, keys, len, hd);
        } else {
            for (int s0 = 0; s0 < len; s0 += blk) {
                const int n = len - s0 < blk ? len - s0 : blk;
                const float *rows = kv_rows(k, keys, dt, ldkv, s0, n, hd, wide, &ld);
                for (int h = 0; h < group; h++)
                    k->dot_rows(p + (size_t)h * len + s0, qr + (size_t)h * hd, rows, ld, n, hd);
            }
        }
        for (int h = 0; h < group; h++) {
            float *ph = p + (size_t)h * len;
            for (int s = 0; s < len; s++) ph[s] *= scale;
            k->softmax(ph, len);
        }
        if (fused) {
            k->kv8_axpy_rows(o, hd, p, len, group, vals, len, hd);
            continue;
        }
        for (int s0 = 0; s0 < len; s0 += blk) {
            const int n = len - s0 < blk ? len - s0 : blk;
            const float *rows = kv_rows(k, vals, dt, ldkv, s0, n, hd, wide, &ld);
            for (int h = 0; h < group; h++) k->axpy_rows(o + (size_t)h * hd, p + (size_t)h * len + s0, rows, ld, n, hd);
        }
    }
    free(heap);
}

/* ==== The attention's bf16 products: AMX tiles, or the BF16 set's panels (kernels.h qw_bf16p_*) ==== */

/* Precision FAST's attention on bf16 dot products without AMX: the BF16 set, on CPUs with AVX512_BF16. */
static int bf16_dots(const qw_kernels *k) {
#ifdef QW_X86
    return k == &qw_kernels_avx512bf16;
#else
    (void)k;
    return 0;
#endif
}

/* Bytes of W [N][K] bf16 packed for the products, rounded up to 64. */
static size_t bf16_packed_size(int amx, int N, int K) {
    size_t n = 0;
    if (amx) n = qw_amx_packed_size(N, K);
#ifdef QW_X86
    else n = qw_bf16p_size(N, K);
#endif
    return (n + 63) & ~(size_t)63;
}

/* Keys and values, [T][hd] bf16 each, packed: the keys as W = K (N = T, K = hd), the values as
 * W = V^T (N = hd, K = T). */
static void bf16_pack(int amx, void *Kp, void *Vp, const uint16_t *keys, const uint16_t *vals, int T, int hd) {
    if (amx) {
        qw_amx_pack_keys(Kp, keys, T, hd);
        qw_amx_pack_values(Vp, vals, T, hd);
        return;
    }
#ifdef QW_X86
    qw_bf16p_pack(Kp, keys, T, hd, 0, (T + 31) / 32);
    qw_bf16p_pack_t(Vp, vals, T, hd);
#endif
}

/* C [M][N] (row stride ldc) = bf16(A) [M][K] (row stride lda, rounded once into Ab) times the packed W. */
static void bf16_product(int amx, float *C, int ldc, uint16_t *Ab, const float *A, int lda, const void *W, int M,
                         int N, int K) {
    if (amx) {
        qw_amx_round_rows(Ab, A, lda, M, K);
        qw_amx_matmul_rounded(C, ldc, Ab, W, NULL, M, N, K, 0, N);
        return;
    }
#ifdef QW_X86
    qw_bf16p_round_rows(Ab, A, lda, M, K);
    qw_bf16p_matmul_rounded(C, ldc, Ab, W, NULL, M, K, 0, N);
#endif
}

void qw_attention(const qw_kernels *k, int amx, float *out, int ldo, const float *q, int ldq, int m, int group,
                  const void *keys, const void *vals, qw_dtype kv_dt, int ldkv, int T, int hd, int causal0) {
    if (m <= 0 || T <= 0 || group <= 0) return;
    const int bf16 = kv_dt == QW_BF16, kv8 = kv_dt == QW_KV8;
    /* bf16 products (AMX tiles, else the BF16 set's dot products) take a bf16 cache as it is (keys
     * [T][hd], values transposed), an int8 one widened and rounded to bf16 first */
    amx = amx && (bf16 || kv8) && ldkv == hd;
    const int tiles = amx || (bf16_dots(k) && (bf16 || kv8) && ldkv == hd);
    /* f32: K (T x hd), V^T (hd x T) and S (m x T); bf16: S, then K and V^T packed, 64-byte aligned,
     * for QW_KV8 the bf16 keys and values, and a head's rounded queries and probabilities */
    const size_t s_at = tiles ? 0 : (size_t)2 * T * hd, s_end = ((s_at + (size_t)m * T) * sizeof(float) + 63) & ~(size_t)63;
    const size_t pk = tiles ? bf16_packed_size(amx, T, hd) : 0, pv = tiles ? bf16_packed_size(amx, hd, T) : 0;
    const size_t pb = tiles && kv8 ? ((size_t)T * hd * 2 * sizeof(uint16_t) + 63) & ~(size_t)63 : 0;
    const size_t qs = rounded_kp(hd), ps = rounded_kp(T);
    const size_t rb16 = tiles ? ((size_t)m * (qs + ps) * sizeof(uint16_t) + 63) & ~(size_t)63 : 0;
    float *Kc = m < ATT_GEMM_MIN ? NULL : aligned_alloc(64, s_end + pk + pv + pb + rb16);
    if (!Kc) {
        attention_rows(k, out, ldo, q, ldq, m, group, keys, vals, kv_dt, ldkv, T, hd, causal0);
        return;
    }
    float *Vt = Kc + (size_t)T * hd, *S = Kc + s_at; /* [T][hd], [hd][T], [m][T] */
    void *Kp = (char *)Kc + s_end, *Vp = (char *)Kp + pk;
    if (tiles && kv8) {
        uint16_t *kb = (uint16_t *)(void *)((char *)Vp + pv), *vb = kb + (size_t)T * hd; /* [T][hd] each */
        qw_amx_kv8_bf16(kb, keys, T, hd); /* AVX-512 (amx.h), where either kind of bf16 product runs */
        qw_amx_kv8_bf16(vb, vals, T, hd);
        bf16_pack(amx, Kp, Vp, kb, vb, T, hd);
    } else if (tiles) {
        bf16_pack(amx, Kp, Vp, keys, vals, T, hd);
    } else {
        const size_t rb = kv_stride(kv_dt, ldkv, hd);
        for (int s = 0; s < T; s++) {
            if (kv8) { /* the value row widened into K's row s first, then the key over it */
                float *kr = Kc + (size_t)s * hd;
                k->to_f32(kr, (const char *)vals + (size_t)s * rb, QW_KV8, hd);
                for (int d = 0; d < hd; d++) Vt[(size_t)d * T + s] = kr[d];
                k->to_f32(kr, (const char *)keys + (size_t)s * rb, QW_KV8, hd);
            } else if (bf16) {
                const uint16_t *vs = (const uint16_t *)vals + (size_t)s * ldkv;
                k->to_f32(Kc + (size_t)s * hd, (const uint16_t *)keys + (size_t)s * ldkv, QW_BF16, hd);
                for (int d = 0; d < hd; d++) Vt[(size_t)d * T + s] = qw_bf16_to_f32(vs[d]);
            } else {
                const float *vs = (const float *)vals + (size_t)s * ldkv;
                memcpy(Kc + (size_t)s * hd, (const float *)keys + (size_t)s * ldkv, (size_t)hd * sizeof(float));
                for (int d = 0; d < hd; d++) Vt[(size_t)d * T + s] = vs[d];
            }
        }
    }
    const float scale = 1.0f / sqrtf((float)hd);
    uint16_t *Qb = tiles ? (uint16_t *)(void *)((char *)Vp + pv + pb) : NULL, *Pb = Qb ? Qb + (size_t)m * qs : NULL;
    for (int h = 0; h < group; h++) {
        if (tiles) /* S = Q K^T */
            bf16_product(amx, S, T, Qb, q + (size_t)h * hd, ldq, Kp, m, T, hd);
        else
            k->matmul(S, T, q + (size_t)h * hd, ldq, Kc, QW_F32, NULL, m, hd, 0, T);
        for (int r = 0; r < m; r++) {
            float *row = S + (size_t)r * T;
            const int len = attention_len(causal0, r, T);
            if (amx) /* the row's output, written by P V's tile stores (a prefill: 8 KiB apart, not cached) */
                for (int d = 0; d < hd; d += 16) __builtin_prefetch(out + (size_t)r * ldo + (size_t)h * hd + d, 1);
            for (int s = 0; s < len; s++) row[s] *= scale;
            k->softmax(row, len);
            for (int s = len; s < T; s++) row[s] = 0.0f; /* keys after the query's position */
        }
        if (tiles) /* O = P V */
            bf16_product(amx, out + (size_t)h * hd, ldo, Pb, S, T, Vp, m, hd, T);
        else
            k->matmul(out + (size_t)h * hd, ldo, S, T, Vt, QW_F32, NULL, m, T, 0, hd);
    }
    free(Kc);
}
