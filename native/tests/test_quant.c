/*
 * Int8 weight tests (quant.h): the packing and the row quantizer, and every
 * int8 product table against the scalar one and against double precision.
 *
 *   packing    every weight within half a step of its group's scale
 *              (|W - q * sw| <= sw / 2), sw = max |W in group| / 127 in bf16, zero
 *              rows and k past N and K, zsum = -128 * the group's sum of q;
 *              f32, bf16 and f16 sources; K not a multiple of the group.
 *   rows       the same for activations (offset by 128), padding = 128.
 *   products   for M = 1..17, 33, K around the group and the 4-k step,
 *              N not a multiple of 16, column slices [n0, n1), bias or not,
 *              ldc larger than N: (1) bit for bit the scalar table; (2) the
 *              scalar table within 1e-5 * sqrt(K) * (1 + |ref|) of the
 *              double-precision sum of the dequantized operands
 *              sum_g sw * sa * d; (3) within the quantization bound of the
 *              product of the unquantized f32 operands, in double:
 *              sum_k |a| |dw| + |w| |da| + |da| |dw| with |dw| <= sw / 2,
 *              |da| <= sa / 2 (plus the float slack of (2)); (4) each row of
 *              an M-row call bit for bit the row computed alone; C outside
 *              the rows and columns asked for untouched.
 *
 * Tables the CPU cannot run are skipped. Built with -DQW_TEST_EMULATE_AVX512
 * (and SIMDe) the VNNI table is compiled from portable intrinsics; with
 * -DQW_TEST_EMULATE_NEON the NEON table (SIMDe's NEON). Last line:
 * "quant: N passed, M failed"; exit status non-zero on any failure.
 */
#include "../include/qwen.h"
#include "kernels.h"
#include "quant.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simde_exact.h" /* QW_TEST_EMULATE_*: SIMDe, lane-exact where the kernels rely on it */

#ifdef QW_TEST_EMULATE_AVX512
#define qw_q8_avx512vnni qw_q8_avx512vnni_emulated
#include "quant_avx512vnni.c"
#undef qw_q8_avx512vnni
#define qw_q8_avxvnni qw_q8_avxvnni_emulated
#define qw_cpu_has_avxvnni qw_cpu_has_avxvnni_unused
#include "quant_avxvnni.c"
#undef qw_q8_avxvnni
#undef qw_cpu_has_avxvnni
#endif

#ifdef QW_TEST_EMULATE_NEON
#define qw_q8_neon qw_q8_neon_emulated
#include "quant_neon.c"
#undef qw_q8_neon
#define qw_q8_neondot qw_q8_neondot_emulated
#define qw_cpu_has_dotprod qw_cpu_has_dotprod_unused
#include "quant_neon_dot.c"
#undef qw_q8_neondot
#undef qw_cpu_has_dotprod
#endif

/* The AMX-INT8 table over the tile emulation (amx_emulate.h), on every CPU: qw_q8_amx_emu, its rows
 * below 16 on the scalar table. The hardware table too where it is built in (QW_TEST_AMX_NATIVE). */
#define QW_AMX_EMULATE
#include "quant_amx.c"
#undef QW_AMX_EMULATE
#ifdef QW_TEST_AMX_NATIVE
#include "amx.h"
/* quant_amx_vectors.c: the same table, its tiles emulated and its vector steps AVX-512 */
extern const qw_q8_kernels qw_q8_amx_emu512;
int qw_q8_amx_emu512_selfcheck(void);
#endif

#define TEST_SEED 2024u
#include "test_util.h"

/* f32 -> f16 (nearest even) for finite, normal test data. */
static uint16_t to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    int e = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = u & 0x7fffffu;
    if (e <= 0) return (uint16_t)sign;
    uint32_t r = mant >> 13, rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | ((uint32_t)e << 10)) + (uint16_t)r;
}

/* ==== A packed matrix owning its arrays ==== */

typedef struct {
    qw_q8 W;
    void *q, *s, *z;
    float *wf; /* the weights as the kernels' source dtype widened to f32 [N, K] */
    void *src; /* the source [N, K] in its dtype */
    qw_dtype dt;
} packed;

