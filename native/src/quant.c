/*
 * Int8 weights — packing and quantizing (shared by every table), the scalar
 * reference product and the choice of table. The maths and the layout are
 * in quant.h.
 */
#include "quant.h"

#include "../include/qwen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== Layout ==== */

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

void qw_q8_sizes(int N, int K, size_t *q_bytes, size_t *scale_bytes, size_t *zsum_bytes) {
    const size_t blocks = ((size_t)N + 15) / 16, Kp = ((size_t)K + 3) & ~(size_t)3;
    const size_t ng = ((size_t)K + QW_Q8_GROUP - 1) / QW_Q8_GROUP;
    *q_bytes = round64(blocks * 16 * Kp);
    *scale_bytes = round64(blocks * ng * 16 * sizeof(uint16_t));
    *zsum_bytes = round64(blocks * ng * 16 * sizeof(int32_t));
}

void qw_q8_init(qw_q8 *W, int N, int K, void *q, void *scale, void *zsum) {
    *W = (qw_q8){q, scale, zsum, N, K, (K + 3) & ~3, (K + QW_Q8_GROUP - 1) / QW_Q8_GROUP};
}

/* ==== Quantizing ==== */

/* max(m, |x|) without a libm call (vectorizes; a NaN x leaves m, as fmaxf does). */
static inline float absmax(float m, float x) {
    const float a = fabsf(x);
    return a > m ? a : m;
}

/* round(x * inv) clamped to [-127, 127]; NaN -> 0. Nearest even through the 1.5 x 2^23 trick
 * (exact below 2^22), branch-free: loops over it vectorize without SSE4.1's roundps. Where the
 * table has no vector quantize_group, the packing's second pass over every weight group runs
 * here (with lrintf, 0.4 s more to load 0.6B on the Xeon). */
static inline int q8_round(float x, float inv) {
    float r = x * inv;
    r = r == r ? r : 0.0f;
    r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
    return (int)((r + 0x1.8p23f) - 0x1.8p23f);
}

/* Each group of each row goes through the table's row quantizer (qa + 128 bytes, zero-padded k
 * holding 128) and, where its scale does not round to bf16 exactly, is quantized again against the
 * rounded scale; then into the block's layout as int8 with its scale and -128 x its sum. */
void qw_q8_pack_with(const qw_q8_kernels *t, void (*to_f32)(float *dst, const void *src, qw_dtype dt, int n),
                     qw_q8 *W, const void *src, qw_dtype dt, int b0, int b1) {
    const int K = W->K, Kp = W->Kp, ng = W->ng;
    const size_t esz = dt == QW_F32 ? 4 : 2;
    float w[QW_Q8_GROUP];
    uint8_t u[QW_Q8_GROUP];
    for (int b = b0; b < b1; b++) {
        int8_t *qb = W->q + (size_t)b * 16 * Kp;
        uint16_t *sb = W->scale + (size_t)b * ng * 16;
        int32_t *zb = W->zsum + (size_t)b * ng * 16;
        for (int j = 0; j < 16; j++) {
            const int n = b * 16 + j;
            for (int g = 0; g < ng; g++) {
                const int k0 = g * QW_Q8_GROUP, k1 = k0 + QW_Q8_GROUP < K ? k0 + QW_Q8_GROUP : K;
                const int kw = (g == ng - 1 ? Kp : k1) - k0; /* the last group takes the zero padding */
                float s = 0.0f;
                if (n < W->N) {
                    to_f32(w, (const char *)src + ((size_t)n * (size_t)K + (size_t)k0) * esz, dt, k1 - k0);
                    t->quantize_rows(u, &s, w, QW_Q8_GROUP, 1, k1 - k0, kw, 1);
                    const float sr = qw_bf16_to_f32(qw_f32_to_bf16(s));
                    if (sr != s && sr > 0.0f && sr < INFINITY) t->quantize_group(u, w, k1 - k0, 1.0f / sr);
                } else { /* a padding row: zeros */
                    memset(u, 128, (size_t)kw);
                }
                int32_t sum = 0;
                for (int k = 0; k < kw; k++) sum += (int32_t)u[k] - 128;
                for (int k = 0; k < kw; k += 4) { /* 4 consecutive k of column j, as int8 (kw: a multiple of 4) */
                    uint32_t x;
                    memcpy(&x, u + k, 4);
                    x ^= 0x80808080u;
                    memcpy(qb + (size_t)((k0 + k) / 4) * 64 + (size_t)j * 4, &x, 4);
                }
                sb[g * 16 + j] = qw_f32_to_bf16(s);
                zb[g * 16 + j] = -128 * sum;
            }
        }
    }
}

