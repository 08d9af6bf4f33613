/*
 * Kernel microbenchmark — matmul of every kernel table the CPU runs, on the
 * shapes of the real model (Qwen3-ASR 0.6B: decoder d=1024, ffn=3072,
 * vocab=151936; encoder d=896, ffn=3584).
 *
 *   decode  (M = 1):      memory-bound; the weights rotate over copies that
 *                         add up to more than the L3 cache, so every call
 *                         reads them from DRAM. Figure of merit: GB/s of W.
 *   batch   (M = 4):      decode steps of 4 requests sharing one pass over
 *                         the weights (also from DRAM); GB/s and GFLOP/s.
 *   prefill (M = 64..512): compute-bound. Figure of merit: GFLOP/s.
 *   rows    (M = 1, 4, 8, 16): matmul_rows, the batch-invariant kernel of
 *                         continuous batching, on the decoder's projections
 *                         (weights from DRAM, as in decode): GB/s of W and
 *                         GFLOP/s; M = 1 is the floor the others are held to.
 *   amx     (M = 64..512): qw_amx_matmul (amx.h, bf16 weights packed once
 *                         for the tiles) on the prefill shapes, each next to
 *                         the avx512bf16 table's matmul (or the best table the
 *                         CPU has) on the same data; only where the CPU has
 *                         AMX and the OS grants it ("amx: not available on
 *                         this CPU" otherwise). Select it with -v amx.
 *
 *   int8    (M = 1-16, 32, 64, 145): the int8 weight product of precision
 *                         "fast" (quant.h) of each int8 table the CPU runs (AMX-INT8 where the CPU has it), on
 *                         the decoder's projections and the LM head, weights
 *                         from DRAM; GB/s of the packed bytes (int8 + scales
 *                         + sums) and GOP/s. Select it with -v int8; -m M
 *                         then times that M alone, any M (a prefill chunk's 52 or 96).
 *                         On the LM head, each table's screen of it too, for as
 *                         many rows as the table screens (quant.h screen_rows;
 *                         "screen" lines: GB/s of its 4-bit bytes).
 *   attention             a decode step's attention over the int8 KV cache of
 *                         precision "fast" (ops.c attention_rows: scores of
 *                         two query heads, softmax, values) per table with its
 *                         kv8 kernels, T = 175 and 900 cached positions (-m T),
 *                         each KV head's run of keys and values from DRAM,
 *                         "packed" back to back or "cache" T + 512 rows apart
 *                         (a request's capacity, max_new_tokens 512): ns a
 *                         position and KV head over all threads, and the parts.
 *   peak                  the register peak of vfmadd231ps, vdpbf16ps and
 *                         vpdpbusd (bench_peak.c) on -t threads.
 *   cores                 the round trip of a cache line between two threads
 *                         (-t 2 or more): ~50-120 ns where two cores share an
 *                         L3 (one CCD of an EPYC), ~400 where they do not, and
 *                         a decode step's hand-offs between its threads cost
 *                         that much more (docs/performance.md). Select it with
 *                         -v cores; bench_engine.py --floor prints it.
 *
 * Threads split the output columns [0, N) into contiguous slices (multiples
 * of 16, like ops.c) and each runs its own loop; time is wall clock, the
 * fastest of 5 rounds.
 *
 * Usage: bench_kernels [-t threads] [-s seconds_per_case] [-v variant] [-d dtype] [-m M] [-c all|rows]
 *                      [-n N] [-q int8_table]
 * (-c rows: only the matmul_rows cases. Compiled with -DBENCH_NO_ROWS, e.g.
 * against an older kernels.h, those cases time matmul instead. -n, -q: the
 * int8 cases of N columns only, of that int8 table only; `-v int8 -m 1
 * -n 151936 -q avx512vnni` is bench_engine.py --floor's read rate.)
 * Built and run by benchmarks/bench_kernels.sh.
 */
#include "../native/include/qwen.h"
#include "amx.h"
#include "kernels.h"
#include "quant.h"
#include "bench_peak.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ==== Set-up ==== */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint32_t rng = 1u;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}

static size_t dt_size(qw_dtype dt) { return dt == QW_F32 ? 4 : 2; }
static const char *dt_name(qw_dtype dt) { return dt == QW_F32 ? "f32" : dt == QW_BF16 ? "bf16" : "f16"; }

