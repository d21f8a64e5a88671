"""Transformer layers on shared values: Softmax, LayerNorm, RMSNorm, Embedding, SiLU.

Refer to: PUMA (arXiv 2307.12533) Section 4.2 (Softmax: max subtraction, clipped exp, one
reciprocal per row), 4.3 (LayerNorm through rsqrt) and 4.4 (Embedding as a one-hot matmul).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tf_puma import runtime, sharing
from tf_puma.protocols import approx, arithmetic, compare, tensor
from tf_puma.sharing import Shared


# Fractional bits of softmax's 1/sum (in [1/n, 1]) and LayerNorm's 1/sqrt(var) (<= 2^5): their
# products with the row (e <= 1; x - mean, whose normalised value is <= sqrt(n)) stay below 2^56
# at 18 + 30 bits, and the inverse keeps 12 more significant bits than at the format's 18.
INVERSE_FRAC_BITS = 30


def softmax(x: Shared, mask: np.ndarray | None = None) -> Shared:
    """Softmax along the last axis; `mask` (public, 0/1, broadcastable) excludes entries.

    Masked entries are lowered by 2^12 before the max and their exponentials zeroed after.
    m = max(x); e = exp(x - m) (clipped below -14); s = sum(e); y = e * (1/s), one reciprocal
    per row broadcast over the row (s in [1, n] since the max contributes e^0 = 1).
    The max tree compares in compare.coarse's window: m may sit up to
    ceil(log2 n) 2^-8 below the max (softmax does not depend on m; exp's argument then reaches
    0.03 above 0 and s up to 1.03 n, which exp and the reciprocal take).
    Cost: 11 ceil(log2 n) (max tree) + 13 (exp) + reciprocal on [1, n] + 2 rounds.
    """
    with tf.name_scope("softmax"):
        n = x.shape[-1]
        if mask is not None:
            mask01 = np.asarray(mask).astype(np.int64)
            x = arithmetic.add_public(x, (mask01 - 1) * 4096.0)
        m = compare.reduce_max(x, axis=-1, keepdims=True, window=compare.coarse(x.frac_bits))
        e = approx.exp(arithmetic.sub(x, m))
        if mask is not None:
            e = tensor.scale(e, mask01, e.frac_bits)
        s = tensor.reduce_sum(e, axis=-1, keepdims=True)
        inv = approx.reciprocal(s, lo=1.0, hi=float(n), frac_out=INVERSE_FRAC_BITS)
        return arithmetic.mul(e, inv)


LAYER_NORM_VARIANCE = (2.0 ** -10, 2.0 ** 14)  # var + eps, the range of LayerNorm's rsqrt


def effective_eps(eps: float) -> float:
    """The eps the norms add: below one ulp (2^-18) it would vanish, so it acts as 2^-18."""
    return max(eps, 2.0 ** -18)


def _normalise(x: Shared, eps: float) -> Shared:
    """(x - mean) / sqrt(var + eps) over the last axis (RMSNorm has its own wide-range path)."""
    n = x.shape[-1]
    mean = arithmetic.mul_public(tensor.reduce_sum(x, -1, keepdims=True), 1.0 / n)
    x = arithmetic.sub(x, mean)
    var = arithmetic.mul_public(tensor.reduce_sum(arithmetic.mul(x, x), -1, keepdims=True),
                                1.0 / n)
    r = approx.rsqrt(arithmetic.add_public(var, eps), *LAYER_NORM_VARIANCE,
                     frac_out=INVERSE_FRAC_BITS)
    return arithmetic.mul(x, r)


def layer_norm(x: Shared, gamma: Shared | None = None, beta: Shared | None = None,
               eps: float = 1e-5) -> Shared:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis (variance in [2^-10,
    2^14] after eps; eps below one ulp acts as 2^-18). Cost: rsqrt + 8 rounds."""
    with tf.name_scope("layer_norm"):
        y = _normalise(x, eps=effective_eps(eps))
        if gamma is not None:
            y = arithmetic.mul(y, gamma)
        return arithmetic.add(y, beta) if beta is not None else y


