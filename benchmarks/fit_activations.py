"""Fits the even polynomials behind tf-puma's GeLU and SiLU and prints their float errors.

f(x) = x/2 + h(x) on [-T, T] with h(x) = f(x) - x/2 even for GeLU and SiLU (x Phi(x) - x/2 and
x sigma(x) - x/2 are even), so h is a polynomial in x^2; outside [-T, T], f is 0 / x. Minimax by
Lawson's iteratively reweighted least squares. The coefficients are pasted into
tf_puma/protocols/approx.py; this script shows where they come from and writes
benchmarks/results/fit_activations.json.
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
    write_json("fit_activations", out)


if __name__ == "__main__":
    main()