static void fill_weights(void *w, qw_dtype dt, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float f = frand() * 0.05f;
        if (dt == QW_F32) ((float *)w)[i] = f;
        else if (dt == QW_BF16) ((uint16_t *)w)[i] = qw_f32_to_bf16(f);
        else ((uint16_t *)w)[i] = (uint16_t)(0x2000u + (rng >> 20)); /* small normal f16 values */
    }
}

/* ==== Timed loop ==== */

/* Runs fn on each of `threads` jobs (job t at jobs + t * size bytes), job 0 on this thread, the
 * others on their own; returns the seconds until the last one ends. */
static double on_threads(void *(*fn)(void *), void *jobs, size_t size, int threads) {
    pthread_t tid[16];
    double t0 = now();
    for (int t = 1; t < threads; t++) pthread_create(&tid[t], NULL, fn, (char *)jobs + (size_t)t * size);
    fn(jobs);
    for (int t = 1; t < threads; t++) pthread_join(tid[t], NULL);
    return now() - t0;
}

/* Thread t's contiguous slice [n0, n1) of N columns (multiples of 16, like ops.c). */
static void column_slice(int N, int threads, int t, int *n0, int *n1) {
    const int per = ((N + threads - 1) / threads + 15) & ~15;
    *n0 = t * per < N ? t * per : N;
    *n1 = *n0 + per < N ? *n0 + per : N;
}

typedef struct {
    const qw_kernels *k;
    float *C;
    const float *A;
    const char *W; /* copies of W[N, K], `stride` bytes apart */
    size_t stride;
    int copies, reps, rows; /* rows: time matmul_rows instead of matmul */
    qw_dtype dt;
    int M, K, N, n0, n1;
} job;

static void *run_job(void *arg) {
    job *j = arg;
#ifdef BENCH_NO_ROWS
    void (*mm)(float *, int, const float *, int, const void *, qw_dtype, const float *, int, int, int, int) = j->k->matmul;
#else
    void (*mm)(float *, int, const float *, int, const void *, qw_dtype, const float *, int, int, int, int) =
        j->rows ? j->k->matmul_rows : j->k->matmul;
#endif
    for (int r = 0; r < j->reps; r++)
        for (int c = 0; c < j->copies; c++)
            mm(j->C, j->N, j->A, j->K, j->W + (size_t)c * j->stride, j->dt, NULL, j->M, j->K, j->n0, j->n1);
    return NULL;
}

/* Runs `reps` passes over `copies` weight copies on `threads` threads; returns seconds. */
static double timed(const qw_kernels *k, float *C, const float *A, const char *W, size_t stride, int copies, int reps,
                    int rows, qw_dtype dt, int M, int K, int N, int threads) {
    job jobs[16];
    for (int t = 0; t < threads; t++) {
        int n0, n1;
        column_slice(N, threads, t, &n0, &n1);
        jobs[t] = (job){k, C, A, W, stride, copies, reps, rows, dt, M, K, N, n0, n1};
    }
    return on_threads(run_job, jobs, sizeof(jobs[0]), threads);
}

#define ROUNDS 5

/* rows: matmul_rows, weights from DRAM whatever M. */
static void bench(const qw_kernels *k, qw_dtype dt, int M, int K, int N, int threads, double seconds, int rows) {
    const size_t wbytes = (size_t)N * K * dt_size(dt);
    /* Decode and batch: enough copies to exceed a 32 MiB L3 several times over. */
    int copies = M < 8 || rows ? (int)((192u << 20) / wbytes) + 1 : 1;
    if (copies > 64) copies = 64;
    const size_t stride = (wbytes + 4095) & ~(size_t)4095;
    char *W = aligned_alloc(4096, stride * copies);
    float *A = aligned_alloc(64, ((size_t)M * K * sizeof(float) + 63) & ~(size_t)63);
    float *C = aligned_alloc(64, ((size_t)M * N * sizeof(float) + 63) & ~(size_t)63);
    if (!W || !A || !C) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int c = 0; c < copies; c++) fill_weights(W + (size_t)c * stride, dt, (size_t)N * K);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = frand();
    memset(C, 0, (size_t)M * N * sizeof(float));

    /* Warm up once, size the run to about `seconds`, then measure it as
     * ROUNDS rounds and keep the fastest (other load on the machine only
     * ever slows a round down). */
    double t1 = timed(k, C, A, W, stride, copies, 1, rows, dt, M, K, N, threads);
    int reps = (int)(seconds / ROUNDS / (t1 > 1e-6 ? t1 : 1e-6));
    if (reps < 1) reps = 1;
    double per_call = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        double t = timed(k, C, A, W, stride, copies, reps, rows, dt, M, K, N, threads) / ((double)reps * copies);
        if (t < per_call) per_call = t;
    }
    double gflops = 2.0 * M * K * N / per_call * 1e-9;
    double gbs = (double)wbytes / per_call * 1e-9;
    printf("%-7s %-7s %-4s t=%d M=%-4d K=%-5d N=%-6d %9.3f ms  %7.1f GFLOP/s  %6.1f GB/s\n", k->name,
           rows ? "rows" : M == 1 ? "decode" : M < 8 ? "batch" : "prefill", dt_name(dt), threads, M, K, N, per_call * 1e3, gflops, gbs);
    fflush(stdout);
    free(W);
    free(A);
    free(C);
}

