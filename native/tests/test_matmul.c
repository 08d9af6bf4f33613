/*
 * Threaded products test — qw_matmul_n (ops.c) across the pool, bit for bit
 * against one call of the same kernel over all the columns, on this thread:
 *
 *   parts   the rows of a decode step (M < 16) on int8 weights: each thread
 *           takes its own part of the columns from the front, then what is
 *           left of the others from their ends;
 *   slices  more rows (M = 16, 40), and f32 weights: column slices claimed
 *           in turn;
 *
 * with 1, 2, 3, 5 and 24 threads (more than the cores and more than the
 * parts: workers off their core have their parts taken by the others),
 * int8 weights (precision FAST) and f32 weights through matmul and
 * matmul_rows, one to three products in a call, row counts that are not
 * multiples of 16 and fewer columns than the threads' parts. C starts as
 * NaN, so a column no thread computed fails; a column two threads computed
 * is a race ThreadSanitizer reports (tests/native runs this under it). Each
 * call runs three times (the threads meet elsewhere each time).
 *
 * Exit status is non-zero on any failure; the last line reads
 * "matmul: N passed, M failed".
 */
#include "internal.h"
#include "quant.h"
#include "threadpool.h"

#include <math.h>
#include <stdlib.h>

#define TEST_SEED 4242u
#include "test_util.h"

#define MAX_MATS 3

typedef struct {
    qw_mat m;
    qw_q8 q8;
    void *q, *s, *z; /* int8: qw_q8's arrays */
    float *f;        /* f32: [rows, cols] (the int8 copy's source too) */
    float *bias;
} mat;

static mat make_mat(int rows, int K, int int8) {
    mat w = {0};
    w.f = malloc((size_t)rows * K * sizeof(float));
    w.bias = malloc((size_t)rows * sizeof(float));
    for (size_t i = 0; i < (size_t)rows * K; i++) w.f[i] = frand();
    for (int i = 0; i < rows; i++) w.bias[i] = frand();
    w.m.rows = rows, w.m.cols = K;
    if (int8) {
        size_t qb, sb, zb;
        qw_q8_sizes(rows, K, &qb, &sb, &zb);
        w.q = aligned_alloc(64, qb), w.s = aligned_alloc(64, sb), w.z = aligned_alloc(64, zb);
        qw_q8_init(&w.q8, rows, K, w.q, w.s, w.z);
        qw_q8_pack(&w.q8, w.f, QW_F32, 0, (rows + 15) / 16);
        w.m.dt = QW_Q8; /* data: &w.q8 where the caller keeps it */
    } else {
        w.m.data = w.f, w.m.dt = QW_F32;
    }
    return w;
}

static void free_mat(mat *w) {
    free(w->f);
    free(w->bias);
    free(w->q);
    free(w->s);
    free(w->z);
}

/* One call of n products of M rows on ctx's pool against the kernel over all columns at once. */
static void test_call(qwen_context *ctx, int n, const int *rows, int K, int M, int int8, int rows_invariant) {
    mat w[MAX_MATS];
    float *A = malloc((size_t)M * K * sizeof(float)), *C[MAX_MATS], *ref[MAX_MATS];
    const qw_mat *W[MAX_MATS];
    const float *bias[MAX_MATS];
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = frand();
    for (int i = 0; i < n; i++) {
        w[i] = make_mat(rows[i], K, int8);
        if (int8) w[i].m.data = &w[i].q8;
        W[i] = &w[i].m, bias[i] = w[i].bias;
        C[i] = malloc((size_t)M * rows[i] * sizeof(float));
        ref[i] = malloc((size_t)M * rows[i] * sizeof(float));
    }
    if (int8) check(qw_q8_reserve(ctx, M, K) == 0, "reserve", "int8 activations of %d rows", M);
    /* the reference: one kernel call over [0, rows) on this thread */
    for (int i = 0; i < n; i++) {
        if (int8) {
            const qw_q8_act act = qw_q8_quantize(ctx->q8, ctx->q8_act, A, K, M, &w[i].q8);
            ctx->q8->matmul(ref[i], rows[i], &act, &w[i].q8, bias[i], M, 0, rows[i]);
        } else if (rows_invariant) {
            ctx->k->matmul_rows(ref[i], rows[i], A, K, w[i].f, QW_F32, bias[i], M, K, 0, rows[i]);
        } else {
            ctx->k->matmul(ref[i], rows[i], A, K, w[i].f, QW_F32, bias[i], M, K, 0, rows[i]);
        }
    }
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < n; i++)
            for (size_t e = 0; e < (size_t)M * rows[i]; e++) C[i][e] = NAN;
        qw_matmul_n(ctx, n, C, A, W, bias, M, rows_invariant);
        int bad = 0;
        for (int i = 0; i < n; i++)
            for (size_t e = 0; e < (size_t)M * rows[i]; e++) bad += memcmp(&C[i][e], &ref[i][e], sizeof(float)) != 0;
        check(!bad, "bits", "%d threads, %s%s, M=%d, %d products (first %d columns), K=%d: %d values differ",
              ctx->n_threads, int8 ? "int8" : "f32", rows_invariant ? " rows" : "", M, n, rows[0], K, bad);
    }
    for (int i = 0; i < n; i++) {
        free_mat(&w[i]);
        free(C[i]);
        free(ref[i]);
    }
    free(A);
}

int main(void) {
    static const int threads[] = {1, 2, 3, 5, 24};
    static const int Ms[] = {1, 2, 5, 15, 16, 40};
    /* products of one call: the decoder's shapes cut down, odd counts, fewer columns than parts */
    static const int shapes[][MAX_MATS + 1] = {
        {1, 1000}, {3, 256, 128, 128}, {2, 200, 40}, {1, 33}, {3, 16, 8, 1}, {1, 16 * 24 + 48},
    };
    static const int isas[] = {QWEN_ISA_SCALAR, QWEN_ISA_AVX2, QWEN_ISA_AVX512, QWEN_ISA_AVX512BF16, QWEN_ISA_NEON};
    for (size_t a = 0; a < sizeof(isas) / sizeof(isas[0]); a++) {
        int isa = 0;
        const qw_kernels *k = qw_kernels_for(isas[a], &isa);
        if (!k) {
            printf("matmul: kernel set %s not on this CPU, skipped\n", qwen_isa_name((qwen_isa)isas[a]));
            continue;
        }
        const qw_q8_kernels *q8 = qw_q8_for(isa);
        for (size_t t = 0; t < sizeof(threads) / sizeof(threads[0]); t++) {
            qwen_context ctx = {0};
            ctx.k = k, ctx.q8 = q8, ctx.precision = QWEN_PRECISION_FAST;
            ctx.n_threads = threads[t];
            ctx.pool = qw_pool_create(threads[t]);
            for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
                for (size_t m = 0; m < sizeof(Ms) / sizeof(Ms[0]); m++)
                    for (int kind = 0; kind < 3; kind++) /* int8, f32, f32 through matmul_rows */
                        test_call(&ctx, shapes[s][0], &shapes[s][1], kind == 0 ? 100 : 72, Ms[m], kind == 0, kind == 2);
            qw_pool_free(ctx.pool);
            free(ctx.q8_act);
        }
        printf("matmul: %s + int8 %s tested, %d failures so far\n", k->name, q8->name, failed);
    }
    printf("matmul: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