static packed make_packed(int N, int K, qw_dtype dt, float amp) {
    packed p;
    size_t qb, sb, zb;
    qw_q8_sizes(N, K, &qb, &sb, &zb);
    p.q = aligned_alloc(64, qb);
    p.s = aligned_alloc(64, sb);
    p.z = aligned_alloc(64, zb);
    memset(p.q, 0x5a, qb);
    qw_q8_init(&p.W, N, K, p.q, p.s, p.z);
    p.wf = malloc((size_t)N * K * sizeof(float));
    void *src = malloc((size_t)N * K * 4);
    for (size_t i = 0; i < (size_t)N * K; i++) {
        float w = frand() * amp;
        if (rand32() % 50 == 0) w *= 8.0f; /* outliers: groups with uneven ranges */
        if (dt == QW_F32) ((float *)src)[i] = w, p.wf[i] = w;
        else if (dt == QW_BF16) {
            const uint16_t h = qw_f32_to_bf16(w);
            ((uint16_t *)src)[i] = h;
            p.wf[i] = qw_bf16_to_f32(h);
        } else {
            const uint16_t h = to_f16(w);
            ((uint16_t *)src)[i] = h;
            p.wf[i] = qw_f16_to_f32(h);
        }
    }
    const int blocks = (N + 15) / 16;
    qw_q8_pack(&p.W, src, dt, 0, blocks / 2); /* two halves, as two threads would */
    qw_q8_pack(&p.W, src, dt, blocks / 2, blocks);
    p.src = src, p.dt = dt;
    return p;
}

static void free_packed(packed *p) {
    free(p->src);
    free(p->q);
    free(p->s);
    free(p->z);
    free(p->wf);
}

static int8_t qat(const qw_q8 *W, int n, int k) {
    return W->q[(size_t)(n / 16) * 16 * W->Kp + (size_t)(k / 4) * 64 + (size_t)(n % 16) * 4 + (size_t)(k % 4)];
}
static float sat(const qw_q8 *W, int n, int g) {
    return qw_bf16_to_f32(W->scale[(size_t)(n / 16) * W->ng * 16 + (size_t)g * 16 + n % 16]);
}
static int32_t zat(const qw_q8 *W, int n, int g) { return W->zsum[(size_t)(n / 16) * W->ng * 16 + (size_t)g * 16 + n % 16]; }

/* ==== Packing and the row quantizer ==== */

/* |x - q * s| <= s / 2, up to the rounding of x / s in float (2 ulps of x). */
static int near_step(float x, int q, float s) { return fabs((double)x - (double)q * s) <= 0.5 * s + 0x1p-22 * fabs(x); }

static void test_packing(void) {
    const qw_dtype dts[3] = {QW_F32, QW_BF16, QW_F16};
    const int Ns[3] = {16, 37, 64}, Ks[4] = {4, 64, 100, 288};
    for (int d = 0; d < 3; d++)
        for (int ni = 0; ni < 3; ni++)
            for (int ki = 0; ki < 4; ki++) {
                const int N = Ns[ni], K = Ks[ki];
                packed p = make_packed(N, K, dts[d], 0.5f);
                const qw_q8 *W = &p.W;
                int ok = W->Kp == ((K + 3) & ~3) && W->ng == (K + QW_Q8_GROUP - 1) / QW_Q8_GROUP;
                for (int n = 0; n < (N + 15) / 16 * 16 && ok; n++)
                    for (int g = 0; g < W->ng && ok; g++) {
                        const int k0 = g * QW_Q8_GROUP, k1 = k0 + QW_Q8_GROUP < K ? k0 + QW_Q8_GROUP : K;
                        const int kend = g == W->ng - 1 ? W->Kp : k1;
                        float amax = 0.0f;
                        for (int k = k0; k < k1 && n < N; k++) amax = fmaxf(amax, fabsf(p.wf[(size_t)n * K + k]));
                        const float sw = sat(W, n, g);
                        ok = ok && sw == qw_bf16_to_f32(qw_f32_to_bf16(amax / 127.0f)); /* rounded to bf16 */
                        int32_t sum = 0;
                        for (int k = k0; k < kend; k++) {
                            const int q = qat(W, n, k);
                            sum += q;
                            ok = ok && q >= -127 && q <= 127;
                            if (n >= N || k >= K) ok = ok && q == 0;
                            else ok = ok && near_step(p.wf[(size_t)n * K + k], q, sw);
                        }
                        ok = ok && zat(W, n, g) == -128 * sum;
                    }
                check(ok, "pack", "dtype %d N %d K %d", d, N, K);
                free_packed(&p);
            }
    /* rows */
    const int Ms[2] = {1, 5};
    for (int mi = 0; mi < 2; mi++)
        for (int ki = 0; ki < 4; ki++) {
            const int M = Ms[mi], K = Ks[ki], Kp = (K + 3) & ~3, ng = (K + QW_Q8_GROUP - 1) / QW_Q8_GROUP, lda = K + 3;
            float *A = malloc((size_t)M * lda * sizeof(float));
            for (int i = 0; i < M * lda; i++) A[i] = frand() * 3.0f;
            if (K >= 64) for (int k = 0; k < 64; k++) A[k] = 0.0f; /* a group of zeros: scale 0 */
            uint8_t *q = malloc((size_t)M * Kp);
            float *s = malloc((size_t)M * ng * sizeof(float));
            qw_q8_quantize_rows(q, s, A, lda, M, K, Kp, ng);
            int ok = 1;
            for (int m = 0; m < M; m++)
                for (int k = 0; k < Kp; k++) {
                    if (k >= K) {
                        ok = ok && q[(size_t)m * Kp + k] == 128;
                        continue;
                    }
                    const float sa = s[(size_t)m * ng + k / QW_Q8_GROUP], a = A[(size_t)m * lda + k];
                    const int qa = (int)q[(size_t)m * Kp + k] - 128;
                    ok = ok && qa >= -127 && qa <= 127 && near_step(a, qa, sa);
                }
            check(ok, "rows", "M %d K %d", M, K);
            free(A);
            free(q);
            free(s);
        }
}