/* ==== Int8 weights (precision "fast") ==== */

typedef struct {
    const qw_q8_kernels *t;
    float *C;
    const qw_q8_act *A;
    const qw_q8 *W; /* [copies] */
    const qw_q4 *S; /* [copies]: their screens, timed instead of W where not NULL */
    int copies, reps, M, n0, n1;
} q8_job;

static void *run_q8_job(void *arg) {
    q8_job *j = arg;
    for (int r = 0; r < j->reps; r++)
        for (int c = 0; c < j->copies; c++)
            if (j->S) j->t->screen(j->C, j->W[c].N, j->A, &j->S[c], j->M, j->n0, j->n1);
            else j->t->matmul(j->C, j->W[c].N, j->A, &j->W[c], NULL, j->M, j->n0, j->n1);
    return NULL;
}

static double timed_q8(const qw_q8_kernels *t, float *C, const qw_q8_act *A, const qw_q8 *W, const qw_q4 *S,
                       int copies, int reps, int M, int N, int threads) {
    q8_job jobs[16];
    for (int i = 0; i < threads; i++) {
        int n0, n1;
        column_slice(N, threads, i, &n0, &n1);
        jobs[i] = (q8_job){t, C, A, W, S, copies, reps, M, n0, n1};
    }
    return on_threads(run_q8_job, jobs, sizeof(jobs[0]), threads);
}

/* screen: time the table's screen of the packed weights (quant.h; its bytes the screen's) */
static void bench_q8(const qw_q8_kernels *t, int M, int K, int N, int threads, double seconds, int screen) {
    size_t qb, sb, zb, q4b = 0, s4b = 0;
    qw_q8_sizes(N, K, &qb, &sb, &zb);
    if (screen) qw_q4_sizes(N, K, &q4b, &s4b);
    const size_t stride = qb + sb + zb + q4b + s4b, bytes = screen ? q4b + s4b : qb + sb + zb;
    int copies = (int)((192u << 20) / bytes) + 1;
    if (copies > 64) copies = 64;
    qw_q8 *W = malloc((size_t)copies * sizeof(qw_q8));
    qw_q4 *S = screen ? malloc((size_t)copies * sizeof(qw_q4)) : NULL;
    char *mem = aligned_alloc(4096, ((stride * copies) + 4095) & ~(size_t)4095);
    uint16_t *src = malloc((size_t)N * K * 2);
    fill_weights(src, QW_BF16, (size_t)N * K);
    for (int c = 0; c < copies; c++) {
        char *m = mem + (size_t)c * stride;
        qw_q8_init(&W[c], N, K, m, m + qb, m + qb + sb);
        qw_q8_pack(&W[c], src, QW_BF16, 0, (N + 15) / 16);
        if (screen) {
            qw_q4_init(&S[c], N, K, m + qb + sb + zb, m + qb + sb + zb + q4b);
            qw_q4_from_q8(&S[c], &W[c], 0, (N + 15) / 16);
        }
    }
    float *A = malloc((size_t)M * K * sizeof(float)), *C = malloc((size_t)M * N * sizeof(float));
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = frand();
    uint8_t *qa = malloc((size_t)M * W[0].Kp);
    float *sa = malloc((size_t)M * W[0].ng * sizeof(float));
    qw_q8_quantize_rows(qa, sa, A, K, M, K, W[0].Kp, W[0].ng);
    const qw_q8_act act = {qa, sa, M, W[0].Kp, W[0].ng};
    double t1 = timed_q8(t, C, &act, W, S, copies, 1, M, N, threads);
    int reps = (int)(seconds / ROUNDS / (t1 > 1e-6 ? t1 : 1e-6));
    if (reps < 1) reps = 1;
    double per_call = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        double x = timed_q8(t, C, &act, W, S, copies, reps, M, N, threads) / ((double)reps * copies);
        if (x < per_call) per_call = x;
    }
    printf("%-6s %-10s t=%d M=%-4d K=%-5d N=%-6d %9.3f ms  %7.1f GOP/s   %6.1f GB/s\n", screen ? "screen" : "int8",
           t->name, threads, M, K, N, per_call * 1e3, 2.0 * M * K * N / per_call * 1e-9,
           (double)bytes / per_call * 1e-9);
    fflush(stdout);
    free(W), free(S), free(mem), free(src), free(A), free(C), free(qa), free(sa);
}