void qw_q8_pack(qw_q8 *W, const void *src, qw_dtype dt, int b0, int b1) {
    qw_q8_pack_with(&qw_q8_scalar, qw_kernels_scalar.to_f32, W, src, dt, b0, b1);
}

size_t qw_q8_act_bytes(int M, int K) {
    const size_t Kp = ((size_t)K + 3) & ~(size_t)3, ng = ((size_t)K + QW_Q8_GROUP - 1) / QW_Q8_GROUP;
    return round64((size_t)M * Kp) + (size_t)M * ng * sizeof(float);
}

float *qw_q8_act_scale(void *buf, int M, const qw_q8 *W) {
    return (float *)(void *)((uint8_t *)buf + round64((size_t)M * (size_t)W->Kp));
}

qw_q8_act qw_q8_act_at(void *buf, int M, const qw_q8 *W) {
    return (qw_q8_act){buf, qw_q8_act_scale(buf, M, W), M, W->Kp, W->ng};
}

qw_q8_act qw_q8_quantize(const qw_q8_kernels *k, void *buf, const float *A, int lda, int M, const qw_q8 *W) {
    k->quantize_rows(buf, qw_q8_act_scale(buf, M, W), A, lda, M, W->K, W->Kp, W->ng);
    return qw_q8_act_at(buf, M, W);
}

void qw_q8_quantize_group(uint8_t *u, const float *x, int n, float inv) {
    for (int k = 0; k < n; k++) u[k] = (uint8_t)(q8_round(x[k], inv) + 128);
}

void qw_q8_quantize_rows(uint8_t *q, float *scale, const float *A, int lda, int M, int K, int Kp, int ng) {
    for (int m = 0; m < M; m++) {
        const float *a = A + (size_t)m * lda;
        uint8_t *qm = q + (size_t)m * Kp;
        for (int g = 0; g < ng; g++) {
            const int k0 = g * QW_Q8_GROUP, k1 = k0 + QW_Q8_GROUP < K ? k0 + QW_Q8_GROUP : K;
            float amax = 0.0f;
            for (int k = k0; k < k1; k++) amax = absmax(amax, a[k]);
            qw_q8_quantize_group(qm + k0, a + k0, k1 - k0, amax > 0.0f ? 127.0f / amax : 0.0f);
            scale[(size_t)m * ng + g] = amax / 127.0f;
        }
        for (int k = K; k < Kp; k++) qm[k] = 128;
    }
}

/* ==== Scalar product (the reference) ==== */

static void matmul_q8_scalar(float *C, int ldc, const qw_q8_act *A, const qw_q8 *W, const float *bias, int M, int n0,
                             int n1) {
    const int Kp = W->Kp, ng = W->ng;
    for (int n = n0; n < n1; n++) {
        const int b = n / 16, j = n % 16;
        const int8_t *qb = W->q + (size_t)b * 16 * Kp;
        const uint16_t *sb = W->scale + (size_t)b * ng * 16;
        for (int m = 0; m < M; m++) {
            const uint8_t *qa = A->q + (size_t)m * Kp;
            float acc = 0.0f;
            for (int g = 0; g < ng; g++) {
                const int k0 = g * QW_Q8_GROUP, k1 = k0 + QW_Q8_GROUP < Kp ? k0 + QW_Q8_GROUP : Kp;
                int32_t d = 0;
                for (int k = k0; k < k1; k++) d += ((int32_t)qa[k] - 128) * qb[(size_t)(k / 4) * 64 + (size_t)j * 4 + (size_t)(k % 4)];
                acc = fmaf((float)d, qw_bf16_to_f32(sb[g * 16 + j]) * A->scale[(size_t)m * ng + g], acc);
            }
            C[(size_t)m * ldc + n] = bias ? acc + bias[n] : acc;
        }
    }
}

/* ==== The LM head's screen (quant.h) ==== */

void qw_q4_sizes(int N, int K, size_t *q_bytes, size_t *scale_bytes) {
    const size_t blocks = ((size_t)N + 15) / 16, ng = ((size_t)K + QW_Q8_GROUP - 1) / QW_Q8_GROUP;
    *q_bytes = round64(blocks * 16 * (size_t)K / 2);
    *scale_bytes = round64(blocks * ng * 16 * sizeof(uint16_t));
}

void qw_q4_init(qw_q4 *S, int N, int K, void *q, void *scale) {
    *S = (qw_q4){q, scale, N, K, (K + QW_Q8_GROUP - 1) / QW_Q8_GROUP};
}