/* ==== Products ==== */

typedef struct {
    int M, K, N, n0, n1, ldc, bias;
    qw_dtype dt;
} shape;

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

/* M rows of random activations (row stride lda >= W->K) and their quantization for W (qw_q8_quantize_rows). */
typedef struct {
    float *A;
    uint8_t *qa;
    float *sa;
    qw_q8_act act;
} rows_buf;

static rows_buf make_rows(int M, int lda, const qw_q8 *W) {
    rows_buf r = {malloc((size_t)M * lda * sizeof(float)), malloc((size_t)M * W->Kp), malloc((size_t)M * W->ng * sizeof(float)),
                  {0}};
    for (int i = 0; i < M * lda; i++) r.A[i] = frand();
    qw_q8_quantize_rows(r.qa, r.sa, r.A, lda, M, W->K, W->Kp, W->ng);
    r.act = (qw_q8_act){r.qa, r.sa, M, W->Kp, W->ng};
    return r;
}

static void free_rows(rows_buf *r) {
    free(r->A);
    free(r->qa);
    free(r->sa);
}

/* The table's row quantizer gives the reference's bytes and scales: K of tails (not a multiple
 * of 16, 64 or 4), lda past K, a group of zeros, NaN, +-inf, -0, values that round to +-127 and
 * to halves (nearest even), several rows. */
static void test_quantize(const qw_q8_kernels *t) {
    const int Ks[] = {1, 4, 15, 16, 17, 60, 64, 65, 100, 128, 200, 1024, 3072};
    for (int ki = 0; ki < (int)(sizeof(Ks) / sizeof(Ks[0])); ki++)
        for (int special = 0; special < 2; special++) {
            const int M = 5, K = Ks[ki], Kp = (K + 3) & ~3, ng = (K + QW_Q8_GROUP - 1) / QW_Q8_GROUP, lda = K + 7;
            float *A = malloc((size_t)M * lda * sizeof(float));
            for (int i = 0; i < M * lda; i++) A[i] = frand() * (i % 7 == 0 ? 40.0f : 1.0f);
            if (special) {
                for (int k = 0; k < K && k < 64; k++) A[k] = 0.0f; /* row 0: a group of zeros */
                A[lda + K / 2] = NAN;
                for (int i = 1; i < 4 && 16 * i + 1 < K; i++) A[lda + 16 * i + 1] = NAN; /* each vector of a group */
                A[2 * lda] = INFINITY;
                A[2 * lda + K - 1] = -INFINITY;
                A[3 * lda + K / 3] = -0.0f;
                for (int k = 0; k < K; k++) A[4 * lda + k] = (float)(k % 255 - 127) * 0.5f; /* halves */
            }
            uint8_t *q = malloc((size_t)M * Kp), *r = malloc((size_t)M * Kp);
            float *s = malloc((size_t)M * ng * sizeof(float)), *rs = malloc((size_t)M * ng * sizeof(float));
            memset(q, 0xAB, (size_t)M * Kp);
            t->quantize_rows(q, s, A, lda, M, K, Kp, ng);
            qw_q8_quantize_rows(r, rs, A, lda, M, K, Kp, ng);
            check(!memcmp(q, r, (size_t)M * Kp) && !memcmp(s, rs, (size_t)M * ng * sizeof(float)), t->name,
                  "quantize_rows differs from the reference: K %d%s", K, special ? " (zeros, NaN, inf)" : "");
            /* one group at a given inverse scale (the packing's pass against a bf16 scale): rows past
             * [-127, 127] at 5.0, halves at 1.0 (row 4) */
            for (int m = 0; m < M; m++)
                for (int i = 0; i < 2; i++) {
                    const float inv = i ? 5.0f : 1.0f;
                    memset(q, 0xAB, (size_t)K), memset(r, 0xCD, (size_t)K);
                    t->quantize_group(q, A + (size_t)m * lda, K, inv);
                    qw_q8_quantize_group(r, A + (size_t)m * lda, K, inv);
                    check(!memcmp(q, r, (size_t)K), t->name, "quantize_group differs from the reference: K %d row %d inv %g%s",
                          K, m, (double)inv, special ? " (zeros, NaN, inf)" : "");
                }
            free(A);
            free(q);
            free(r);
            free(s);
            free(rs);
        }
}

