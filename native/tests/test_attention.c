/*
 * Attention test — qw_attention (ops.c) over a bf16 KV cache, the cache of
 * precision FAST, for every kernel table the CPU runs:
 *
 *   bitwise  the result over bf16 keys and values equals, bit for bit, the
 *            result over an f32 copy of them (each bf16 widened exactly), on
 *            the rows path (fewer than 8 queries: decode, blocks of widened
 *            keys) and the GEMM path (8 or more: prefill), causal and not,
 *            head sizes 6, 64, 128, key counts from 1 to past the scores'
 *            stack buffer (4096 scores, for one head or for a group), a row
 *            stride larger than the head;
 *   group    one call for 1, 2 or 3 query heads sharing the keys (grouped-
 *            query attention, head h at + h * hd in the rows) gives each head
 *            bit for bit what a call for that head alone gives;
 *   close    and it is within 1e-4 (relative to 1 + |ref|) of the same
 *            attention in double precision over the widened cache.
 *
 * The AVX-512 BF16 set (precision FAST on CPUs with AVX512_BF16) takes the
 * GEMM way on bf16 dot products for a bf16 or int8 cache with row stride hd
 * (the decoder's): its cases use that layout, and there, as on AMX below,
 * group as above, close within 1e-2 (q and the probabilities are rounded to
 * bf16); the f32 copy takes the f32 way, so "bitwise" holds for the rows
 * path only. Where the CPU has AMX, the same cases with the GEMM way on bf16
 * tiles.
 *
 * Buffers are allocated to the exact size the kernel may touch, so
 * AddressSanitizer sees any read past them. Exit status is non-zero on any
 * failure; the last line reads "attention: N passed, M failed".
 */
#include "internal.h"
#include "amx.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

static uint32_t rng = 12345u;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}

/* Double-precision attention of query r over the first len keys. */
static void reference(double *o, const float *q, const float *keys, const float *vals, int ldkv, int len, int hd) {
    double *p = malloc((size_t)len * sizeof(double)), mx = -INFINITY, sum = 0.0;
    for (int s = 0; s < len; s++) {
        double d = 0.0;
        for (int i = 0; i < hd; i++) d += (double)q[i] * keys[(size_t)s * ldkv + i];
        p[s] = d / sqrt((double)hd);
        if (p[s] > mx) mx = p[s];
    }
    for (int s = 0; s < len; s++) sum += p[s] = exp(p[s] - mx);
    for (int i = 0; i < hd; i++) o[i] = 0.0;
    for (int s = 0; s < len; s++)
        for (int i = 0; i < hd; i++) o[i] += p[s] / sum * vals[(size_t)s * ldkv + i];
    free(p);
}

static double worst[2]; /* the largest |o - ref| / (1 + |ref|) of the cases on bf16 dot products, on AMX */

/* kv8: the cache in QW_KV8 rows (FAST's, hd a multiple of 32; rows of qw_kv8_row_bytes(hd)) instead of
 * bf16; the f32 copy then holds its dequantized values. */
