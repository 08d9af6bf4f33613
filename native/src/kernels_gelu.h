/*
 * GELU with erf (the encoder's activation), written once in plain C and
 * included by every kernel file, so that each compiles it for its own
 * vector width: the loop is branch-free and vectorises.
 *
 *   gelu(v) = 0.5 v (1 + erf(v / sqrt 2))
 *   erf(t) ~= t P(t^2) / Q(t^2) for |t| <= 3.925, and +-1 beyond (as the
 *   float erf rounds there)
 *
 * P and Q are fitted by native/tools/fit_erf.py: largest absolute error
 * 4.2e-7 against the exact erf (libm's erff per element took about a fifth
 * of the encoder's time).
 */
#ifndef QWEN_KERNELS_GELU_H
#define QWEN_KERNELS_GELU_H

static inline void qw_gelu_erf_row(float *x, int n) {
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        float t = v * 0.70710678118654752f;
        t = t < -3.925f ? -3.925f : t; /* NaN passes through both */
        t = t > 3.925f ? 3.925f : t;
        const float s = t * t;
        const float p =
            (((((1.984379594e-08f * s - 1.997702611e-06f) * s + 1.504761603e-04f) * s + 4.038781393e-03f) * s +
              5.161169916e-02f) * s + 2.076629251e-01f) * s + 1.128378868e+00f;
        const float q = (((1.039732946e-03f * s + 1.502556819e-02f) * s + 1.182120740e-01f) * s + 5.173655152e-01f) * s + 1.0f;
        float e = t * p / q;
        e = t >= 3.925f ? 1.0f : e; /* exactly +-1 outside, so gelu(v) = v or 0 there */
        e = t <= -3.925f ? -1.0f : e;
        x[i] = 0.5f * v * (1.0f + e);
    }
}

#endif /* QWEN_KERNELS_GELU_H */
