"""Comparison, selection and max on arithmetic shares, through the sign bit.

Refer to: PUMA (arXiv 2307.12533) Section 2 (building blocks) and ABY3 Section 5 (msb, bit
injection). less(x, y) = msb(x - y), exact while |x - y| < 2^63 in ring units.

A comparison may read a window of the ring's bits instead of all 64 (`Window`, `coarse`):
the activations' segment tests, exp's clip and softmax's max do, where a threshold met within
2^-8 is all they need; the window still holds the difference of any two fixed-point values
(|x| <= 2^26 at 18 fractional bits), and the MSB circuit adds 38-bit words (143 bits per party
instead of 244, the same 8 rounds). Everything else compares exactly.

| protocol         | rounds | notes                                 |
|------------------|--------|---------------------------------------|
| less / greater   | 10     | msb (8) + b2a (2); result is a 0/1 integer share |
| less, coarse     | 10     | msb on a 38-bit window (8) + b2a (2); 207 bits, not 308 |
| select           | 1      | y + b (x - y), b an integer share      |
| relu             | 11     | x (1 - msb(x))                         |
| maximum          | 11     | select(less(y, x), x, y)               |
| equal            | 10     | 1 - [x < y] - [x > y], one batched comparison |
| reduce_max       | 11 ceil(log2 n) | pairwise tree along an axis    |
| argmax           | 11 ceil(log2 n) | the same tree, carrying indices (one-hot out) |
| argmax_index     | 11 ceil(log2 n) | the same tree, carrying positions (integer out) |
"""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np
import tensorflow as tf

from tf_puma import costs, opbuild, runtime
from tf_puma.protocols import arithmetic, tensor
from tf_puma.protocols.boolean import WORD_BITS, b2a, msb, msb_rounds
from tf_puma.sharing import Shared