static void test_case(const qw_kernels *k, int amx, int kv8, int m, int group, int T, int hd, int causal) {
    const int ldq = group * hd + 3, ldo = group * hd + 5;
    /* the BF16 set takes bf16 dot products for a cache laid out as the decoder's, as AMX takes tiles */
    const int dots = amx || k == qw_kernels_for(QWEN_ISA_AVX512BF16, NULL);
    const int ldkv = dots || kv8 ? hd : hd + 16; /* bf16 products, kv8: the decoder's cache */
    const int rounded = dots && m >= 8; /* q and the probabilities rounded to bf16 */
    const size_t kv_len = (size_t)(T - 1) * ldkv + hd, q_len = (size_t)(m - 1) * ldq + (size_t)group * hd;
    const size_t rb = qw_kv8_row_bytes(hd), cache_bytes = kv8 ? (size_t)T * rb : kv_len * sizeof(uint16_t);
    const qw_dtype dt = kv8 ? QW_KV8 : QW_BF16;
    float *q = malloc(q_len * sizeof(float));
    float *kf = malloc(kv_len * sizeof(float)), *vf = malloc(kv_len * sizeof(float));
    void *kb = malloc(cache_bytes), *vb = malloc(cache_bytes);
    const size_t out_len = (size_t)(m - 1) * ldo + (size_t)group * hd;
    float *o16 = calloc(out_len, sizeof(float)), *o32 = calloc(out_len, sizeof(float));
    float *one = calloc(out_len, sizeof(float));
    double *ref = malloc((size_t)hd * sizeof(double));
    for (size_t i = 0; i < q_len; i++) q[i] = 2.0f * frand();
    if (kv8) { /* rows of keys and values quantized as the decoder stores them */
        float *x = malloc((size_t)hd * sizeof(float));
        for (int s = 0; s < T; s++) {
            for (int d = 0; d < hd; d++) x[d] = frand() * 0.5f * (float)(1 + d / 32 % 4); /* blocks of different ranges */
            qw_kv8_quantize((char *)kb + (size_t)s * rb, x, hd);
            qw_kv8_to_f32(kf + (size_t)s * ldkv, (char *)kb + (size_t)s * rb, hd);
            for (int d = 0; d < hd; d++) x[d] = frand();
            qw_kv8_quantize((char *)vb + (size_t)s * rb, x, hd);
            qw_kv8_to_f32(vf + (size_t)s * ldkv, (char *)vb + (size_t)s * rb, hd);
        }
        free(x);
    } else {
        uint16_t *kh = kb, *vh = vb;
        for (size_t i = 0; i < kv_len; i++) {
            kh[i] = qw_f32_to_bf16(frand()), vh[i] = qw_f32_to_bf16(frand());
            kf[i] = qw_bf16_to_f32(kh[i]), vf[i] = qw_bf16_to_f32(vh[i]);
        }
    }
    const int causal0 = causal ? T - m : -1; /* the last m positions query, each the keys up to itself */
    qw_attention(k, amx, o16, ldo, q, ldq, m, group, kb, vb, dt, ldkv, T, hd, causal0);
    qw_attention(k, amx, o32, ldo, q, ldq, m, group, kf, vf, QW_F32, ldkv, T, hd, causal0);
    for (int h = 0; h < group; h++) /* each head alone */
        qw_attention(k, amx, one + (size_t)h * hd, ldo, q + (size_t)h * hd, ldq, m, 1, kb, vb, dt, ldkv, T, hd,
                     causal0);
    /* on tiles or bf16 dot products (8 queries and more) q and the probabilities are rounded to bf16
     * (8 bits): 2^-8 of the scores' and the outputs' size, not 1e-4 */
    const double tol = rounded ? 1e-2 : 1e-4; /* 1.2e-3 seen */
    int same = 1, alone = 1, close = 1;
    for (int r = 0; r < m; r++)
        for (int h = 0; h < group; h++) {
            const size_t o = (size_t)r * ldo + (size_t)h * hd;
            same &= rounded || !memcmp(o16 + o, o32 + o, (size_t)hd * sizeof(float)); /* bf16 products: bf16 only */
            alone &= !memcmp(o16 + o, one + o, (size_t)hd * sizeof(float));
            reference(ref, q + (size_t)r * ldq + (size_t)h * hd, kf, vf, ldkv, causal ? causal0 + r + 1 : T, hd);
            for (int i = 0; i < hd; i++) {
                const double e = fabs(o16[o + i] - ref[i]) / (1.0 + fabs(ref[i]));
                close &= e <= tol;
                if (rounded && e > worst[amx]) worst[amx] = e;
            }
        }
    if (same && alone && close) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s%s%s m=%d group=%d T=%d hd=%d causal=%d: bitwise f32 copy %d, each head alone %d, close to double "
               "%d\n",
               k->name, amx ? " + amx" : "", kv8 ? " kv8" : "", m, group, T, hd, causal, same, alone, close);
    }
    free(q), free(kf), free(vf), free(kb), free(vb), free(o16), free(o32), free(one), free(ref);
}

/* Every case of one kernel table (amx: the GEMM way on AMX tiles; kv8: an int8 cache, head sizes
 * that are multiples of 32). */
static void test_table(const qw_kernels *k, int amx, int kv8) {
    static const int ms[] = {1, 3, 7, 8, 20}, Ts[] = {1, 5, 33, 200, 2100, 4100}, hds[] = {6, 64, 128};
    const int before = failed;
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
        for (size_t j = 0; j < sizeof(Ts) / sizeof(Ts[0]); j++)
            for (size_t h = 0; h < sizeof(hds) / sizeof(hds[0]); h++)
                for (int causal = 0; causal < 2; causal++)
                    for (int group = 1; group <= 3; group++)
                        if (ms[i] <= Ts[j] && (Ts[j] < 4100 || hds[h] == 128) && (!kv8 || hds[h] % 32 == 0))
                            test_case(k, amx, kv8, ms[i], group, Ts[j], hds[h], causal);
    printf("attention: %s%s%s tested, %d failures\n", k->name, amx ? " + amx" : "", kv8 ? " (int8 cache)" : "",
           failed - before);
}

int main(void) {
    static const int isas[] = {QWEN_ISA_SCALAR, QWEN_ISA_AVX2, QWEN_ISA_AVX512, QWEN_ISA_AVX512BF16, QWEN_ISA_NEON};
    for (size_t a = 0; a < sizeof(isas) / sizeof(isas[0]); a++) {
        const qw_kernels *k = qw_kernels_for(isas[a], NULL);
        if (!k) {
            printf("attention: kernel set %s not on this CPU, skipped\n", qwen_isa_name((qwen_isa)isas[a]));
            continue;
        }
        test_table(k, 0, 0);
        test_table(k, 0, 1);
    }
    const qw_kernels *bf16 = qw_kernels_for(QWEN_ISA_AVX512BF16, NULL);
    if (bf16) printf("attention: bf16 dot products largest error %.2g of 1 + |ref|\n", worst[0]);
    if (qw_amx_available() && bf16) { /* precision FAST's attention: with the AVX-512 BF16 table, as the library */
        test_table(bf16, 1, 0);
        test_table(bf16, 1, 1);
        printf("attention: amx largest error %.2g of 1 + |ref|\n", worst[1]);
    } else {
        printf("attention: amx not available on this CPU, skipped\n");
    }
    printf("attention: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