/* qw_q8_pack_with through t's row quantizer (what the library loads with): qw_q8_pack's bytes. */
static void test_pack_with(const qw_q8_kernels *t) {
    const int Ns[3] = {16, 37, 64}, Ks[5] = {4, 64, 100, 288, 1024};
    for (int d = 0; d < 3; d++)
        for (int ni = 0; ni < 3; ni++)
            for (int ki = 0; ki < 5; ki++) {
                const int N = Ns[ni], K = Ks[ki], blocks = (N + 15) / 16;
                packed p = make_packed(N, K, (qw_dtype)d, 0.5f);
                if (K >= 64) memset(p.src, 0, (size_t)64 * (d == QW_F32 ? 4 : 2)); /* row 0's first group: zeros */
                packed r = p; /* the reference again, after the change to src */
                size_t qb, sb, zb;
                qw_q8_sizes(N, K, &qb, &sb, &zb);
                r.q = aligned_alloc(64, qb), r.s = aligned_alloc(64, sb), r.z = aligned_alloc(64, zb);
                void *q = aligned_alloc(64, qb), *sc = aligned_alloc(64, sb), *z = aligned_alloc(64, zb);
                memset(r.q, 0x5a, qb), memset(q, 0x5a, qb);
                memset(r.s, 0, sb), memset(sc, 0, sb), memset(r.z, 0, zb), memset(z, 0, zb);
                qw_q8 Wr, Wt;
                qw_q8_init(&Wr, N, K, r.q, r.s, r.z);
                qw_q8_init(&Wt, N, K, q, sc, z);
                qw_q8_pack(&Wr, p.src, p.dt, 0, blocks);
                qw_q8_pack_with(t, qw_kernels_scalar.to_f32, &Wt, p.src, p.dt, 0, blocks / 2); /* two halves */
                qw_q8_pack_with(t, qw_kernels_scalar.to_f32, &Wt, p.src, p.dt, blocks / 2, blocks);
                check(!memcmp(q, r.q, qb) && !memcmp(sc, r.s, sb) && !memcmp(z, r.z, zb), t->name,
                      "pack_with: qw_q8_pack's bytes, dtype %d N %d K %d", d, N, K);
                free(q), free(sc), free(z), free(r.q), free(r.s), free(r.z);
                free_packed(&p);
            }
}

static void test_screen(const qw_q8_kernels *t); /* below */