/* ==== AMX ==== */

typedef struct {
    float *C;
    const float *A;
    const void *P; /* qw_amx_pack of W */
    int reps, M, K, N, n0, n1;
} amx_job;

static void *run_amx_job(void *arg) {
    amx_job *j = arg;
    for (int r = 0; r < j->reps; r++) qw_amx_matmul(j->C, j->N, j->A, j->K, j->P, NULL, j->M, j->N, j->K, j->n0, j->n1);
    return NULL;
}

/* `reps` calls of qw_amx_matmul on `threads` threads (column slices as in timed); returns seconds. */
static double timed_amx(float *C, const float *A, const void *P, int reps, int M, int K, int N, int threads) {
    amx_job jobs[16];
    for (int t = 0; t < threads; t++) {
        int n0, n1;
        column_slice(N, threads, t, &n0, &n1);
        jobs[t] = (amx_job){C, A, P, reps, M, K, N, n0, n1};
    }
    return on_threads(run_amx_job, jobs, sizeof(jobs[0]), threads);
}

/* qw_amx_matmul on bf16 W[N, K], M rows, next to table `ref` on the same data. */
static void bench_amx(const qw_kernels *ref, int M, int K, int N, int threads, double seconds) {
    const size_t wbytes = (size_t)N * K * 2, pbytes = qw_amx_packed_size(N, K);
    uint16_t *W = aligned_alloc(4096, (wbytes + 4095) & ~(size_t)4095);
    void *P = aligned_alloc(64, pbytes);
    float *A = aligned_alloc(64, ((size_t)M * K * sizeof(float) + 63) & ~(size_t)63);
    float *C = aligned_alloc(64, ((size_t)M * N * sizeof(float) + 63) & ~(size_t)63);
    if (!W || !P || !A || !C) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    fill_weights(W, QW_BF16, (size_t)N * K);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = frand();
    qw_amx_pack(P, W, QW_BF16, N, K);
    double t1 = timed_amx(C, A, P, 1, M, K, N, threads);
    int reps = (int)(seconds / ROUNDS / (t1 > 1e-6 ? t1 : 1e-6));
    if (reps < 1) reps = 1;
    double per_call = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        double t = timed_amx(C, A, P, reps, M, K, N, threads) / reps;
        if (t < per_call) per_call = t;
    }
    printf("%-7s %-7s %-4s t=%d M=%-4d K=%-5d N=%-6d %9.3f ms  %7.1f GFLOP/s  %6.1f GB/s\n", "amx", "prefill", "bf16",
           threads, M, K, N, per_call * 1e3, 2.0 * M * K * N / per_call * 1e-9, (double)wbytes / per_call * 1e-9);
    fflush(stdout);
    free(W);
    free(P);
    free(A);
    free(C);
    bench(ref, QW_BF16, M, K, N, threads, seconds, 0); /* the reference, same shape */
}

/* ==== Between the cores ==== */

static atomic_int ping; /* odd: the caller's turn done, the other thread's to answer; -1: stop */

static void *pong(void *arg) {
    const int n = *(const int *)arg;
    for (int i = 1; i <= n; i++) {
        int v;
        while ((v = atomic_load_explicit(&ping, memory_order_acquire)) != 2 * i - 1)
            if (v < 0) return NULL;
        atomic_store_explicit(&ping, 2 * i, memory_order_release);
    }
    return NULL;
}