# RMSNorm over a wide range (LLaMA-family residual streams carry outliers of 2e4 and more,
# SmolLM2's mean squares run from 6e-3 to 9e5): the sum of squares with SUM_FRAC_BITS (fewer
# for rows of 1024 or more: sum_frac_bits), from the squares of x / 2^WIDE_SHIFT once it
# reaches 2^WIDE_THRESHOLD (a square of x itself leaves the ring above |x| = 2^13), and rsqrt
# of the sum over mean squares [2^-10, WIDE_HI].
SUM_FRAC_BITS = 26
WIDE_SHIFT = 6
WIDE_THRESHOLD = 24
WIDE_HI = 2.0 ** 24
RMS_NORM_MEAN_SQUARE = (2.0 ** -10, WIDE_HI)  # mean(x^2) + eps
NORMED_FRAC_BITS = 26  # x / sqrt(sum x^2) is <= 1: 8 more digits than the format's


def sum_frac_bits(n: int) -> int:
    """Fractional bits of the sum of n squares: SUM_FRAC_BITS, fewer for rows so wide that
    the sum's top octave (n WIDE_HI < 2^(j+1)) would leave the ring in rsqrt's normalisation
    (x 2^-j needs frac + j + 2 <= 61 bits): 26 below n = 1024 (SmolLM2's 576), 23 at
    LLaMA-7B's 4096. The sum is at least n 2^-10, so it keeps 25 significant bits or more."""
    top_octave = math.floor(math.log2(n * WIDE_HI))
    bits = min(SUM_FRAC_BITS, 59 - top_octave)
    if bits < arithmetic.fixed_point().frac_bits:
        raise ValueError(f"RMSNorm over rows of {n} values: their sum of squares (up to "
                         f"{n * WIDE_HI:.3g}) would keep fewer fractional bits than the format")
    return bits


def _sum_squares_wide(x: Shared) -> Shared:
    """sum(x^2) over the last axis with sum_frac_bits(n): the direct squares while the sum is
    below 2^24, else the squares of x / 2^6 times 2^12 (both computed, one comparison of the
    scaled sum, one selection). Cost: 2 (trunc) + 2 (squares) + 10 (less) + 1 (select) = 15
    rounds."""
    frac = sum_frac_bits(x.shape[-1])
    direct = tensor.reduce_sum(arithmetic.mul(x, x, frac_out=frac), -1, keepdims=True)
    x_small = arithmetic.trunc(x, WIDE_SHIFT)
    scaled = tensor.reduce_sum(arithmetic.mul(x_small, x_small), -1, keepdims=True)
    fits = compare.less(scaled, 2.0 ** (WIDE_THRESHOLD - 2 * WIDE_SHIFT))
    lift = 4 ** WIDE_SHIFT * 2 ** (frac - scaled.frac_bits)
    rescaled = tensor.scale(scaled, lift, frac)
    return compare.select(fits, direct, rescaled)


def rms_norm(x: Shared, gamma: Shared | None = None, eps: float = 1e-6) -> Shared:
    """x / sqrt(mean(x^2) + eps) * gamma (LLaMA) for mean squares in [2^-10, 2^24] (eps below
    one ulp acts as 2^-18): sqrt(n) x rsqrt(sum(x^2) + n eps), the 1/n folded into gamma
    (off the critical path) instead of truncating the sum. Cost: 15 + rsqrt (34) + 2 + 2
    rounds."""
    with tf.name_scope("rms_norm"):
        n = x.shape[-1]
        total = arithmetic.add_public(_sum_squares_wide(x), n * effective_eps(eps))
        r = approx.rsqrt(total, lo=n * RMS_NORM_MEAN_SQUARE[0], hi=n * RMS_NORM_MEAN_SQUARE[1],
                         frac_out=40)
        y = arithmetic.mul(x, r, frac_out=NORMED_FRAC_BITS)          # |y| <= 1
        scale = (arithmetic.mul_public(gamma, float(np.sqrt(n))) if gamma is not None
                 else float(np.sqrt(n)))
        if isinstance(scale, Shared):
            return arithmetic.mul(y, scale, frac_out=arithmetic.fixed_point().frac_bits)
        return arithmetic.mul_public(y, scale, frac_out=arithmetic.fixed_point().frac_bits)


