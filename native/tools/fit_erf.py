"""Fits the float erf used by libqwen's GELU (native/src/kernels_gelu.h: the QW_ERF_* coefficients).

    .venv/bin/python native/tools/fit_erf.py      # needs numpy and scipy

erf(x) ~= x * P(x^2) / Q(x^2) on |x| <= XMAX (beyond it erf rounds to +-1 in
float), P of degree 6 and Q of degree 4 with Q(0) = 1: a linear least-squares
fit of P - erf(x)/x * Q, re-weighted (Lawson) toward the smallest largest
error. Prints the coefficients as float literals and the largest absolute
error of the float evaluation (Horner, as the C code does it) against the
exact erf.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

XMAX = 3.925
DEG_P, DEG_Q = 6, 4


def fit(iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.linspace(0, XMAX, 20000), np.linspace(0, 0.5, 2000)])
    x = x[x > 0]
    s, f = x * x, erf(x) / x
    weight, q_prev = np.ones_like(x), np.ones_like(x)
    for _ in range(iterations):
        a = np.hstack(
            [
                np.vstack([s**k for k in range(DEG_P + 1)]).T,
                -np.vstack([f * s**k for k in range(1, DEG_Q + 1)]).T,
            ]
        )
        w = (weight * x / np.abs(q_prev))[:, None]  # the error of erf = x * (P/Q - f)
        coef, *_ = np.linalg.lstsq(a * w, f * w[:, 0], rcond=None)
        p, q = coef[: DEG_P + 1], np.concatenate([[1.0], coef[DEG_P + 1 :]])
        q_prev = np.polyval(q[::-1], s)
        err = np.abs(x * np.polyval(p[::-1], s) / q_prev - erf(x))
        weight = weight * np.sqrt(err / err.max()) + 1e-12
        weight /= weight.mean()
    return p.astype(np.float32), q.astype(np.float32)


def erf_f32(p: np.ndarray, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = np.clip(x.astype(np.float32), -XMAX, XMAX)
    s = x * x
    pv, qv = np.full_like(x, p[-1]), np.full_like(x, q[-1])
    for c in p[-2::-1]:
        pv = pv * s + c
    for c in q[-2::-1]:
        qv = qv * s + c
    return x * pv / qv


def main() -> None:
    p, q = fit()
    xs = np.linspace(-8, 8, 4_000_001).astype(np.float32)
    err = np.abs(erf_f32(p, q, xs).astype(np.float64) - erf(xs.astype(np.float64)))
    print("P:", ", ".join(f"{c:.9e}f" for c in p))
    print("Q:", ", ".join(f"{c:.9e}f" for c in q))
    print(f"largest |error| on [-8, 8]: {err.max():.3g} at x = {xs[err.argmax()]:.6g}")


if __name__ == "__main__":
    main()