static int by_value(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of 101 runs of 1000 round trips of one cache line between this thread and another
 * (given up after a second: the two threads share one CPU). */
static void bench_cores(void) {
    enum { RUNS = 101, N = 1000 };
    int total = RUNS * N;
    double t[RUNS];
    pthread_t other;
    atomic_store(&ping, 0);
    pthread_create(&other, NULL, pong, &total);
    const double start = now();
    for (int r = 0, i = 1; r < RUNS; r++) {
        const double a = now();
        for (int e = 0; e < N; e++, i++) {
            atomic_store_explicit(&ping, 2 * i - 1, memory_order_release);
            for (unsigned spins = 1; atomic_load_explicit(&ping, memory_order_acquire) != 2 * i; spins++)
                if (!(spins & 0xffff) && now() - start > 1.0) {
                    atomic_store(&ping, -1);
                    pthread_join(other, NULL);
                    printf("cores: no answer within 1 s (one CPU for both threads?)\n");
                    return;
                }
        }
        t[r] = (now() - a) / N;
    }
    pthread_join(other, NULL);
    qsort(t, RUNS, sizeof(t[0]), by_value);
    printf("cores  round trip %.0f ns (the median of %d runs of %d)\n", t[RUNS / 2] * 1e9, RUNS, N);
}

/* ==== Decode attention over the int8 KV cache (precision "fast") ==== */

/* What attention_rows (ops.c) does for one query row of a KV head and its two query heads (the
 * decoder's grouping): the table's kv8_dot_rows over the head's T cached keys, the scores scaled
 * and softmaxed per head, then kv8_axpy_rows over the values. Each thread runs its own runs of
 * keys and values, `run` bytes apart (T rows used of each), from DRAM; phase 0 times the whole,
 * 1-3 the three parts each over every run (scores, softmax, values), 4 a read of the same lines. */
typedef struct {
    const qw_kernels *k;
    const char *K, *V;
    size_t run;
    int nrun, T, reps, phase;
    float *p, *out;
    const float *q;
    long sink;
} att_job;

#define ATT_HD 128 /* the decoder's head size */

static void *run_att_job(void *arg) {
    att_job *j = arg;
    const qw_kernels *k = j->k;
    const float scale = 1.0f / sqrtf((float)ATT_HD);
    const size_t used = (size_t)j->T * qw_kv8_row_bytes(ATT_HD);
    for (int rep = 0; rep < j->reps; rep++)
        for (int r = 0; r < j->nrun; r++) {
            const char *K = j->K + (size_t)r * j->run, *V = j->V + (size_t)r * j->run;
            if (j->phase == 4) {
                for (size_t o = 0; o < used; o += 64) j->sink += K[o] + V[o];
                continue;
            }
            if (j->phase == 0 || j->phase == 1) k->kv8_dot_rows(j->p, j->T, j->q, ATT_HD, 2, K, j->T, ATT_HD);
            if (j->phase == 0 || j->phase == 2)
                for (int h = 0; h < 2; h++) {
                    float *ph = j->p + (size_t)h * j->T;
                    for (int s = 0; s < j->T; s++) ph[s] *= scale;
                    k->softmax(ph, j->T);
                }
            if (j->phase == 0 || j->phase == 3) {
                memset(j->out, 0, 2 * ATT_HD * sizeof(float));
                k->kv8_axpy_rows(j->out, ATT_HD, j->p, j->T, 2, V, j->T, ATT_HD);
            }
        }
    return NULL;
}

static double timed_att(att_job *jobs, int threads, int reps, int phase) {
    for (int t = 0; t < threads; t++) jobs[t].reps = reps, jobs[t].phase = phase;
    return on_threads(run_att_job, jobs, sizeof(jobs[0]), threads);
}

/* T cached positions, runs `cap` rows apart (cap == T: back to back). Prints ns a position and KV
 * head over all threads, and the cache's GB/s. */
static void bench_attention(const qw_kernels *k, int T, int cap, int threads, double seconds) {
    const size_t rb = qw_kv8_row_bytes(ATT_HD), run = (size_t)cap * rb;
    const int nrun = (int)((96u << 20) / ((size_t)T * 2 * rb)) + 1; /* 96 MB of keys and values a thread */
    att_job jobs[16];
    for (int t = 0; t < threads; t++) {
        char *K = aligned_alloc(4096, (run * nrun + 4095) & ~(size_t)4095);
        char *V = aligned_alloc(4096, (run * nrun + 4095) & ~(size_t)4095);
        float *p = malloc((size_t)2 * T * sizeof(float)), *out = malloc(2 * ATT_HD * sizeof(float));
        float *q = malloc(2 * ATT_HD * sizeof(float));
        if (!K || !V || !p || !out || !q) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        float x[ATT_HD];
        for (int i = 0; i < 2 * ATT_HD; i++) q[i] = frand();
        for (int r = 0; r < nrun; r++) /* only the rows a sequence has written are touched */
            for (int s = 0; s < T; s++) {
                for (int i = 0; i < ATT_HD; i++) x[i] = frand();
                qw_kv8_quantize(K + (size_t)r * run + (size_t)s * rb, x, ATT_HD);
                for (int i = 0; i < ATT_HD; i++) x[i] = frand();
                qw_kv8_quantize(V + (size_t)r * run + (size_t)s * rb, x, ATT_HD);
            }
        jobs[t] = (att_job){k, K, V, run, nrun, T, 1, 0, p, out, q, 0};
    }
    double t1 = timed_att(jobs, threads, 1, 0);
    int reps = (int)(seconds / ROUNDS / (t1 > 1e-6 ? t1 : 1e-6));
    if (reps < 1) reps = 1;
    double best[5];
    for (int phase = 0; phase < 5; phase++) {
        best[phase] = 1e30;
        for (int r = 0; r < ROUNDS; r++) {
            const double t = timed_att(jobs, threads, reps, phase) / ((double)reps * nrun * T * threads);
            if (t < best[phase]) best[phase] = t;
        }
    }
    printf("attention %-10s t=%d T=%-4d %-6s %6.2f ns a position (scores %.2f, softmax %.2f, values %.2f)  %5.1f GB/s;"
           "  a read of its lines %.2f ns\n",
           k->name, threads, T, cap == T ? "packed" : "cache", best[0] * 1e9, best[1] * 1e9, best[2] * 1e9,
           best[3] * 1e9, 2.0 * rb / best[0] * 1e-9, best[4] * 1e9);
    fflush(stdout);
    for (int t = 0; t < threads; t++)
        free((void *)jobs[t].K), free((void *)jobs[t].V), free(jobs[t].p), free(jobs[t].out), free((void *)jobs[t].q);
}

/* ==== Register peaks (bench_peak.c) ==== */

typedef struct {
    double (*fn)(long n);
    long n;
    double sink; /* the chains' values, so that nothing is dead */
} peak_job;

static void *run_peak(void *arg) {
    peak_job *j = arg;
    j->sink = j->fn(j->n);
    return NULL;
}

static double timed_peak(double (*fn)(long), long n, int threads) {
    peak_job jobs[16];
    for (int t = 0; t < threads; t++) jobs[t] = (peak_job){fn, n, 0};
    return on_threads(run_peak, jobs, sizeof(jobs[0]), threads);
}

/* Each instruction's operations a second over `threads` threads, on registers only: what a
 * stage's GFLOP/s or GOP/s is held to (docs/performance.md, What bounds each stage). */
static void bench_peaks(int threads, double seconds) {
    const struct {
        const char *name, *what;
        double (*fn)(long n);
        int has; /* the CPU has the instruction */
        double ops; /* a round's: its instructions' multiply-adds, times 2 */
    } P[] = {
        {"fma256", "GFLOP/s  vfmadd231ps ymm (exact, AVX2)", bench_peak_fma256,
         __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), 16 * BENCH_PEAK_YMM},
        {"fma512", "GFLOP/s  vfmadd231ps zmm (exact, AVX-512)", bench_peak_fma512, __builtin_cpu_supports("avx512f"),
         32 * BENCH_PEAK_ZMM},
        {"dpbf16", "GFLOP/s  vdpbf16ps zmm (fast's encoder without AMX)", bench_peak_dpbf16,
         __builtin_cpu_supports("avx512bf16"), 64 * BENCH_PEAK_ZMM},
        {"dpbusd512", "GOP/s    vpdpbusd zmm (fast's int8 products, AVX-512 VNNI)", bench_peak_dpbusd512,
         __builtin_cpu_supports("avx512vnni"), 128 * BENCH_PEAK_ZMM},
        {"dpbusd256", "GOP/s    vpdpbusd ymm (AVX-VNNI)", bench_peak_dpbusd256, __builtin_cpu_supports("avxvnni"),
         64 * BENCH_PEAK_YMM},
    };
    for (int w = 0; w < (int)(sizeof(P) / sizeof(P[0])); w++) {
        if (!P[w].has) {
            printf("peak %-9s not supported by this CPU, skipped\n", P[w].name);
            continue;
        }
        const long n1 = 1000000;
        const double t1 = timed_peak(P[w].fn, n1, threads);
        long n = (long)(seconds / ROUNDS / (t1 > 1e-6 ? t1 : 1e-6) * n1);
        if (n < n1) n = n1;
        double best = 1e30;
        for (int r = 0; r < ROUNDS; r++) {
            const double t = timed_peak(P[w].fn, n, threads);
            if (t < best) best = t;
        }
        printf("peak %-9s t=%d %8.1f %s\n", P[w].name, threads, (double)n * threads * P[w].ops / best * 1e-9, P[w].what);
        fflush(stdout);
    }
}