def embedding(token_ids: tf.Tensor, table: Shared, narrow: bool = True) -> Shared:
    """table[token_ids] with secret ids: the client one-hot encodes its ids and shares the
    one-hot rows (integers; mod 2^32, 4 bytes a value from the client); the lookup is
    one_hot @ table with no truncation (1 round), mod 2^32, then lifted to Z_2^64
    (compare.lift_from_32, 7 rounds): the vocabulary-wide product multiplies 4 byte limbs
    instead of 8 (MiniLM's 128 x 30,522 x 384: 198 -> 110 ms a party).
    Every table value must then lie below 2^(30 - frac_bits) in magnitude (rewrites check
    weights: 4,096 at 18 fractional bits); narrow=False multiplies in Z_2^64 (1 round), for
    tables whose values are not known when the graph is built."""
    vocab = table.shape[0]
    with tf.name_scope("embedding"):
        with tf.device(runtime.CLIENT_DEVICE):
            ids = tf.convert_to_tensor(token_ids)
            # one_hot(-1) is a zero row and would pass for an answer: refuse ids outside
            # [0, vocab) as plaintext TensorFlow's gather does.
            checks = [tf.debugging.assert_less(
                          ids, tf.cast(vocab, ids.dtype),
                          message=f"token id outside the embedding table's {vocab} rows"),
                      tf.debugging.assert_non_negative(
                          ids, message=f"negative token id (the embedding table has rows 0.."
                                       f"{vocab - 1})")]
            with tf.control_dependencies(checks):
                one_hot = tf.one_hot(ids, vocab, dtype=tf.int64)
        one_hot = sharing.share(one_hot, frac_bits=0, name="one_hot",
                                ring_bits=32 if narrow else 64)
        if not narrow:
            return arithmetic.matmul(one_hot, table)
        return compare.lift_from_32(arithmetic.matmul(one_hot, table, ring_bits=32))


def sigmoid(x: Shared) -> Shared:
    """1 / (1 + e^-|x|) for x >= 0, mirrored (1 - s) for x < 0; exp on [-14, 0], reciprocal on
    [1, 2]. Error <= 2e-4."""
    with tf.name_scope("sigmoid"):
        neg = compare.is_negative(x)
        abs_x = arithmetic.sub(x, arithmetic.mul(neg, arithmetic.mul_public(x, 2)))
        s = approx.reciprocal(arithmetic.add_public(approx.exp(arithmetic.neg(abs_x)), 1.0),
                              lo=1.0, hi=2.0)
        return compare.select(neg, arithmetic.public_minus(1.0, s), s)


def silu(x: Shared) -> Shared:
    """SiLU x sigmoid(x) with the sigmoid above: error <= 2e-4 |x| + 1 ulp (approx.silu's
    polynomials cost 11 rounds instead of 55 but err by up to 1.1e-2). Cost: sigmoid + 2."""
    with tf.name_scope("silu"):
        return arithmetic.mul(x, sigmoid(x))


def tanh(x: Shared) -> Shared:
    """tanh(x) = 2 sigmoid(2x) - 1."""
    with tf.name_scope("tanh"):
        return arithmetic.add_public(arithmetic.mul_public(sigmoid(arithmetic.mul_public(x, 2)),
                                                           2), -1.0)


runtime.exclude_from_autograph(globals())
