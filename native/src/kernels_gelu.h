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

/* The fit: |t| clamped to QW_ERF_T, P's coefficients from t^12 down, Q's from t^8 down (Q's t^0 is 1);
 * also what kernels_avx512bf16.c's GELU evaluates. */
#define QW_ERF_T 3.925f
#define QW_ERF_P6 1.984379594e-08f
#define QW_ERF_P5 -1.997702611e-06f
#define QW_ERF_P4 1.504761603e-04f
#define QW_ERF_P3 4.038781393e-03f
#define QW_ERF_P2 5.161169916e-02f
#define QW_ERF_P1 2.076629251e-01f
#define QW_ERF_P0 1.128378868e+00f
#define QW_ERF_Q4 1.039732946e-03f
#define QW_ERF_Q3 1.502556819e-02f
#define QW_ERF_Q2 1.182120740e-01f
#define QW_ERF_Q1 5.173655152e-01f

static inline void qw_gelu_erf_row(float *x, int n) {
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        float t = v * 0.70710678118654752f;
        t = t < -QW_ERF_T ? -QW_ERF_T : t; /* NaN passes through both */
        t = t > QW_ERF_T ? QW_ERF_T : t;
        const float s = t * t;
        const float p =
            (((((QW_ERF_P6 * s + QW_ERF_P5) * s + QW_ERF_P4) * s + QW_ERF_P3) * s + QW_ERF_P2) * s + QW_ERF_P1) * s +
            QW_ERF_P0;
        const float q = (((QW_ERF_Q4 * s + QW_ERF_Q3) * s + QW_ERF_Q2) * s + QW_ERF_Q1) * s + 1.0f;
        float e = t * p / q;
        e = t >= QW_ERF_T ? 1.0f : e; /* exactly +-1 outside, so gelu(v) = v or 0 there */
        e = t <= -QW_ERF_T ? -1.0f : e;
        x[i] = 0.5f * v * (1.0f + e);
    }
}

#endif /* QWEN_KERNELS_GELU_H */