/* ==== Cases ==== */

int main(int argc, char **argv) {
    int threads = 1;
    double seconds = 0.4;
    const char *only = NULL, *only_dt = NULL, *cases = "all", *only_q8 = NULL;
    int only_m = 0, only_n = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-t")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-s")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "-v")) only = argv[i + 1];
        else if (!strcmp(argv[i], "-d")) only_dt = argv[i + 1];
        else if (!strcmp(argv[i], "-m")) only_m = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-c")) cases = argv[i + 1];
        else if (!strcmp(argv[i], "-n")) only_n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-q")) only_q8 = argv[i + 1];
    }
    const int only_rows = !strcmp(cases, "rows");
    if (threads < 1) threads = 1;
    if (threads > 16) threads = 16;
    if (only && !strcmp(only, "cores")) {
        if (threads < 2) printf("cores: needs -t 2 or more\n");
        else bench_cores();
        return 0;
    }
    if (only && !strcmp(only, "peak")) {
        bench_peaks(threads, seconds);
        return 0;
    }
    if (only && !strcmp(only, "attention")) { /* -m T: that many cached positions alone */
        static const int att_T[] = {175, 900}; /* a 10 s clip and 30 tokens; a 60 s chunk */
        for (int isa = QWEN_ISA_AVX2; isa <= QWEN_ISA_AVX512; isa++) {
            const qw_kernels *k = qw_kernels_for(isa, NULL);
            if (!k || !k->kv8_dot_rows) continue;
            for (int i = 0; i < 2; i++) {
                const int T = only_m ? only_m : att_T[i];
                bench_attention(k, T, T, threads, seconds);
                bench_attention(k, T, T + 512, threads, seconds); /* a request's cap: max_new_tokens 512 */
                if (only_m) break;
            }
        }
        return 0;
    }

    /* (K, N) of the real projections. */
    static const int decode[][2] = {
        {1024, 3072},   /* decoder gate or up */
        {3072, 1024},   /* decoder down */
        {1024, 4096},   /* decoder fused q,k,v (2048 + 1024 + 1024) */
        {896, 3584},    /* encoder fc1 */
        {1024, 151936}, /* LM head */
    };
    static const int prefill[][2] = {
        {1024, 3072}, /* decoder gate or up */
        {3072, 1024}, /* decoder down */
        {896, 3584},  /* encoder fc1 */
        {3584, 896},  /* encoder fc2 */
    };
    static const int rows_shapes[][2] = {
        {1024, 1024}, /* decoder k or v (fused: 2048 + 1024 + 1024) */
        {1024, 2048}, /* decoder q */
        {1024, 3072}, /* decoder gate or up */
        {3072, 1024}, /* decoder down */
    };
    static const int rows_m[] = {1, 4, 8, 16};
    static const int batch_m = 4;
    static const int prefill_m[] = {64, 256, 512};

    static const char *isa_names[] = {"auto", "scalar", "avx2", "avx512", "avx512bf16"};
    for (int isa = QWEN_ISA_SCALAR; isa <= QWEN_ISA_AVX512BF16; isa++) {
        const qw_kernels *k = qw_kernels_for(isa, NULL);
        if (!k) {
            if (!only || !strcmp(only, isa_names[isa])) printf("%s: not supported by this CPU, skipped\n", isa_names[isa]);
            continue;
        }
        if (only && strcmp(only, k->name)) continue;
        const int scalar = isa == QWEN_ISA_SCALAR;
        if (!scalar && isa != QWEN_ISA_AVX512BF16) /* matmul_rows, bf16 (avx512bf16 runs the avx512 one) */
            for (size_t s = 0; s < sizeof(rows_shapes) / sizeof(rows_shapes[0]); s++)
                for (size_t mi = 0; mi < sizeof(rows_m) / sizeof(rows_m[0]); mi++) {
                    if ((only_dt && strcmp(only_dt, "bf16")) || (only_m && only_m != rows_m[mi])) continue;
                    bench(k, QW_BF16, rows_m[mi], rows_shapes[s][0], rows_shapes[s][1], threads, seconds, 1);
                }
        if (only_rows) continue;
        for (int dt = 0; dt < 3; dt++) {
            if (only_dt && strcmp(only_dt, dt_name((qw_dtype)dt))) continue;
            for (size_t s = 0; s < sizeof(decode) / sizeof(decode[0]); s++) {
                if ((scalar || dt != QW_BF16) && s > 0) continue; /* one shape is enough there */
                if (!only_m || only_m == 1) bench(k, (qw_dtype)dt, 1, decode[s][0], decode[s][1], threads, seconds, 0);
            }
            for (size_t s = 0; s < 2; s++) { /* batched decode: gate/up and down */
                if (scalar || (dt != QW_BF16 && s > 0)) continue;
                if (!only_m || only_m == batch_m)
                    bench(k, (qw_dtype)dt, batch_m, decode[s][0], decode[s][1], threads, seconds, 0);
            }
        }
        for (int dt = 0; dt < 3; dt++) {
            if (only_dt && strcmp(only_dt, dt_name((qw_dtype)dt))) continue;
            for (size_t s = 0; s < sizeof(prefill) / sizeof(prefill[0]); s++)
                for (size_t mi = 0; mi < sizeof(prefill_m) / sizeof(prefill_m[0]); mi++) {
                    if ((scalar || dt != QW_BF16) && (s > 0 || mi > 0)) continue;
                    if (only_m && only_m != prefill_m[mi]) continue;
                    bench(k, (qw_dtype)dt, prefill_m[mi], prefill[s][0], prefill[s][1], threads, seconds, 0);
                }
        }
    }
    if (!only_rows && (!only || !strcmp(only, "int8"))) {
        static const int q8_shapes[][2] = {{1024, 3072}, {3072, 1024}, {1024, 4096}, {1024, 151936}};
        static const int q8_m[] = {1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 145};
        /* AMX-INT8 where the CPU has it, the AVX-512 set's table, the AVX2 set's (AVX-VNNI where
         * the CPU has it), and plain AVX2 */
        const qw_q8_kernels *tables[4] = {qw_amx_int8_available() ? &qw_q8_amx : NULL, qw_q8_for(QWEN_ISA_AVX512),
                                          qw_q8_for(QWEN_ISA_AVX2), NULL};
        if (tables[2] == tables[1]) tables[2] = NULL; /* one table below AVX-512 VNNI: not twice */
        if (tables[2] == &qw_q8_avxvnni) tables[3] = &qw_q8_avx2;
        for (int ti = 0; ti < 4; ti++) {
            if (!tables[ti] || tables[ti] == &qw_q8_scalar) continue;
            if (only_q8 && strcmp(only_q8, tables[ti]->name)) continue; /* -q: that table alone */
            for (size_t s = 0; s < sizeof(q8_shapes) / sizeof(q8_shapes[0]); s++) {
                if (only_n && only_n != q8_shapes[s][1]) continue; /* -n: that N alone */
                for (size_t mi = 0; mi < sizeof(q8_m) / sizeof(q8_m[0]); mi++) {
                    const int m = only_m ? only_m : q8_m[mi]; /* -m: that M alone, any M */
                    if (s == 3 && m > 16) continue;
                    bench_q8(tables[ti], m, q8_shapes[s][0], q8_shapes[s][1], threads, seconds, 0);
                    if (s == 3 && m <= tables[ti]->screen_rows && tables[ti]->screen) /* a step's head screened */
                        bench_q8(tables[ti], m, q8_shapes[s][0], q8_shapes[s][1], threads, seconds, 1);
                    if (only_m) break;
                }
            }
        }
    }
    if (!only_rows && (!only || !strcmp(only, "amx"))) {
        if (!qw_amx_available()) {
            printf("amx: not available on this CPU\n");
        } else {
            const qw_kernels *ref = qw_kernels_for(QWEN_ISA_AVX512BF16, NULL);
            if (!ref) ref = qw_kernels_for(QWEN_ISA_AUTO, NULL);
            if (!only_dt || !strcmp(only_dt, "bf16"))
                for (size_t s = 0; s < sizeof(prefill) / sizeof(prefill[0]); s++)
                    for (size_t mi = 0; mi < sizeof(prefill_m) / sizeof(prefill_m[0]); mi++) {
                        if (only_m && mi) break;
                        bench_amx(ref, only_m ? only_m : prefill_m[mi], prefill[s][0], prefill[s][1], threads, seconds);
                    }
        }
    }
    return 0;
}
