"""Fixed-point approximations of nonlinear functions on shared values.

Refer to: PUMA (arXiv 2307.12533) Section 4 (GeLU, Softmax, LayerNorm) and SPU's
libspu/kernel/hal/fxp_approx.cc. One public function per math function; each states its formula,
valid range, error (tested in tests/test_approx.py) and cost.

Normalisation without bit decomposition: reciprocal and rsqrt compare x with the powers of two
2^j of a stated range in one batched comparison. The differences of neighbouring comparison bits
form a one-hot vector e_j = [2^j <= x < 2^(j+1)], and any function of j is then a local, exact
linear combination sum_j e_j c_j with public c_j (integer shares times public fixed-point
constants need no truncation).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from tf_puma import costs, opbuild, runtime
from tf_puma.protocols import arithmetic, compare, tensor
from tf_puma.sharing import Shared

# Most fractional bits for polynomial coefficients (see `polynomial`).
MAX_COEFF_BITS = 42
# Fractional bits of v = (x/s)^2 in [0, 1] and its powers inside GeLU/SiLU: products of two such
# values (2^60) still fit the ring, and the polynomial's large alternating coefficients no longer
# amplify 2^-18 rounding errors.
POLY_FRAC_BITS = 30
# Fractional bits of rsqrt's public 2^(-j/2) (values up to 2^5; times y <= 1.1 at
# NEWTON_FRAC_BITS the product stays below 2^60).
MIX_FRAC_BITS = 26


def powers(x: Shared, needed: Sequence[int]) -> dict[int, Shared]:
    """x^k for every k in `needed` (and what they are built from): x^k = x^h x^(k-h) with h the
    largest power of two below k, so x^k is ready after 2 ceil(log2 k) rounds."""
    out = {1: x}
    frac = max(x.frac_bits, arithmetic.fixed_point().frac_bits)

    def build(k: int) -> Shared:
        if k not in out:
            high = 1 << (k.bit_length() - 1)
            if high == k:
                half = build(k // 2)
                out[k] = arithmetic.mul(half, half, frac_out=frac)
            else:
                out[k] = arithmetic.mul(build(high), build(k - high), frac_out=frac)
        return out[k]

    for k in needed:
        build(k)
    return out


def _weighted_sum(x_powers: dict[int, Shared], coeffs: Sequence[float], coeff_frac: int,
                  extra: tuple[Shared, int] | None = None) -> Shared | None:
    """sum_{k >= 1} c_k x^k (+ f y for extra = (y, f)), local and exact: each c_k encoded with
    `coeff_frac` fractional bits times x^k (result: x's fractional bits + coeff_frac; f puts y
    at that scale). One PumaLinearCombination per share when the terms have one shape. None if
    there is no term."""
    frac = x_powers[1].frac_bits + coeff_frac
    terms = [(x_powers[k], int(round(c * 2.0 ** coeff_frac)))
             for k, c in enumerate(coeffs) if k and c]
    if extra is not None:
        terms.append(extra)
    if not terms:
        return None
    if tensor.same_static_shape([x for x, _ in terms]):
        return tensor.linear_combination([x for x, _ in terms], [f for _, f in terms], frac)
    total = None
    for x, enc in terms:
        term = tensor.scale(x, enc, frac)
        total = term if total is None else arithmetic.add(total, term)
    return total


def polynomial(x_powers: dict[int, Shared], coeffs: Sequence[float], bound: float) -> Shared:
    """sum_k coeffs[k] x^k for |x| <= bound, from precomputed powers, with one TruncPr (2 rounds).

    Each c_k is encoded with e fractional bits, multiplied locally into x^k (frac f_x), summed and
    truncated to the format's f bits. e is the largest (<= MAX_COEFF_BITS) keeping the sum below
    2^61 in the ring for |x| <= bound, so small high-order coefficients keep their precision.
    Outside the bound the result is meaningless (callers select it away).
    """
    fxp = arithmetic.fixed_point()
    x1 = x_powers[1]
    magnitude = sum(abs(c) * bound ** k for k, c in enumerate(coeffs) if k) or 1.0
    coeff_frac = int(min(MAX_COEFF_BITS, math.floor(61 - x1.frac_bits - math.log2(magnitude))))
    if coeff_frac + x1.frac_bits <= fxp.frac_bits:
        raise ValueError(f"polynomial too large for the ring on |x| <= {bound}")
    total = _weighted_sum(x_powers, coeffs, coeff_frac)
    with costs.protocol("polynomial", rounds=arithmetic.trunc_rounds(total.shape)):
        out = arithmetic.rescale(total, fxp.frac_bits)
    return arithmetic.add_public(out, coeffs[0]) if coeffs[0] else out


def exp(x: Shared, method: str = "cubic", n: int = 8) -> Shared:
    """e^x for x <= 0 (softmax after max subtraction), 0 below -14 (e^-14 < 2^-18).

    method="cubic" (default): p(y)^16 with p(y) = 1 + y + y^2/2 + c3 y^3, y = x/16, then 4
    squarings. c3 = EXP_CUBIC = 0.1505, not Taylor's 1/6: Taylor's p stays below e^y by ~y^4/24,
    so p^16 is too small relative to e^x by ~(2/3)(x/16)^4, always the same way, and softmax
    moves weight to each row's top entries (its worst error 4.7e-3 on normal rows, and most of
    MiniLM's output error); the fitted c3 (benchmarks/fit_activations.py) brings softmax's to
    4e-4 at the same exp error (5.8e-5). p is built without a separate truncation: y is x itself
    read with 4 more fractional bits, y^2/2 = x^2 / 2^9 and c3 y^3 = (y^2/2)(x c3/8) come out of
    their products' TruncPr already at that scale. Error <= 1e-4 absolute on [-14, 0]
    (5.8e-5 approximation, the squarings kept at 22 fractional bits). 4 products + 4 squarings:
    13 rounds (the clip's comparison runs alongside), ~44n ring elements plus the comparison.
    method="puma": (1 + x/2^n)^(2^n) with n squarings; error about 0.27/2^n + 2^n ulp
    (8.6e-3 at n = 5, 2.1e-3 at n = 7, 1.1e-3 + 1e-3 at n = 8), 2n + 3 rounds.
    """
    fxp = arithmetic.fixed_point()
    with tf.name_scope("exp"):
        below = compare.less(x, -14.0, compare.coarse(x.frac_bits))  # e^x < 2^-18 there
        if method == "cubic":
            frac = x.frac_bits + 4                      # y = x / 16, exact
            y1 = Shared(x.pairs, frac, x.depth)
            half_y2 = arithmetic.mul(x, x, shift=9, frac_out=frac)
            x_c3 = tensor.scale(x, EXP_CUBIC_ENC, x.frac_bits + 20)
            cubic = arithmetic.mul(half_y2, x_c3, frac_out=frac)
            y = arithmetic.add_public(arithmetic.add(arithmetic.add(y1, half_y2), cubic), 1.0)
            for k in range(4):
                y = arithmetic.mul(y, y, frac_out=frac if k < 3 else fxp.frac_bits)
        elif method == "puma":
            y = arithmetic.add_public(arithmetic.mul_public(x, 2.0 ** -n), 1.0)
            for _ in range(n):
                y = arithmetic.mul(y, y)
        else:
            raise ValueError(f"exp method must be 'cubic' or 'puma', got {method!r}")
        keep = arithmetic.public_minus(1, below)
        return arithmetic.mul(keep, y)


# exp's cubic coefficient, fitted on softmax rows (benchmarks/fit_activations.py), and c3/8
# with 20 fractional bits (c3 y^3 = (y^2/2) (x c3/8) for y = x/16): relative error 3e-5.
EXP_CUBIC = 0.1505
EXP_CUBIC_ENC = round(2 ** 20 * EXP_CUBIC / 8)


def _piecewise(x: Shared, bounds: Sequence[float], pieces: Sequence) -> Shared:
    """sum over segments [bounds[i-1], bounds[i]) of piece_i, with one batched comparison.

    pieces[i] is a Shared value, a public constant, or None for zero. Segment indicators are
    differences of the bits [x < bound], tested in compare.coarse's window: a value less than
    2^-8 above a bound may take the piece below it, where the pieces meet.
    The shared pieces are selected by one sum of exact products (1 round, 3n ring elements,
    however many pieces), public ones locally.
    """
    bits = compare.less_than_each(x, bounds, compare.coarse(x.frac_bits))
    by_frac: dict[int, list] = {}    # shared pieces, by fractional bits: one mul_sum each
    public_terms = []
    for i, piece in enumerate(pieces):
        if piece is None:
            continue
        # indicator of segment i: [x < b_i] - [x < b_{i-1}] (first: [x < b_0], last: 1 - [x < b_n])
        if i == 0:
            ind = bits[0]
        elif i == len(bounds):
            ind = arithmetic.public_minus(1, bits[-1])
        else:
            ind = arithmetic.sub(bits[i], bits[i - 1])
        if isinstance(piece, Shared):
            by_frac.setdefault(piece.frac_bits, []).append((ind, piece))
        else:
            public_terms.append(arithmetic.mul_public(ind, piece))
    out = None
    for group in by_frac.values():
        term = arithmetic.mul_sum(group)
        out = term if out is None else arithmetic.add(out, term)
    for term in public_terms:
        out = term if out is None else arithmetic.add(out, term)
    return out


# PUMA's piecewise polynomials (Section 4.1), kept as method="puma" for comparison.
GELU_P3 = [-0.5054031199708174, -0.42226581151983866, -0.11807612951181953,
           -0.011034134030615728]
GELU_P6 = [0.008526321541038084, 0.5, 0.3603292692789629, 0.0, -0.037688200365904236, 0.0,
           0.0018067462606141187]
SILU_P2 = [-0.3067541139982155, -0.0819767021525476, -0.0055465625580307]
SILU_P6 = [0.0085064025895951, 0.5, 0.2281430841728270, 0.0, -0.011113046708173, 0.0,
           0.0002743776353465]

# Ours (benchmarks/fit_activations.py): f(x) = x/2 + h(x) on [-T, T] with h even (a polynomial
# in x^2: degree 16 for GeLU, 10 for SiLU), 0 below -T and x above T. Float error: GeLU 1.3e-4
# (T = 4, the jump to x at 4), SiLU 1.1e-2 (T = 7), against PUMA's 2.0e-2 and 7.2e-2 (its pieces
# jump at x = 3 and x = 4), with the same round count.
GELU_T, GELU_EVEN = 4.0, [
    3.439898298024669e-05, 0.0, 0.39855717994735196, 0.0, -0.06577954873935382, 0.0,
    0.009460996318925809, 0.0, -0.0009969405014495726, 0.0, 7.369782498709934e-05, 0.0,
    -3.5776431683596635e-06, 0.0, 1.0130866411859644e-07, 0.0, -1.2582190032949132e-09]
SILU_T, SILU_EVEN = 7.0, [
    0.01075342180295034, 0.0, 0.225692718096094, 0.0, -0.011302448630149155, 0.0,
    0.0003895740671820872, 0.0, -6.8381259305244485e-06, 0.0, 4.658560728407796e-08]


def _split_polynomial(v: Shared, coeffs: Sequence[float], extra: Shared | None = None,
                      extra_bound: float = 0.0) -> Shared:
    """sum_k c_k v^k (+ extra, |extra| <= extra_bound) for v in [0, 1], as A(v) + v^m B(v)
    with m = floor(d/2):
    A = sum_{k<m} c_k v^k, B = sum_{k>=m} c_k v^(k-m) (Paterson-Stockmeyer, one split).

    Only v^2..v^max(m, d-m) are computed (3 products for d = 8, against 7 for every power),
    B is truncated once, and A (+ extra) is added to the product v^m B before its truncation,
    so the polynomial costs those products + one TruncPr + one product: ~42n ring elements and
    8 rounds for d = 8 (v already shared). Coefficient bits are chosen from the largest |A|,
    |B| on [0, 1] so every ring value stays below 2^61.
    """
    fxp = arithmetic.fixed_point()
    d = len(coeffs) - 1
    m = max(1, d // 2)
    a_coeffs, b_coeffs = list(coeffs[:m]), list(coeffs[m:])
    grid = np.linspace(0.0, 1.0, 4097)
    max_a = np.max(np.abs(np.polyval(a_coeffs[::-1], grid))) + 1.0
    max_b = np.max(np.abs(np.polyval(b_coeffs[::-1], grid))) + 1.0
    p = v.frac_bits
    # fractional bits of B after its truncation; v^m B and A then have p + b_frac
    b_frac = int(min(p, 60 - p - math.log2(max_a + max_b + extra_bound)))
    out_frac = p + b_frac
    if b_frac < fxp.frac_bits:
        raise ValueError("polynomial coefficients too large for the ring")
    pw = powers(v, sorted(set(range(2, max(m, len(b_coeffs) - 1) + 1)) | {m}))

    def local_sum(cs: Sequence[float], coeff_frac: int,
                  plus: tuple[Shared, int] | None = None) -> Shared:
        total = _weighted_sum(pw, cs, coeff_frac, plus)
        if total is None:  # constant: a zero share at the right scale
            total = v.map_local(lambda t: t * 0, frac_bits=p + coeff_frac)
        return arithmetic.add_public(total, cs[0]) if cs[0] else total

    b_coeff_frac = int(min(MAX_COEFF_BITS, math.floor(60 - p - math.log2(max_b))))
    b_raw = local_sum(b_coeffs, b_coeff_frac)
    with costs.protocol("polynomial", rounds=arithmetic.trunc_rounds(b_raw.shape)):
        b = arithmetic.rescale(b_raw, b_frac)
    # A (+ extra at A's scale p + b_frac = out_frac) in one combination
    a = local_sum(a_coeffs, b_frac,
                  None if extra is None else (extra, 2 ** (out_frac - extra.frac_bits)))
    return arithmetic.mul(pw[m], b, frac_out=fxp.frac_bits, addend=a)


def _even_activation(x: Shared, bound: float, even: Sequence[float]) -> Shared:
    """x/2 + h(x) on [-T, T], 0 below, x above, h(x) = sum_k c_2k x^2k.

    h is evaluated in v = (x / s)^2 with s = 2^ceil(log2 T), so every power of v stays <= 1
    (x^10 itself would overflow the ring's 2^62 before truncation), kept with POLY_FRAC_BITS
    fractional bits: v costs one multiplication whose truncation also divides by s^2, then
    `_split_polynomial` (8 rounds, x/2 folded into its last truncation), alongside the batched
    comparison (10, coarse), then one selection of both shared pieces (1): 11 rounds, ~52n ring
    elements plus two coarse comparisons for GeLU's degree 8 in v.
    """
    log_s = math.ceil(math.log2(bound))
    v = arithmetic.mul(x, x, shift=2 * log_s, frac_out=POLY_FRAC_BITS)
    scaled = [even[2 * k] * 4.0 ** (log_s * k) for k in range(len(even) // 2 + 1)]
    half_x = Shared(x.pairs, x.frac_bits + 1, x.depth)              # x / 2, exact
    inner = _split_polynomial(v, scaled, extra=half_x, extra_bound=bound / 2)
    return _piecewise(x, [-bound, bound], [None, inner, x])


def _activation_rounds(x: Shared, method: str) -> int:
    """GeLU's and SiLU's rounds: their products in a row (5 for "even": v = x^2/s^2, v^2, v^3
    and v^4 together, B's rescale, the last product; 4 for "puma"), alongside the coarse
    segment test (10), then one selection: 11 with 2-round truncations, 16 (even) and 13
    (puma) with 3-round."""
    in_a_row = 5 if method == "even" else 4
    segments = compare.coarse(x.frac_bits).rounds()
    return max(in_a_row * arithmetic.trunc_rounds(x.shape), segments) + 1


def gelu(x: Shared, method: str = "even") -> Shared:
    """GeLU x Phi(x) (BERT's erf form; the tanh form differs from it by < 1e-3).

    method="even" (default): x/2 + even degree-16 polynomial on [-4, 4]; max abs error 1.3e-4
    in float, 2e-4 in fixed point, on the whole line. method="puma": PUMA's pieces (0 below -4, cubic on
    [-4, -1.95), degree 6 on [-1.95, 3], x above 3), max abs error 2.0e-2. Cost: 11 rounds
    (_activation_rounds).
    """
    with costs.protocol("gelu", rounds=_activation_rounds(x, method)), tf.name_scope("gelu"):
        if method == "even":
            return _even_activation(x, GELU_T, GELU_EVEN)
        if method != "puma":
            raise ValueError(f"gelu method must be 'even' or 'puma', got {method!r}")
        pw = powers(x, [2, 3, 4, 6])
        p3 = polynomial(pw, GELU_P3, bound=4.0)
        p6 = polynomial(pw, GELU_P6, bound=3.0)
        return _piecewise(x, [-4.0, -1.95, 3.0], [None, p3, p6, x])


def silu(x: Shared, method: str = "even") -> Shared:
    """SiLU x sigmoid(x) (LLaMA).

    method="even" (default): x/2 + even degree-10 polynomial on [-7, 7]; max abs error 1.1e-2.
    method="puma": 0 below -8, quadratic on [-8, -4), degree 6 on [-4, 4], x above 4; max abs
    error 7.2e-2 (at x = 4). Cost: 11 rounds (_activation_rounds).
    """
    with costs.protocol("silu", rounds=_activation_rounds(x, method)), tf.name_scope("silu"):
        if method == "even":
            return _even_activation(x, SILU_T, SILU_EVEN)
        if method != "puma":
            raise ValueError(f"silu method must be 'even' or 'puma', got {method!r}")
        pw = powers(x, [2, 4, 6])
        p2 = polynomial(pw, SILU_P2, bound=8.0)
        p6 = polynomial(pw, SILU_P6, bound=4.0)
        return _piecewise(x, [-8.0, -4.0, 4.0], [None, p2, p6, x])


def _octave_bits(x: Shared, lo: float, hi: float) -> tuple[list[int], Shared | None]:
    """The octaves j_min..j_max covering [lo, hi] (2^j_min <= lo, hi < 2^(j_max+1)) and the
    comparison bits b_k = [x < 2^(j_min+k+1)], k < K = j_max - j_min, stacked on a new leading
    axis as integer shares from one batched comparison (None when [lo, hi] is one octave).
    x's octave is e_j = b_j - b_(j-1) with b_(-1) = 0 and b_K = 1: values below 2^j_min count in
    the first octave, values above in the last."""
    j_min, j_max = math.floor(math.log2(lo)), math.floor(math.log2(hi))
    js = list(range(j_min, j_max + 1))
    if j_max == j_min:
        return js, None
    thresholds = np.asarray([2.0 ** j for j in js[1:]], dtype=np.float64)
    return js, compare.less_than_stacked(x, thresholds)


def _octave_mix(x: Shared, bits: Shared | None, values: Sequence[float],
                frac_bits: int | None = None) -> Shared:
    """sum_j e_j v_j for x's octave e_j (_octave_bits), with v_j encoded with `frac_bits`
    (default the format's) fractional bits. The sum telescopes to
    v_K + sum_k b_k (v_k - v_(k+1)): exact (integers in the ring, int64 wraps) and local, one
    tensordot with a public vector per share, whatever the number of octaves (the one-hot form
    took a Slice, Squeeze, Sub and Mul per octave: MiniLM-32 61,560 -> 38,794 graph ops; a
    broadcast Mul + reduce_sum instead of the tensordot cost ~10% of the steady call)."""
    frac = arithmetic.fixed_point().frac_bits if frac_bits is None else frac_bits
    enc = np.round(np.asarray(values, dtype=np.float64) * 2.0 ** frac).astype(np.int64)
    if bits is None:
        return arithmetic.add_public(x.map_local(tf.zeros_like, frac_bits=frac), values[0])
    steps = enc[:-1] - enc[1:]
    mixed = bits.map_local(lambda t: _dot_leading(steps, t), frac_bits=frac)
    return arithmetic.add_public(mixed, values[-1])


def _dot_leading(vector: np.ndarray, t: tf.Tensor) -> tf.Tensor:
    """sum_k vector[k] t[k] as one int64 MatMul (tf.tensordot(vector, t, 1) with its shapes as
    cached constants; built in `map_local`)."""
    rows = opbuild.reshape(t, runtime.local_const([t.shape[0], -1], tf.int32))
    dot = opbuild.matmul_2d(runtime.local_const(vector[np.newaxis, :], t.dtype), rows)
    return opbuild.reshape(dot, runtime.local_const(t.shape[1:].as_list(), tf.int32))


# Fractional bits of the Newton iterations in reciprocal/rsqrt: m in [1, 2) and y <= 1.1, so
# their products (< 2.2) stay below 2^58 in the ring; 10 bits beyond the format's 18 keep the
# iterations' rounding (a few ulp) far below the result's last place.
NEWTON_FRAC_BITS = 28


def _scale_frac_bits(js: Sequence[int], x_frac: int) -> int:
    """Fractional bits of the public 2^-j: exact for every octave (at least j_max + 1), at
    least the format's; x 2^-j in [1, 2) then sits below 2^(1 + x_frac + bits) <= 2^61."""
    bits = max(arithmetic.fixed_point().frac_bits, max(js) + 1)
    if x_frac + bits + 1 > 61:
        raise ValueError(f"octaves up to 2^{max(js)} at {x_frac} fractional bits leave the ring; "
                         "narrow the range or give the input fewer fractional bits")
    return bits


def _mix_frac_bits(js: Sequence[int]) -> int:
    """Fractional bits of rsqrt's public 2^(-j/2): MIX_FRAC_BITS, or for ranges reaching high
    octaves as many as keep the largest value 2^(-j_min/2) times y (< 2^28.2 in the ring)
    below 2^61, if the smallest, 2^(-j_max/2), then keeps at least 14 significant bits."""
    if max(js) <= 14:
        return MIX_FRAC_BITS
    bits = math.floor(32.8 + min(js) / 2)
    if bits - max(js) / 2 < 14:
        raise ValueError(f"rsqrt over octaves {min(js)}..{max(js)} would keep fewer than 14 "
                         "significant bits; narrow the range")
    return bits


def _newton_start(x: Shared, scale: Shared, slope: float,
                  intercept: float) -> tuple[Shared, Shared]:
    """m = x scale in [1, 2) and the linear first guess intercept + slope m, both with
    NEWTON_FRAC_BITS fractional bits (scale is an exact power of two, so m is x's own digits)."""
    m = arithmetic.mul(x, scale, frac_out=NEWTON_FRAC_BITS)
    guess = arithmetic.mul_public(m, slope, frac_out=NEWTON_FRAC_BITS)
    return m, arithmetic.add_public(guess, intercept)


# The input ranges the graph rewriter uses for a Reciprocal / Rsqrt op found alone (checked by
# `tf-puma convert --calibrate`): outside them the result is silently off.
RECIPROCAL_RANGE = (2.0 ** -7, 2.0 ** 14)
RSQRT_RANGE = (2.0 ** -10, 2.0 ** 14)


def reciprocal(x: Shared, lo: float = RECIPROCAL_RANGE[0], hi: float = RECIPROCAL_RANGE[1],
               iterations: int = 3, frac_out: int | None = None) -> Shared:
    """1 / x for x in [lo, hi] (positive), with `frac_out` fractional bits (default the
    format's; more for a result known small, e.g. softmax's 1/sum in [1/n, 1]).

    x = m 2^j with m in [1, 2) (j from the one-hot octave), 1/m by the linear guess
    24/17 - 8/17 m (relative error <= 1/17) and Newton y <- y (2 - m y) (the error squares
    each step) at NEWTON_FRAC_BITS, then 1/x = (1/m) 2^-j. Relative error <= 2e-6 plus one
    ulp of the output for 3 iterations.
    Cost: 10 + 2 + 2 + 4 iterations + 2 rounds (28 for 3 iterations).
    """
    fxp = arithmetic.fixed_point()
    with tf.name_scope("reciprocal"):
        js, bits = _octave_bits(x, lo, hi)
        scale = _octave_mix(x, bits, [2.0 ** -j for j in js],
                            frac_bits=_scale_frac_bits(js, x.frac_bits))
        m, y = _newton_start(x, scale, -8 / 17, 24 / 17)
        for _ in range(iterations):
            my = arithmetic.mul(m, y, frac_out=NEWTON_FRAC_BITS)
            y = arithmetic.mul(y, arithmetic.public_minus(2.0, my),
                               frac_out=NEWTON_FRAC_BITS)
        return arithmetic.mul(y, scale, frac_out=frac_out or fxp.frac_bits)


def rsqrt(x: Shared, lo: float = RSQRT_RANGE[0], hi: float = RSQRT_RANGE[1],
          iterations: int = 3, frac_out: int | None = None) -> Shared:
    """1 / sqrt(x) for x in [lo, hi] (positive), with `frac_out` fractional bits (default
    the format's).

    x = m 2^j, m in [1, 2): 1/sqrt(m) by the linear guess 1.2759 - 0.2929 m (error < 3%) and
    Newton y <- y (3 - m y^2) / 2 at NEWTON_FRAC_BITS, then times the public mix
    sum_j e_j 2^(-j/2), encoded with MIX_FRAC_BITS (2^(-j/2) is irrational for odd j: at the
    format's 18 bits 2^-7.5 alone would be 4e-4 off, relatively).
    Relative error <= 2e-6 plus one ulp of the output for 3 iterations.
    Cost: 10 + 2 + 2 + 6 per iteration + 2.
    """
    fxp = arithmetic.fixed_point()
    with tf.name_scope("rsqrt"):
        js, bits = _octave_bits(x, lo, hi)
        scale = _octave_mix(x, bits, [2.0 ** -j for j in js],
                            frac_bits=_scale_frac_bits(js, x.frac_bits))
        m, y = _newton_start(x, scale, -0.2929, 1.2759)
        for _ in range(iterations):
            t = arithmetic.mul(m, arithmetic.mul(y, y, frac_out=NEWTON_FRAC_BITS),
                               frac_out=NEWTON_FRAC_BITS)
            three_minus = arithmetic.public_minus(3.0, t)
            # y (3 - t) / 2: the halving rides on the product's truncation
            y = arithmetic.mul(y, three_minus, shift=1, frac_out=NEWTON_FRAC_BITS)
        mix = _octave_mix(x, bits, [2.0 ** (-j / 2) for j in js], frac_bits=_mix_frac_bits(js))
        return arithmetic.mul(y, mix, frac_out=frac_out or fxp.frac_bits)


runtime.exclude_from_autograph(globals())