static void test_table(const qw_q8_kernels *t, int shallow) {
    test_quantize(t);
    test_pack_with(t);
    if (t->screen) test_screen(t);
    check(!t->screen || (t->screen_rows >= 1 && t->screen_rows <= 8), t->name, /* internal.h QW_HEAD_SCREEN_ROWS */
          "screen_rows %d outside 1-8", t->screen_rows);
    const int Ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 32, 33, 47}; /* AMX: 16 and more */
    const int Ks[] = {4, 8, 60, 64, 68, 96, 128, 200, 288, 1024};
    const int Ns[] = {16, 17, 40, 64, 100};
    const int nM = shallow ? 6 : (int)(sizeof(Ms) / sizeof(Ms[0]));
    for (int ki = 0; ki < (int)(sizeof(Ks) / sizeof(Ks[0])); ki++)
        for (int ni = 0; ni < (int)(sizeof(Ns) / sizeof(Ns[0])); ni++) {
            const int K = Ks[ki], N = Ns[ni];
            const qw_dtype dt = (qw_dtype)((ki + ni) % 3);
            packed p = make_packed(N, K, dt, 1.0f / sqrtf((float)K));
            const qw_q8 *W = &p.W;
            float *bias = malloc((size_t)N * sizeof(float));
            for (int n = 0; n < N; n++) bias[n] = frand();
            for (int mi = 0; mi < nM; mi++) {
                const int M = Ms[mi];
                for (int slice = 0; slice < 2; slice++) {
                    const int n0 = slice && N > 16 ? 16 : 0, n1 = slice && N > 32 ? 32 : N;
                    const int ldc = N + 5, use_bias = (mi + slice) % 2;
                    const float *b = use_bias ? bias : NULL;
                    const int Kp = W->Kp, ng = W->ng, lda = K + 1;
                    rows_buf rows = make_rows(M, lda, W);
                    const float *A = rows.A;
                    const uint8_t *qa = rows.qa;
                    const float *sa = rows.sa;
                    const qw_q8_act act = rows.act;
                    float *C = malloc((size_t)M * ldc * sizeof(float)), *R = malloc((size_t)M * ldc * sizeof(float));
                    for (int i = 0; i < M * ldc; i++) C[i] = R[i] = 1234.5f;
                    t->matmul(C, ldc, &act, W, b, M, n0, n1);
                    qw_q8_scalar.matmul(R, ldc, &act, W, b, M, n0, n1);
                    int bits = 1, untouched = 1, dq = 1, fq = 1;
                    double worst_dq = 0, worst_fq = 0;
                    for (int m = 0; m < M; m++)
                        for (int n = 0; n < ldc; n++) {
                            const float c = C[(size_t)m * ldc + n];
                            if (n < n0 || n >= n1) {
                                untouched = untouched && c == 1234.5f;
                                continue;
                            }
                            bits = bits && same_bits(c, R[(size_t)m * ldc + n]);
                            /* (2) the dequantized operands in double */
                            double ref = b ? b[n] : 0.0, fref = ref, bound = 0.0;
                            for (int g = 0; g < ng; g++) {
                                double dsum = 0;
                                const int k0 = g * QW_Q8_GROUP, k1 = k0 + QW_Q8_GROUP < K ? k0 + QW_Q8_GROUP : K;
                                const double sw = sat(W, n, g), s = sa[(size_t)m * ng + g];
                                for (int k = k0; k < k1; k++) {
                                    dsum += (double)((int)qa[(size_t)m * Kp + k] - 128) * qat(W, n, k);
                                    const double a = A[(size_t)m * lda + k], w = p.wf[(size_t)n * K + k];
                                    fref += a * w;
                                    bound += fabs(a) * sw / 2 + fabs(w) * s / 2 + s * sw / 4;
                                }
                                ref += dsum * (double)(float)(sw * s);
                            }
                            const double tol = 1e-5 * sqrt((double)K) * (1.0 + fabs(ref));
                            const double e1 = fabs(R[(size_t)m * ldc + n] - ref), e2 = fabs(R[(size_t)m * ldc + n] - fref);
                            if (e1 > tol) dq = 0;
                            if (e2 > bound * (1.0 + 1e-3) + tol) fq = 0;
                            if (e1 / tol > worst_dq) worst_dq = e1 / tol;
                            if (e2 / (bound + tol) > worst_fq) worst_fq = e2 / (bound + tol);
                        }
                    check(bits, t->name, "bitwise vs scalar M %d K %d N %d [%d, %d)", M, K, N, n0, n1);
                    check(untouched, t->name, "columns outside [%d, %d) written (M %d K %d N %d)", n0, n1, M, K, N);
                    if (t == &qw_q8_scalar) {
                        check(dq, t->name, "vs double of the quantized operands M %d K %d N %d (worst %.2f tol)", M, K, N, worst_dq);
                        check(fq, t->name, "vs f32 operands beyond the quantization bound M %d K %d N %d (worst %.2f)", M, K, N,
                              worst_fq);
                    }
                    /* (4) each row alone */
                    int inv = 1;
                    for (int m = 0; m < M && inv; m++) {
                        float *one = malloc((size_t)ldc * sizeof(float));
                        const qw_q8_act a1 = {qa + (size_t)m * Kp, sa + (size_t)m * ng, 1, Kp, ng};
                        t->matmul(one, ldc, &a1, W, b, 1, n0, n1);
                        for (int n = n0; n < n1; n++) inv = inv && same_bits(one[n], C[(size_t)m * ldc + n]);
                        free(one);
                    }
                    check(inv, t->name, "row alone differs M %d K %d N %d", M, K, N);
                    free_rows(&rows);
                    free(C);
                    free(R);
                }
            }
            free(bias);
            free_packed(&p);
        }
}

