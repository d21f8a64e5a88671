"""Shape operations on shared tensors: local, applied to both shares on every party."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tf_puma import opbuild, runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.sharing import Shared


def combine(fn, xs: Sequence[Shared]) -> Shared:
    """fn(list of tensors) -> tensor, applied share-wise on each party (all xs at one scale)."""
    frac = {x.frac_bits for x in xs}
    if len(frac) != 1:
        raise ValueError(f"cannot combine shared tensors with different fractional bits {frac}")
    pairs = []
    for i in range(NUM_PARTIES):
        with runtime.on(i):
            pairs.append((fn([x.pairs[i][0] for x in xs]), fn([x.pairs[i][1] for x in xs])))
    return Shared(pairs, frac.pop(), max(x.depth for x in xs))


def linear_combination(terms: Sequence[Shared], coefficients: Sequence[int],
                       frac_bits: int) -> Shared:
    """sum_k c_k x_k for public integers c_k, labelled `frac_bits` fractional bits: local and
    exact (mod 2^64). One PumaLinearCombination per share, one pass over the terms, where a
    multiply and an add per term took 2N - 1 ops; the terms must have one shape."""
    from tf_puma import _ops  # noqa: PLC0415

    if len(terms) != len(coefficients) or not terms:
        raise ValueError(f"{len(terms)} terms and {len(coefficients)} coefficients: give one "
                         "coefficient per term, at least one")
    ring = [((int(c) + 2 ** 63) % 2 ** 64) - 2 ** 63 for c in coefficients]  # as int64
    ops = _ops.load()
    pairs = []
    for i in range(NUM_PARTIES):
        with runtime.on(i):
            pairs.append(tuple(ops.puma_linear_combination([x.pairs[i][side] for x in terms],
                                                           coefficients=ring)
                               for side in (0, 1)))
    return Shared(pairs, frac_bits, max(x.depth for x in terms))


def same_static_shape(xs: Sequence[Shared]) -> bool:
    """All of xs have one fully known shape (what linear_combination needs without
    broadcasting)."""
    shapes = {tuple(x.pairs[0][0].shape.as_list()) if x.pairs[0][0].shape.is_fully_defined()
              else None for x in xs}
    return len(shapes) == 1 and None not in shapes


def stack(xs: Sequence[Shared], axis: int = 0) -> Shared:
    return combine(lambda ts: tf.stack(ts, axis=axis), xs)


def repeat(x: Shared, count: int) -> Shared:
    """count copies of x stacked on a new leading axis (broadcast, never tf.stack([x] * n):
    Grappler's ReplacePackWithTileReshape rewrite breaks that pattern in TF 2.21)."""
    return x.map_local(lambda t: opbuild.broadcast_to(
        opbuild.expand_dims(t, _int32(0)), _int32([count, *t.shape.as_list()])))


def concat(xs: Sequence[Shared], axis: int) -> Shared:
    return combine(lambda ts: tf.concat(ts, axis=axis), xs)


def split_leading(x: Shared) -> list[Shared]:
    """The items of x along its leading axis (slices: see `repeat` on Pack/Unpack rewrites)."""
    return [slice_along(x, 0, i, 1).map_local(lambda t: tf.squeeze(t, 0))
            for i in range(x.shape[0])]


def reshape(x: Shared, shape: Sequence[int]) -> Shared:
    return x.map_local(lambda t: opbuild.reshape(t, _int32(shape)))


def transpose(x: Shared, perm: Sequence[int]) -> Shared:
    return x.map_local(lambda t: opbuild.transpose(t, _int32(perm)))


def broadcast_to(x: Shared, shape: Sequence[int]) -> Shared:
    return x.map_local(lambda t: opbuild.broadcast_to(t, _int32(shape)))


def slice_along(x: Shared, axis: int, begin: int, size: int) -> Shared:
    """x[..., begin:begin+size, ...] along `axis`."""
    rank = x.shape.rank
    axis %= rank
    begins = [0] * rank
    sizes = [-1] * rank
    begins[axis], sizes[axis] = begin, size
    return x.map_local(lambda t: opbuild.slice(t, _int32(begins), _int32(sizes)))


def halves(x: Shared, axis: int) -> tuple[Shared, Shared, Shared]:
    """(lo, hi - lo, lo - hi) for lo = x[..., :h, ...], hi = x[..., h:2h, ...] along `axis`,
    h = floor(size / 2) (an odd last position is left out): one level of a pairwise max tree,
    local, one PumaHalves per party for both shares."""
    from tf_puma import _ops  # noqa: PLC0415

    axis %= x.shape.rank
    ops = _ops.load()
    parts: list[list] = [[], [], []]
    for i in range(NUM_PARTIES):
        with runtime.on(i):
            lo, diff, neg_diff = ops.puma_halves(list(x.pairs[i]), axis=axis)
        for part, out in zip(parts, (lo, diff, neg_diff)):
            part.append(tuple(out))
    return tuple(Shared(pairs, x.frac_bits, x.depth) for pairs in parts)


def every_other(x: Shared, axis: int, begin: int, count: int) -> Shared:
    """x[..., begin:begin+2*count:2, ...] along `axis` (even or odd positions): local."""
    axis %= x.shape.rank
    index = (slice(None),) * axis + (slice(begin, begin + 2 * count, 2),)
    return x.map_local(lambda t: t[index])


def reduce_sum(x: Shared, axis: int, keepdims: bool = False) -> Shared:
    """Sum along an axis: local (shares add)."""
    return x.map_local(lambda t: tf.reduce_sum(t, axis=_int32(axis), keepdims=keepdims))


def scale(x: Shared, factor, frac_bits: int) -> Shared:
    """x times a public integer (or integer array broadcasting with x), labelled with
    `frac_bits` fractional bits: local and exact (int64 wraps as the ring)."""
    return x.map_local(lambda t: opbuild.multiply(t, runtime.local_const(factor, t.dtype)),
                       frac_bits=frac_bits)


def _int32(value) -> tf.Tensor:
    """A shape, axis or index operand (an int or a sequence of them) of a local op built in
    `map_local`: one cached constant per party."""
    value = int(value) if isinstance(value, (int, np.integer)) else [int(v) for v in value]
    return runtime.local_const(value, tf.int32)


runtime.exclude_from_autograph(globals())
