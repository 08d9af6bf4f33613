/*
 * exp for softmax and SwiGLU, written once in plain C and included by every
 * kernel file, so that each compiles it for its own vector width (as GELU in
 * kernels_gelu.h): branch-free loops that vectorise.
 *
 *   exp(x) = 2^n exp(r),  n = round(x / ln 2),  r = x - n ln 2 (ln 2 in two
 *   parts, Cody and Waite), |r| <= ln(2) / 2, exp(r) by Cephes' expf
 *   polynomial (within 1-2 ulp of libm's expf).
 *
 * Inputs below -87 give 0 (libm gives at most 1.6e-38 there, or a subnormal:
 * nothing a softmax sum or a SiLU can tell from 0), above 88 give infinity
 * (libm's overflows at 88.72: only SiLU of a gate below -88 asks, and
 * g / (1 + inf) is -0 either way). NaN stays NaN. libm's expf per element was most of a
 * long prefill's attention time (the softmax over 60 s of audio tokens) and
 * about 3 % of a decode step (SwiGLU), 8 times that at batch 8.
 */
#ifndef QWEN_KERNELS_EXP_H
#define QWEN_KERNELS_EXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float qw_exp_approx(float x) {
    const float v = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x); /* NaN passes through both */
    const float t = v * 1.44269504088896341f;
    const float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest (1.5 * 2^23) */
    float r = v - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    const float r2 = r * r;
    const float p =
        ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
         1.6666665459e-1f) * r + 5.0000001201e-1f;
    const float e = p * r2 + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23; /* 2^n, n in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = e * scale;
    y = x < -87.0f ? 0.0f : y;
    y = x > 88.0f ? INFINITY : y;
    return x != x ? x : y;
}

/* x[i] = exp(x[i] - max) / sum: softmax of a row in place. The sum runs in 16
 * partial sums (in a fixed order, whatever the vector width). */
static inline void qw_softmax_row(float *x, int n) {
    if (n <= 0) return;
    float top[16];
    for (int j = 0; j < 16; j++) top[j] = x[0];
    int i = 0;
    for (; i + 16 <= n; i += 16) /* 16 running maxima: vectorises (a max is exact in any order) */
        for (int j = 0; j < 16; j++) top[j] = x[i + j] > top[j] ? x[i + j] : top[j];
    const int rem = n - i; /* the tail, in 16 lanes padded with -inf: one vector, not up to 15 scalar steps */
    float tail[16];
    for (int j = 0; j < 16; j++) tail[j] = j < rem ? x[i + j] : -INFINITY;
    for (int j = 0; j < 16; j++) top[j] = tail[j] > top[j] ? tail[j] : top[j];
    float mx = top[0];
    for (int j = 1; j < 16; j++) mx = top[j] > mx ? top[j] : mx;
    float part[16] = {0};
    i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int j = 0; j < 16; j++) {
            const float e = qw_exp_approx(x[i + j] - mx);
            x[i + j] = e;
            part[j] += e;
        }
    }
    for (int j = 0; j < 16; j++) { /* exp(-inf) = 0: the padding adds nothing */
        tail[j] = qw_exp_approx(tail[j] - mx);
        part[j] += tail[j];
    }
    for (int j = 0; j < rem; j++) x[i + j] = tail[j];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += part[j];
    const float inv = 1.0f / s;
    for (i = 0; i < n; i++) x[i] *= inv;
}

/* g[i] = SiLU(g[i]) * u[i], SiLU(v) = v / (1 + exp(-v)) */
static inline void qw_swiglu_row(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) {
        const float v = g[i];
        g[i] = v / (1.0f + qw_exp_approx(-v)) * u[i];
    }
}

#endif /* QWEN_KERNELS_EXP_H */