/* ==== The LM head's screen (quant.h) ==== */

static int q4at(const qw_q4 *S, int n, int k) {
    const uint8_t b = S->q[(size_t)(n / 16) * 8 * S->K + (size_t)(k / 8) * 64 + (size_t)(n % 16) * 4 + (size_t)(k % 4)];
    return (k % 8 < 4 ? b & 15 : b >> 4) - 8;
}
static float s4at(const qw_q4 *S, int n, int g) { return qw_bf16_to_f32(S->scale[(size_t)(n / 16) * S->ng * 16 + (size_t)g * 16 + n % 16]); }

typedef struct {
    qw_q4 S;
    void *q, *s;
} screen_buf;

static screen_buf make_screen(const qw_q8 *W) {
    screen_buf b;
    size_t qb, sb;
    qw_q4_sizes(W->N, W->K, &qb, &sb);
    b.q = aligned_alloc(64, qb);
    b.s = aligned_alloc(64, sb);
    memset(b.q, 0xa5, qb);
    memset(b.s, 0xa5, sb);
    qw_q4_init(&b.S, W->N, W->K, b.q, b.s);
    const int blocks = (W->N + 15) / 16;
    qw_q4_from_q8(&b.S, W, 0, blocks / 2); /* two halves, as two threads would */
    qw_q4_from_q8(&b.S, W, blocks / 2, blocks);
    return b;
}

/* The definition: s4 = bf16(sw * max |q| / 7) per column and group, every q4 in [-7, 7] within half
 * a step of s4 of the int8 weight q * sw; a zero group (a padding column) is zeros. */
static void test_screen_build(void) {
    const int Ns[3] = {16, 37, 100}, Ks[3] = {64, 96, 1024};
    for (int ni = 0; ni < 3; ni++)
        for (int ki = 0; ki < 3; ki++) {
            const int N = Ns[ni], K = Ks[ki];
            packed p = make_packed(N, K, QW_BF16, 1.0f);
            screen_buf b = make_screen(&p.W);
            const qw_q4 *S = &b.S;
            int ok = S->ng == (K + QW_Q8_GROUP - 1) / QW_Q8_GROUP, zeros = 1;
            for (int n = 0; n < (N + 15) / 16 * 16; n++)
                for (int g = 0; g < S->ng; g++) {
                    int mx = 0;
                    const int k1 = (g + 1) * QW_Q8_GROUP < K ? (g + 1) * QW_Q8_GROUP : K;
                    for (int k = g * QW_Q8_GROUP; k < k1; k++) mx = abs(qat(&p.W, n, k)) > mx ? abs(qat(&p.W, n, k)) : mx;
                    const float sw = sat(&p.W, n, g), s4 = s4at(S, n, g);
                    ok = ok && s4 == qw_bf16_to_f32(qw_f32_to_bf16(sw * (float)mx / 7.0f));
                    for (int k = g * QW_Q8_GROUP; k < k1; k++) {
                        const int q4 = q4at(S, n, k);
                        ok = ok && q4 >= -7 && q4 <= 7;
                        if (mx == 0) zeros = zeros && q4 == 0 && s4 == 0.0f;
                        else ok = ok && fabs((double)qat(&p.W, n, k) * sw - (double)q4 * s4) <= 0.5 * s4 * (1 + 1e-6);
                    }
                }
            check(ok, "screen", "built from the int8 copy N %d K %d", N, K);
            check(zeros, "screen", "zero groups N %d K %d", N, K);
            free(b.q);
            free(b.s);
            free_packed(&p);
        }
}

/* A table's screen (each block's largest value) bit for bit the reference's values' through
 * qw_q4_block_max, over M = 1..10 rows (each table's passes whole and short, and more rows than one
 * call's QW_Q4_ROWS) and column slices (T elsewhere untouched); the reference's values within float
 * slack of the double-precision sum of their operands. */
