"""Fits the even polynomials behind tf-puma's GeLU and SiLU, and the cubic behind its exp, and
prints their float errors.

f(x) = x/2 + h(x) on [-T, T] with h(x) = f(x) - x/2 even for GeLU and SiLU (x Phi(x) - x/2 and
x sigma(x) - x/2 are even), so h is a polynomial in x^2; outside [-T, T], f is 0 / x. Minimax by
Lawson's iteratively reweighted least squares.

exp(x) = p(x/16)^16 with p(y) = 1 + y + y^2/2 + c3 y^3 (approx.exp: c3 is the one coefficient
its products leave free). Taylor's c3 = 1/6 leaves p below e^y by ~y^4/24, so p^16 is ~(2/3)
(x/16)^4 too small relative to e^x, always in the same direction: softmax then takes weight from
the lower entries of a row and gives it to the top ones. c3 is picked on softmax itself: the
worst absolute error of softmax rows of normal logits (several widths and spreads).

The coefficients are pasted into tf_puma/protocols/approx.py; this script shows where they come
from and writes benchmarks/results/fit_activations.json.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import print_table, write_json  # noqa: E402

FUNCTIONS = {
    "gelu": (lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2))), 4.0, 16),
    "silu": (lambda x: x / (1 + np.exp(-x)), 7.0, 10),
}


def fit_even(f, bound: float, degree: int, iterations: int = 400) -> tuple[list[float], float]:
    x = np.linspace(-bound, bound, 8001)
    y = f(x) - x / 2
    ks = list(range(0, degree + 1, 2))
    basis = np.stack([x ** k for k in ks], 1)
    w = np.full_like(x, 1 / len(x))
    for _ in range(iterations):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(basis * sw[:, None], y * sw, rcond=None)
        err = np.abs(basis @ c - y)
        w = w * err
        w /= w.sum()
    coeffs = [0.0] * (degree + 1)
    for k, ck in zip(ks, c):
        coeffs[k] = float(ck)
    return coeffs, float(np.abs(basis @ c - y).max())


EXP_CLIP = -14.0  # approx.exp returns 0 below
SOFTMAX_ROWS = [(n, spread) for n in (16, 128, 512) for spread in (0.5, 1, 2, 3, 5, 8)]


def exp_cubic(x: np.ndarray, c3: float) -> np.ndarray:
    """approx.exp's function in float: p(x/16)^16, 0 below the clip."""
    y = x / 16
    return np.where(x < EXP_CLIP, 0.0, (1 + y + y * y / 2 + c3 * y ** 3) ** 16)


def softmax_worst_error(c3: float, seed: int = 0, rows: int = 1000) -> float:
    """Largest |softmax - exact| over rows of normal logits, exp replaced by exp_cubic."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n, spread in SOFTMAX_ROWS:
        x = rng.normal(size=(rows, n)) * spread
        x -= x.max(-1, keepdims=True)
        approx, exact = exp_cubic(x, c3), np.exp(x)
        approx /= approx.sum(-1, keepdims=True)
        exact /= exact.sum(-1, keepdims=True)
        worst = max(worst, float(np.abs(approx - exact).max()))
    return worst


def fit_exp_cubic() -> dict:
    """c3 minimising softmax_worst_error, to 1e-4 (a grid of 1e-3, then 1e-4 around its best;
    fit on seed 0, checked on seed 1)."""
    coarse = float(min(np.round(np.arange(0.140, 0.1671, 1e-3), 3), key=softmax_worst_error))
    fine = np.round(np.arange(coarse - 1e-3, coarse + 1.01e-3, 1e-4), 4)
    c3 = float(min(fine, key=softmax_worst_error))
    x = np.linspace(EXP_CLIP, 0.03, 100001)  # the max tree lets exp's argument reach 0.03
    return {name: {"c3": c, "exp_max_abs_error": float(np.abs(exp_cubic(x, c) - np.exp(x)).max()),
                   "softmax_worst_error": softmax_worst_error(c),
                   "softmax_worst_error_heldout": softmax_worst_error(c, seed=1)}
            for name, c in (("taylor", 1 / 6), ("fit", c3))}


def main() -> None:
    rows, out = [], {}
    for name, (f, bound, degree) in FUNCTIONS.items():
        coeffs, poly_err = fit_even(f, bound, degree)
        edge = float(abs(f(np.array([bound]))[0] - bound))
        rows.append([name, bound, degree, f"{poly_err:.2e}", f"{edge:.2e}"])
        out[name] = {"bound": bound, "degree": degree, "coeffs": coeffs,
                     "poly_max_abs_error": poly_err, "edge_error": edge}
        print(f"{name.upper()}_EVEN = {coeffs!r}")
    print_table(["function", "T", "degree", "max |poly - f| on [-T, T]", "|f(T) - T|"], rows)
    out["exp"] = fit_exp_cubic()
    print(f"\nEXP_CUBIC = {out['exp']['fit']['c3']!r}")
    print_table(["exp cubic", "c3", "max |exp| error on [-14, 0.03]", "softmax worst error",
                 "held out"],
                [[name, f"{row['c3']:.4f}", f"{row['exp_max_abs_error']:.2e}",
                  f"{row['softmax_worst_error']:.2e}", f"{row['softmax_worst_error_heldout']:.2e}"]
                 for name, row in out["exp"].items()])
    write_json("fit_activations", out)


if __name__ == "__main__":
    main()