/* A group of a block at a time: its 16 rows of the int8 copy (4 k of 16 columns each) give each
 * column's largest |q|, then 8 rows of the screen (8 k each: two int8 rows' bytes as nibbles). */
void qw_q4_from_q8(qw_q4 *S, const qw_q8 *W, int b0, int b1) {
    const int K = W->K, ng = W->ng;
    for (int b = b0; b < b1; b++)
        for (int g = 0; g < ng; g++) {
            const int8_t *q = W->q + (size_t)b * 16 * W->Kp + (size_t)g * (QW_Q8_GROUP / 4) * 64;
            uint8_t *o = S->q + (size_t)b * 8 * K + (size_t)g * (QW_Q8_GROUP / 8) * 64;
            const uint16_t *sw = W->scale + ((size_t)b * ng + g) * 16;
            uint16_t *s4 = S->scale + ((size_t)b * ng + g) * 16;
            const int rows = (K - g * QW_Q8_GROUP < QW_Q8_GROUP ? K - g * QW_Q8_GROUP : QW_Q8_GROUP) / 4; /* of 4 k */
            int m64[64] = {0}; /* per byte of a row (4 k of a column), then per column */
            for (int i = 0; i < rows; i++)
                for (int x = 0; x < 64; x++) {
                    const int a = abs(q[i * 64 + x]);
                    m64[x] = a > m64[x] ? a : m64[x];
                }
            float r[64]; /* q4 = round(q * r), per byte of a row */
            for (int j = 0; j < 16; j++) {
                int mx = 0;
                for (int t = 0; t < 4; t++) mx = m64[4 * j + t] > mx ? m64[4 * j + t] : mx;
                const float w = qw_bf16_to_f32(sw[j]);
                s4[j] = qw_f32_to_bf16(w * (float)mx / 7.0f);
                float rj = qw_bf16_to_f32(s4[j]) > 0.0f ? w / qw_bf16_to_f32(s4[j]) : 0.0f;
                if (!(rj > 0.0f)) s4[j] = 0, rj = 0.0f;
                for (int t = 0; t < 4; t++) r[4 * j + t] = rj;
            }
            for (int i = 0; i < rows / 2; i++)
                for (int x = 0; x < 64; x++) {
                    const int lo = q8_round((float)q[(2 * i) * 64 + x], r[x]);
                    const int hi = q8_round((float)q[(2 * i + 1) * 64 + x], r[x]);
                    o[i * 64 + x] = (uint8_t)(((lo < -7 ? -7 : lo > 7 ? 7 : lo) + 8) |
                                              (((hi < -7 ? -7 : hi > 7 ? 7 : hi) + 8) << 4));
                }
        }
}

void qw_q4_screen_ref(float *C, int ldc, const qw_q8_act *A, const qw_q4 *S, int M, int n0, int n1) {
    const int K = S->K, ng = S->ng;
    for (int n = n0; n < n1; n++) {
        const int b = n / 16, j = n % 16;
        const uint8_t *qb = S->q + (size_t)b * 16 * K / 2;
        const uint16_t *sb = S->scale + (size_t)b * ng * 16;
        for (int m = 0; m < M; m++) {
            const uint8_t *qa = A->q + (size_t)m * A->Kp;
            float acc = 0.0f;
            for (int g = 0; g < ng; g++) {
                int32_t d = 0;
                for (int k = g * QW_Q8_GROUP; k < (g + 1) * QW_Q8_GROUP && k < K; k++) {
                    const uint8_t byte = qb[(size_t)(k / 8) * 64 + (size_t)j * 4 + (size_t)(k % 4)];
                    d += ((int32_t)qa[k] - 128) * ((k % 8 < 4 ? byte & 15 : byte >> 4) - 8);
                }
                acc = fmaf((float)d, qw_bf16_to_f32(sb[g * 16 + j]) * A->scale[(size_t)m * ng + g], acc);
            }
            C[(size_t)m * ldc + (n - n0)] = acc;
        }
    }
}

float qw_q4_block_max(const float *v, int n) {
    float m = v[0];
    int nan = 0;
    for (int i = 0; i < n; i++) {
        m = v[i] > m ? v[i] : m;
        nan |= v[i] != v[i];
    }
    return nan ? NAN : m;
}

void qw_q4_screen_scalar(float *T, int ldt, const qw_q8_act *A, const qw_q4 *S, int M, int n0, int n1) {
    for (int m = 0; m < M; m++) {
        const qw_q8_act a = {A->q + (size_t)m * A->Kp, A->scale + (size_t)m * A->ng, 1, A->Kp, A->ng};
        for (int n = n0; n < n1; n += 16) {
            const int nr = n1 - n < 16 ? n1 - n : 16;
            float c[16];
            qw_q4_screen_ref(c, 16, &a, S, 1, n, n + nr);
            T[(size_t)m * ldt + n / 16] = qw_q4_block_max(c, nr);
        }
    }
}

