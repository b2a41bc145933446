"""Fit the polynomial of kernels/gelu.py's normal CDF for 16-bit tiles.

The upper tail of the standard normal is written Q(t) = exp(-t^2 / 2) R(t),
t >= 0. log2 R(t) is smooth and slowly varying (log2(1/2) at 0, about
-log2(t sqrt(2 pi)) for large t), so a low-degree polynomial holds it on
[0, TAIL_END]; Q then costs one exp2:

    Q(t) = exp2(-t^2 log2(e) / 2 + L(u)),   u = 2 min(t, TAIL_END) / TAIL_END - 1

Past TAIL_END the clamp keeps L at its end value, which overstates Q by a
factor of about t / TAIL_END where Q < 1e-9 (PyTorch's float32
0.5 (1 + erf(x / sqrt 2)) is exactly 0 from about x = -5.4 on).

The fit minimises the largest absolute error of L (so the relative error of
Q) on Chebyshev points by Lawson's reweighted least squares, in the
Chebyshev basis, and prints the monomial coefficients of L(u), lowest first.
It needs numpy only: `python scripts/fit_normal_tail.py [--end 6] [--degree 9]`.
"""
from __future__ import annotations

import argparse
import math

import numpy as np


def log2_scaled_tail(t: np.ndarray) -> np.ndarray:
    """log2 R(t) = log2(Q(t)) + t^2 log2(e) / 2, from math.erfc in float64."""
    return np.array([math.log2(0.5 * math.erfc(v / math.sqrt(2.0))) + v * v / (2.0 * math.log(2.0)) for v in t])


def fit(end: float, degree: int, points: int = 6000, rounds: int = 200):
    """(monomial coefficients of L(u), lowest first; largest |error| of L)."""
    u = np.cos(np.linspace(0.0, math.pi, points))
    target = log2_scaled_tail((u + 1.0) * end / 2.0)
    basis = np.polynomial.chebyshev.chebvander(u, degree)
    weights = np.full_like(u, 1.0 / points)
    best, best_error = None, math.inf
    for _ in range(rounds):
        coef, *_ = np.linalg.lstsq(basis * weights[:, None], target * weights, rcond=None)
        error = np.abs(basis @ coef - target)
        if error.max() < best_error:
            best, best_error = coef, error.max()
        weights = weights * error / error.max() + 1e-300  # Lawson: weight the worst points up
        weights /= weights.sum()
    return np.polynomial.chebyshev.cheb2poly(best), best_error


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--end", type=float, default=6.0, help="TAIL_END: where the clamp starts")
    parser.add_argument("--degree", type=int, default=9)
    args = parser.parse_args(argv)
    coef, error = fit(args.end, args.degree)
    print(f"# L(u), |error| <= {error:.2e} in log2 (Q relative {error * math.log(2.0):.2e}), TAIL_END = {args.end}")
    print("TAIL_POLY = (" + ", ".join(f"{float(np.float32(c))!r}" for c in coef) + ")")


if __name__ == "__main__":
    main()