static void test_screen(const qw_q8_kernels *t) {
    const int Ns[3] = {16, 40, 100}, Ks[4] = {8, 96, 192, 1024};
    for (int ni = 0; ni < 3; ni++)
        for (int ki = 0; ki < 4; ki++) {
            const int N = Ns[ni], K = Ks[ki], ng = (K + QW_Q8_GROUP - 1) / QW_Q8_GROUP;
            packed p = make_packed(N, K, QW_F32, 1.0f / sqrtf((float)K));
            screen_buf b = make_screen(&p.W);
            for (int M = 1; M <= 10; M++)
                for (int slice = 0; slice < 2; slice++) {
                    const int n0 = slice && N > 16 ? 16 : 0, n1 = slice && N > 32 ? 32 : N, ldt = N / 16 + 3;
                    const int b0 = n0 / 16, b1 = (n1 + 15) / 16;
                    rows_buf rows = make_rows(M, K, &p.W);
                    const uint8_t *qa = rows.qa;
                    const float *sa = rows.sa;
                    const qw_q8_act act = rows.act;
                    float *T = malloc((size_t)M * ldt * sizeof(float)), *R = malloc((size_t)M * N * sizeof(float));
                    for (int i = 0; i < M * ldt; i++) T[i] = 1234.5f;
                    t->screen(T, ldt, &act, &b.S, M, n0, n1);
                    qw_q4_screen_ref(R, N, &act, &b.S, M, n0, n1);
                    int bits = 1, untouched = 1, dq = 1;
                    for (int m = 0; m < M; m++) {
                        for (int blk = 0; blk < ldt; blk++) {
                            const float c = T[(size_t)m * ldt + blk];
                            if (blk < b0 || blk >= b1) {
                                untouched = untouched && c == 1234.5f;
                                continue;
                            }
                            const int c0 = blk * 16 - n0, c1 = (blk * 16 + 16 < n1 ? blk * 16 + 16 : n1) - n0;
                            bits = bits && same_bits(c, qw_q4_block_max(R + (size_t)m * N + c0, c1 - c0));
                        }
                        for (int n = n0; n < n1; n++) {
                            const float r = R[(size_t)m * N + (n - n0)];
                            double ref = 0.0;
                            for (int g = 0; g < ng; g++) {
                                double d = 0.0;
                                for (int k = g * QW_Q8_GROUP; k < (g + 1) * QW_Q8_GROUP && k < K; k++)
                                    d += (double)((int)qa[(size_t)m * K + k] - 128) * q4at(&b.S, n, k);
                                ref += d * (double)(float)(s4at(&b.S, n, g) * sa[(size_t)m * ng + g]);
                            }
                            dq = dq && fabs(r - ref) <= 1e-5 * sqrt((double)K) * (1.0 + fabs(ref));
                        }
                    }
                    check(bits, t->name, "screen bitwise vs the reference M %d K %d N %d [%d, %d)", M, K, N, n0, n1);
                    check(untouched, t->name, "screen wrote outside [%d, %d) (M %d K %d N %d)", n0, n1, M, K, N);
                    if (t == &qw_q8_scalar) check(dq, "screen", "reference vs double M %d K %d N %d", M, K, N);
                    free_rows(&rows);
                    free(T);
                    free(R);
                }
            free(b.q);
            free(b.s);
            free_packed(&p);
        }
}

/* qw_q4_block_max: the largest value, a NaN where one is (wherever it sits), an infinity kept. */
static void test_block_max(void) {
    for (int n = 1; n <= 16; n++) {
        float v[16];
        for (int i = 0; i < n; i++) v[i] = frand();
        float want = v[0];
        for (int i = 1; i < n; i++) want = v[i] > want ? v[i] : want;
        check(qw_q4_block_max(v, n) == want, "screen", "block max of %d", n);
        for (int at = 0; at < n; at++) {
            const float keep = v[at];
            v[at] = NAN;
            check(qw_q4_block_max(v, n) != qw_q4_block_max(v, n), "screen", "block max of %d, a NaN at %d", n, at);
            v[at] = INFINITY;
            check(qw_q4_block_max(v, n) == INFINITY, "screen", "block max of %d, an infinity at %d", n, at);
            v[at] = keep;
        }
    }
}

/* qw_q4_top_blocks against sorting the block maxima: nb blocks, none left out larger than one
 * taken; 0 for a row holding a NaN or whose largest value is infinite. */