void qw_q4_act_sums(int32_t *sums, const qw_q8_act *A, int m, int R, int K) {
    for (int r = 0; r < R; r++) {
        const uint8_t *qa = A->q + (size_t)(m + r) * A->Kp;
        for (int g = 0; g * QW_Q8_GROUP < K; g++) {
            int32_t sum = 0;
            for (int k = g * QW_Q8_GROUP; k < (g + 1) * QW_Q8_GROUP && k < K; k++) sum += (int32_t)qa[k] - 128;
            sums[r * QW_Q4_MAX_NG + g] = 8 * sum;
        }
    }
}

void qw_q4_screen_tiles(const qw_q4_tile *tiles, int mr, float *T, int ldt, const qw_q8_act *A, const qw_q4 *S,
                        int M, int n0, int n1) {
    const int K = S->K;
    int8_t *qs = S->ng > QW_Q4_MAX_NG ? NULL : malloc((size_t)(M < QW_Q4_ROWS ? M : QW_Q4_ROWS) * K);
    if (!qs) { /* a K past the sums' room, or no memory: the plain C path */
        qw_q4_screen_scalar(T, ldt, A, S, M, n0, n1);
        return;
    }
    for (int m = 0; m < M; m += QW_Q4_ROWS) {
        const int R = M - m < QW_Q4_ROWS ? M - m : QW_Q4_ROWS;
        int32_t sums[QW_Q4_ROWS * QW_Q4_MAX_NG];
        qw_q4_act_sums(sums, A, m, R, K);
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++) qs[(size_t)r * K + k] = (int8_t)(A->q[(size_t)(m + r) * A->Kp + k] ^ 0x80);
        for (int n = n0; n < n1; n += 16) {
            const int nr = n1 - n < 16 ? n1 - n : 16;
            float c[QW_Q4_ROWS][16];
            for (int p = 0; p < R; p += mr) {
                const int rp = R - p < mr ? R - p : mr;
                tiles[rp - 1](c[p], 16, qs + (size_t)p * K, K, A->scale + (size_t)(m + p) * A->ng,
                              sums + p * QW_Q4_MAX_NG, S, n / 16, nr);
            }
            for (int r = 0; r < R; r++) T[(size_t)(m + r) * ldt + n / 16] = qw_q4_block_max(c[r], nr);
        }
    }
    free(qs);
}

int qw_q4_top_blocks(const float *bmax, int nblocks, int nb, int *blocks) {
    float top[QW_Q4_MAX_BLOCKS]; /* the best nb so far, the smallest at [0] ... in no other order */
    int n = 0, low = 0;
    if (nb > QW_Q4_MAX_BLOCKS) nb = QW_Q4_MAX_BLOCKS;
    float best = -INFINITY;
    for (int b = 0; b < nblocks; b++) {
        const float m = bmax[b];
        if (m != m) return 0;
        best = m > best ? m : best;
        if (n < nb) {
            top[n] = m, blocks[n] = b;
            if (m < top[low]) low = n;
            n++;
        } else if (m > top[low]) { /* replaces the smallest kept; then find the new smallest */
            top[low] = m, blocks[low] = b;
            for (int i = 0; i < n; i++) low = top[i] < top[low] ? i : low;
        }
    }
    return isfinite(best) ? n : 0;
}

const qw_q8_kernels qw_q8_scalar = {"scalar", matmul_q8_scalar, qw_q8_quantize_rows, qw_q8_quantize_group,
                                    qw_q4_screen_scalar, 4};

/* ==== Dispatch ==== */

const qw_q8_kernels *qw_q8_for(int isa) {
#ifdef QW_X86
    __builtin_cpu_init();
    if ((isa == QWEN_ISA_AVX512 || isa == QWEN_ISA_AVX512BF16) && __builtin_cpu_supports("avx512vnni"))
        return &qw_q8_avx512vnni;
    if (isa == QWEN_ISA_AVX512 || isa == QWEN_ISA_AVX512BF16 || isa == QWEN_ISA_AVX2)
        return qw_cpu_has_avxvnni() ? &qw_q8_avxvnni : &qw_q8_avx2;
#endif
#ifdef QW_ARM
    if (isa == QWEN_ISA_NEON) return qw_cpu_has_dotprod() ? &qw_q8_neondot : &qw_q8_neon;
#endif
    (void)isa;
    return &qw_q8_scalar;
}