Public = Union[float, int, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Window:
    """The ring bits [low_bit, low_bit + width) a sign test reads.

    Each party keeps w_j = x_j >> low_bit of its shares; the MSB circuit adds them mod
    2^width and returns bit width - 1. The carry c in {0, 1, 2} out of the dropped low bits is
    lost, so the sum is floor(x / 2^low_bit) - c, and [x < 0] comes out
    - exactly for x < 0 and for x >= 2^(low_bit + 1),
    - as 0 or 1 for 0 <= x < 2^(low_bit + 1) (a threshold is met up to that much above it),
    while |x| <= 2^(low_bit + width - 1) - 2^(low_bit + 2) in ring units (further out the
    window wraps and the sign is wrong). The whole word (0, 64) is exact for |x| < 2^63.
    The circuit's cost follows the width (rounds: boolean.msb_rounds); the shift is local.
    """
    low_bit: int = 0
    width: int = WORD_BITS

    def rounds(self) -> int:
        """Rounds of a comparison in this window: msb + b2a (2)."""
        return msb_rounds(self.width) + 2


EXACT = Window()
COARSE_RESOLUTION_LOG2 = -8   # a coarse test meets its threshold within 2^-8


def coarse(frac_bits: int, resolution_log2: int = COARSE_RESOLUTION_LOG2,
           magnitude_log2: int | None = None) -> Window:
    """The window for a sign test of values with `frac_bits` fractional bits that may be off
    by up to 2^resolution_log2 above zero and must hold for |value| < 2^magnitude_log2:
    low_bit = frac_bits + resolution_log2 - 1 (2^(low_bit + 1) ring units are 2^resolution),
    width = magnitude_log2 + frac_bits - low_bit + 2. The magnitude defaults to the difference
    of two values of the fixed-point range, 2 max_abs = 2^(63 - 2f) for the format's f, so a
    coarse test adds no range limit of its own. At 18 fractional bits: (9, 38), 143 bits per
    party in 8 rounds instead of 244."""
    if magnitude_log2 is None:
        magnitude_log2 = 63 - 2 * arithmetic.fixed_point().frac_bits
    low = max(0, frac_bits + resolution_log2 - 1)
    width = magnitude_log2 + frac_bits - low + 2
    if low + width > WORD_BITS:
        return EXACT
    return Window(low, width)


def is_negative(x: Shared, window: Window = EXACT) -> Shared:
    """[x < 0] as an integer (frac_bits 0) share, read in `window` (Window: exact by default).
    10 rounds (9 in a window of 18 to 33 bits; compare.coarse's is 38)."""
    with costs.protocol("less", rounds=window.rounds()):
        return b2a(msb(x, window.low_bit, window.width))


def less(x: Shared, y: Union[Shared, Public], window: Window = EXACT) -> Shared:
    """[x < y] as an integer share (0 or 1)."""
    return is_negative(arithmetic.sub(x, y), window)


def greater(x: Shared, y: Union[Shared, Public], window: Window = EXACT) -> Shared:
    """[x > y] as an integer share (0 or 1)."""
    if isinstance(y, Shared):
        return is_negative(arithmetic.sub(y, x), window)
    return is_negative(arithmetic.public_minus(y, x), window)


def less_than_stacked(x: Shared, thresholds: np.ndarray, window: Window = EXACT) -> Shared:
    """[x < t_k] for public thresholds t_k, stacked on a new leading axis k, as integer shares:
    one batched comparison."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return less(tensor.repeat(x, len(thresholds)), thresholds.reshape([-1] + [1] * x.shape.rank),
                window)


def less_than_each(x: Shared, thresholds: np.ndarray, window: Window = EXACT) -> list[Shared]:
    """less_than_stacked, one share per threshold."""
    return tensor.split_leading(less_than_stacked(x, thresholds, window))


def equal(x: Shared, y: Union[Shared, Public]) -> Shared:
    """[x == y] as an integer share: both strict comparisons in one batched msb."""
    d = arithmetic.sub(x, y)
    lt, gt = tensor.split_leading(is_negative(
        tensor.concat([tensor.repeat(d, 1), tensor.repeat(arithmetic.neg(d), 1)], 0)))
    return arithmetic.public_minus(1, arithmetic.add(lt, gt))


def select(bit: Shared, if_true: Union[Shared, Public], if_false: Union[Shared, Public]) -> Shared:
    """bit ? if_true : if_false for an integer 0/1 share `bit`: if_false + bit (if_true -
    if_false). One exact (untruncated) multiplication: 1 round."""
    if bit.frac_bits != 0:
        raise ValueError("select needs an integer (frac_bits 0) bit share, e.g. from less()")
    if not isinstance(if_true, Shared) and not isinstance(if_false, Shared):
        raise TypeError("select needs at least one shared branch")
    if isinstance(if_true, Shared):
        diff = arithmetic.sub(if_true, if_false)
    else:
        diff = arithmetic.public_minus(if_true, if_false)
    with costs.protocol("select", rounds=1):
        chosen = arithmetic.mul(bit, diff)
    return arithmetic.add(chosen, if_false)


def relu(x: Shared) -> Shared:
    """max(x, 0) = x (1 - [x < 0])."""
    keep = arithmetic.public_minus(1, is_negative(x))
    return arithmetic.mul(keep, x)


def maximum(x: Shared, y: Shared, window: Window = EXACT) -> Shared:
    """Elementwise max(x, y); in a coarse window, at least max(x, y) - 2^(low_bit + 1)."""
    return select(less(y, x, window), x, y)


def reduce_max(x: Shared, axis: int = -1, keepdims: bool = False,
               window: Window = EXACT) -> Shared:
    """Max along an axis by a pairwise tree: ceil(log2 n) levels of one comparison each. In a
    coarse window each level may keep a value up to 2^(low_bit + 1) below the larger, so the
    result is within ceil(log2 n) 2^(low_bit + 1) below the max."""
    axis %= x.shape.rank
    with tf.name_scope("reduce_max"):
        while x.shape[axis] > 1:
            n = x.shape[axis]
            # max(lo, hi) = lo + [lo < hi] (hi - lo), the select's product taking lo as its
            # addend: the halves and both differences come from one op per party
            lo, diff, neg_diff = tensor.halves(x, axis)
            take_hi = is_negative(neg_diff, window)
            with costs.protocol("select", rounds=1):
                best = arithmetic.mul(take_hi, diff, addend=lo)
            if n % 2:
                best = tensor.concat([best, tensor.slice_along(x, axis, n - 1, 1)], axis)
            x = best
        if not keepdims:
            x = x.map_local(lambda t: tf.squeeze(t, axis=axis))
        return x


# lift_from_32: values |y| < 2^LIFT_RANGE_LOG2 ring units come back from shares mod 2^32
LIFT_RANGE_LOG2 = 30
_LIFT_THRESHOLDS = np.asarray([3 * 2.0 ** 30, 7 * 2.0 ** 30])
_LIFT_WINDOW = Window(low_bit=29, width=8)


def lift_from_32(x: Shared) -> Shared:
    """y in Z_2^64 from shares of y mod 2^32 (each in [0, 2^32); arithmetic.matmul with
    ring_bits=32), for |y| < 2^30 ring units.

    y' = y + 2^30 mod 2^32 (added to share 0) lies in [2^29, 3 2^29). The shares read as
    Z_2^64 shares are shares of their integer sum S = y' + 2^32 w, w in {0, 1, 2} (S < 3 2^32),
    and w = 2 - [S < 3 2^30] - [S < 7 2^30]. Every possible S lies at least 1.5 2^30 from both
    thresholds, so the comparison may read bits 29..36 only (a Window exact beyond 2^30 on
    either side, for |S - t| < 2^35): one batched comparison of both thresholds, then
    y = S + 2^32 ([S < 3 2^30] + [S < 7 2^30]) - 2^33 - 2^30, local.
    Cost: msb in an 8-bit window (5 rounds) + b2a (2) on 2n values: 7 rounds.
    """
    with tf.name_scope("lift_from_32"):
        total = arithmetic.map_share0(                      # S, an integer
            Shared(x.pairs, 0, x.depth), lambda t, i: tf.bitwise.bitwise_and(
                opbuild.add(t, runtime.const_on(i, 2 ** 30)), runtime.const_on(i, 2 ** 32 - 1)))
        below = less_than_stacked(total, _LIFT_THRESHOLDS, _LIFT_WINDOW)
        first, second = tensor.split_leading(below)
        lifted = tensor.linear_combination([total, first, second], [1, 2 ** 32, 2 ** 32],
                                           frac_bits=x.frac_bits)
        return arithmetic.add_public(lifted, -(2.0 ** 33 + 2.0 ** 30) / 2.0 ** x.frac_bits)


def _max_tree_carrying(vals: Shared, carried: Shared, axis: int) -> Shared:
    """`carried` (aligned with `vals` along `axis`) at the position of vals' max: a pairwise
    max tree, every selection applied to both. Neighbours are paired (2i with 2i+1, an odd
    last one passed on), so each survivor stands for a run of positions left of the next one's
    and the left one winning a tie gives the first position overall, as tf.argmax. (Pairing the
    halves, i with i + n/2, as reduce_max may, does not: the survivors' runs interleave.)"""
    while vals.shape[axis] > 1:
        m = vals.shape[axis]
        half = m // 2
        lo_v, hi_v = (tensor.every_other(vals, axis, 0, half),
                      tensor.every_other(vals, axis, 1, half))
        lo_c, hi_c = (tensor.every_other(carried, axis, 0, half),
                      tensor.every_other(carried, axis, 1, half))
        take_hi = less(lo_v, hi_v)
        new_v = select(take_hi, hi_v, lo_v)
        new_c = select(take_hi, hi_c, lo_c)
        if m % 2:
            new_v = tensor.concat([new_v, tensor.slice_along(vals, axis, 2 * half, 1)], axis)
            new_c = tensor.concat([new_c, tensor.slice_along(carried, axis, 2 * half, 1)], axis)
        vals, carried = new_v, new_c
    return carried.map_local(lambda t: tf.squeeze(t, axis=axis))


def argmax(x: Shared, axis: int = -1) -> Shared:
    """One-hot integer share of the position of the max along `axis` (first one on ties)."""
    axis %= x.shape.rank
    n = x.shape[axis]
    with tf.name_scope("argmax"):
        shape = [1] * x.shape.rank
        shape[axis] = n
        # index rows: position k holds e_k (as integers), carried through the max tree
        eye = np.eye(n, dtype=np.int64).reshape(shape[:axis] + [n] + shape[axis + 1:] + [n])
        ones = x.map_local(lambda t: tf.zeros_like(t), frac_bits=0)
        idx = arithmetic.add_public(tensor.broadcast_to(
            ones.map_local(lambda t: tf.expand_dims(t, -1)), x.shape.as_list() + [n]), eye)
        return _max_tree_carrying(x.map_local(lambda t: tf.expand_dims(t, -1)), idx, axis)


def argmax_index(x: Shared, axis: int = -1) -> Shared:
    """The position of the max along `axis` as an integer share (the first one on ties, as
    tf.argmax): the max tree carrying each candidate's position (a public integer to start
    with). Unlike `argmax` it carries one number per candidate, not a one-hot row: a
    49,152-token vocabulary costs 16 levels of one comparison and two selections.
    Cost: 11 ceil(log2 n) rounds, ~2n values compared."""
    axis %= x.shape.rank
    n = x.shape[axis]
    with tf.name_scope("argmax_index"):
        shape = [1] * x.shape.rank
        shape[axis] = n
        positions = np.arange(n, dtype=np.int64).reshape(shape)
        idx = arithmetic.add_public(x.map_local(tf.zeros_like, frac_bits=0),
                                    np.broadcast_to(positions, x.shape.as_list()))
        return _max_tree_carrying(x, idx, axis)


runtime.exclude_from_autograph(globals())