static void test_top_blocks(void) {
    const int Ns[4] = {1, 7, 63, 1250}, nbs[4] = {1, 4, 32, 256};
    for (int ni = 0; ni < 4; ni++)
        for (int bi = 0; bi < 4; bi++) {
            const int nblocks = Ns[ni], nb = nbs[bi], want = nb < nblocks ? nb : nblocks;
            float *bmax = malloc((size_t)nblocks * sizeof(float));
            for (int b = 0; b < nblocks; b++) bmax[b] = frand() * 10.0f;
            if (nblocks > 40) bmax[37] = bmax[36] = 50.0f; /* a tie */
            int blocks[QW_Q4_MAX_BLOCKS];
            const int got = qw_q4_top_blocks(bmax, nblocks, nb, blocks);
            int ok = got == want;
            char *in = calloc((size_t)nblocks, 1);
            float low = INFINITY, high = -INFINITY;
            for (int i = 0; i < got && ok; i++) {
                ok = blocks[i] >= 0 && blocks[i] < nblocks && !in[blocks[i]];
                if (ok) in[blocks[i]] = 1, low = bmax[blocks[i]] < low ? bmax[blocks[i]] : low;
            }
            for (int b = 0; b < nblocks && ok; b++)
                if (!in[b]) high = bmax[b] > high ? bmax[b] : high;
            check(ok && high <= low, "screen", "top %d of %d blocks", nb, nblocks);
            bmax[nblocks / 2] = NAN;
            check(qw_q4_top_blocks(bmax, nblocks, nb, blocks) == 0, "screen", "a NaN in %d blocks: none", nblocks);
            bmax[nblocks / 2] = INFINITY;
            check(qw_q4_top_blocks(bmax, nblocks, nb, blocks) == 0, "screen", "an infinity in %d blocks: none", nblocks);
            free(bmax);
            free(in);
        }
}

static __attribute__((unused)) int cpu_has(const char *what) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!strcmp(what, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(what, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (!strcmp(what, "avx512vnni"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
    if (!strcmp(what, "neon")) return 1;
#endif
    return 0;
}

int main(void) {
    test_packing();
    test_screen_build();
    test_block_max();
    test_top_blocks();
    test_table(&qw_q8_scalar, 0);
    printf("quant: scalar tested\n");
#if defined(__x86_64__) && !defined(QWEN_NO_SIMD)
    if (cpu_has("avx2")) {
        test_table(&qw_q8_avx2, 0);
        printf("quant: avx2 tested\n");
    } else {
        printf("quant: avx2 not supported by this CPU: skipped\n");
    }
    if (cpu_has("avx512vnni")) {
        test_table(&qw_q8_avx512vnni, 0);
        printf("quant: avx512vnni tested\n");
    } else {
        printf("quant: avx512vnni not supported by this CPU: skipped\n");
    }
    if (cpu_has("avx2") && qw_cpu_has_avxvnni()) {
        test_table(&qw_q8_avxvnni, 0);
        printf("quant: avxvnni tested\n");
    } else {
        printf("quant: avxvnni not supported by this CPU: skipped\n");
    }
#endif
#if defined(__aarch64__) && !defined(QWEN_NO_SIMD)
    test_table(&qw_q8_neon, 0);
    printf("quant: neon tested\n");
    if (qw_cpu_has_dotprod()) {
        test_table(&qw_q8_neondot, 0);
        printf("quant: neondot tested\n");
    } else {
        printf("quant: neondot not supported by this CPU: skipped\n");
    }
#endif
    test_table(&qw_q8_amx_emu, 0);
    check(qw_q8_amx_emu_selfcheck() == 1, "amx", "emulated: the load-time self-check passes");
    printf("quant: amx (emulated tiles) tested\n");
#ifdef QW_TEST_AMX_NATIVE
    if (cpu_has("avx512")) {
        test_table(&qw_q8_amx_emu512, 0);
        check(qw_q8_amx_emu512_selfcheck() == 1, "amx", "emulated tiles, AVX-512 steps: the self-check passes");
        printf("quant: amx (emulated tiles, native AVX-512) tested\n");
    } else {
        printf("quant: amx (emulated tiles, native AVX-512) not supported by this CPU: skipped\n");
    }
    if (qw_amx_int8_available()) {
        test_table(&qw_q8_amx, 0);
        check(qw_q8_amx_selfcheck() == 1, "amx", "the load-time self-check passes on this CPU");
        printf("quant: amx tested\n");
    } else {
        printf("quant: amx not supported by this CPU: skipped\n");
    }
#endif
#ifdef QW_TEST_EMULATE_AVX512
    test_table(&qw_q8_avx512vnni_emulated, 1);
    printf("quant: avx512vnni (SIMDe) tested\n");
    test_table(&qw_q8_avxvnni_emulated, 1);
    printf("quant: avxvnni (SIMDe) tested\n");
#endif
#ifdef QW_TEST_EMULATE_NEON
    test_table(&qw_q8_neon_emulated, 1);
    printf("quant: neon (SIMDe) tested\n");
    test_table(&qw_q8_neondot_emulated, 1);
    printf("quant: neondot (SIMDe) tested\n");
#endif
    printf("quant: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
