"""Linear and multiplicative protocols on 2-out-of-3 replicated shares over Z_2^64.

Refer to: ABY3 (Mohassel, Rindal, CCS 2018), Section 3 (arithmetic sharing, multiplication) and
Dalskov, Escudero, Keller, "Secure Evaluation of Quantized Neural Networks" (PETS 2020),
Section 3.2.2 (probabilistic truncation TruncPr), as used by PUMA (arXiv 2307.12533).

Costs (n = number of output values, one ring element = 8 bytes):
| protocol          | rounds | ring elements sent                 |
|-------------------|--------|------------------------------------|
| add/sub/neg/public| 0      | 0                                  |
| mul, matmul (int) | 1      | 3n (each party sends n)            |
| trunc by m bits   | 2      | 5n + (m+1)n/64 (A: 2n, B: 2n, dealer D: n + (m+1)n/64) |
| mul, matmul (fxp) | 2      | 7n + (m+1)n/64 (A: 2n, B: 2n, D: 3n + (m+1)n/64) |
| mul_sum (any #)   | as mul | as one mul                         |
Fixed-point products are truncated in the same two rounds as the multiplication itself: the 3-out-
of-3 product shares feed TruncPr's masked opening directly, so no separate reshare is needed.
TruncPr's result is floor(x / 2^m) + e with e in {0, 1}, so within one unit in the last place of x / 2^m, when
|x| < 2^62; there is no large-error probability, unlike local share truncation.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import tensorflow as tf

from tf_puma import _ops, config, costs, opbuild, runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.fixedpoint import FixedPoint
from tf_puma.protocols import tensor
from tf_puma.sharing import Shared

Public = Union[float, int, np.ndarray]
def fixed_point() -> FixedPoint:
    """The fixed-point format protocols truncate to: the current tf_puma.config.Config's."""
    return config.current().fxp


def trunc_rounds(shape: tf.TensorShape | list | None) -> int:
    """Rounds of a TruncPr, and of a fixed-point product, whose value has `shape`, under the
    current Config: 2, 3 (the low-traffic variant; _trunc_pr), or by size under "auto"
    (Config.trunc_rounds_for)."""
    elements = None if shape is None else tf.TensorShape(shape).num_elements()
    return config.current().trunc_rounds_for(elements)


def _aligned(x: Shared, y: Shared) -> tuple[Shared, Shared]:
    """Brings x and y to the same fractional bits by exact left shifts."""
    if x.frac_bits == y.frac_bits:
        return x, y
    if x.frac_bits < y.frac_bits:
        y, x = _aligned(y, x)
        return x, y
    shift = 2 ** (x.frac_bits - y.frac_bits)
    return x, tensor.scale(y, shift, x.frac_bits)


def _sharewise(x: Shared, y: Shared, fn) -> Shared:
    """z_i = fn(x_i, y_i) for every share, at the larger fractional bits. Local."""
    x, y = _aligned(x, y)
    pairs = []
    for i in range(NUM_PARTIES):
        with tf.device(runtime.device(i)):
            pairs.append((fn(x.pairs[i][0], y.pairs[i][0]), fn(x.pairs[i][1], y.pairs[i][1])))
    return Shared(pairs, x.frac_bits, max(x.depth, y.depth))


def add(x: Shared, y: Union[Shared, Public]) -> Shared:
    """x + y. Local: z_i = x_i + y_i (public y is added to share 0 only)."""
    if not isinstance(y, Shared):
        return add_public(x, y)
    return _sharewise(x, y, opbuild.add)


def neg(x: Shared) -> Shared:
    """-x. Local."""
    return x.map_local(opbuild.negative)


def sub(x: Shared, y: Union[Shared, Public]) -> Shared:
    """x - y. Local: z_i = x_i - y_i (one op per share, no negation)."""
    if not isinstance(y, Shared):
        return add_public(x, -np.asarray(y, dtype=np.float64))
    return _sharewise(x, y, opbuild.subtract)


def public_minus(c: Public, x: Shared) -> Shared:
    """c - x for a public constant c (e.g. 1 - b for a shared bit b). Local: -x, then c added
    to share x_0 (add_public)."""
    return add_public(neg(x), c)


def _encode_public(c: Public, frac_bits: int) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError("public constants must be finite")
    if c.size and float(np.max(np.abs(c))) * 2.0 ** frac_bits >= 2.0 ** 62:
        raise ValueError(f"a public constant ({float(np.max(np.abs(c))):.3g}) lies outside the "
                         f"fixed-point range (|c| < 2^{62 - frac_bits}); a value that large only "
                         "works as an attention mask right before Softmax")
    return np.round(c * 2.0 ** frac_bits).astype(np.int64)


def add_public(x: Shared, c: Public) -> Shared:
    """x + c for a public constant c. Local: share x_0 (held by P0 first and P2 second) += c."""
    enc = _encode_public(c, x.frac_bits)
    return _add_to_share0(x, lambda i: runtime.const_on(i, enc), x.depth)


def _add_to_share0(x: Shared, public_on, depth: int) -> Shared:
    """x with public_on(i) (built on P0 and P2, under their devices) added to share x_0: P0's
    first and P2's second."""
    return map_share0(x, lambda t, i: opbuild.add(t, public_on(i)), depth)


def map_share0(x: Shared, fn, depth: int | None = None) -> Shared:
    """x with share x_0 replaced by fn(x_0, i) on both its holders, P0 (its first share) and
    P2 (its second), built under party i's device: a public constant added (add_public), or a
    share reduced mod 2^32 (compare.lift_from_32). Local."""
    pairs = list(x.pairs)
    with tf.device(runtime.device(0)):
        pairs[0] = (fn(pairs[0][0], 0), pairs[0][1])
    with tf.device(runtime.device(2)):
        pairs[2] = (pairs[2][0], fn(pairs[2][1], 2))
    return Shared(pairs, x.frac_bits, x.depth if depth is None else depth)


def _public_at(c: tf.Tensor, c_frac: int, frac_bits: int) -> tf.Tensor:
    """A public ring tensor with c_frac fractional bits brought to frac_bits >= c_frac by an
    exact local product with 2^(frac_bits - c_frac); built under the caller's device."""
    if frac_bits == c_frac:
        return c
    return opbuild.multiply(c, runtime.local_const(2 ** (frac_bits - c_frac), tf.int64))


def add_public_tensor(x: Shared, c: dict[int, tf.Tensor], c_frac: int) -> Shared:
    """x + c for a public tensor c in the ring with c_frac fractional bits, already on P0 and P2
    (c[0], c[2]) and broadcasting to x's shape. Local, like add_public: share x_0 (P0's first,
    P2's second) += c; no zero shares of c are made. Cost: 0 rounds, 0 bytes."""
    if c_frac > x.frac_bits:
        x = tensor.scale(x, 2 ** (c_frac - x.frac_bits), c_frac)
    return _add_to_share0(x, lambda i: _public_at(c[i], c_frac, x.frac_bits), max(x.depth, 1))


def mul_public_tensor(x: Shared, c: dict[int, tf.Tensor], c_frac: int,
                      fxp: FixedPoint | None = None) -> Shared:
    """x * c for a public tensor c in the ring with c_frac fractional bits, on every party
    (c[i]: all three see it, as --public-input allows) and broadcasting to x's shape: the local
    products x_i c (frac x.frac_bits + c_frac), then TruncPr down to fxp's fractional bits (rescale). Cost: trunc_rounds() rounds and
    TruncPr's ~5.3n ring elements when it truncates (a share product of x with c shared as
    (c, 0, 0) moved ~7.3n and first made c's zero shares on every party), else 0."""
    fxp = fxp or fixed_point()
    frac = x.frac_bits + c_frac
    with costs.protocol("mul_public",
                        rounds=trunc_rounds(x.shape) if frac > fxp.frac_bits else 0):
        pairs = []
        for i in range(NUM_PARTIES):
            with tf.device(runtime.device(i)):
                pairs.append((opbuild.multiply(x.pairs[i][0], c[i]),
                              opbuild.multiply(x.pairs[i][1], c[i])))
        return rescale(Shared(pairs, frac, max(x.depth, 1)), fxp.frac_bits)


def mul_public(x: Shared, c: Public, fxp: FixedPoint | None = None,
               frac_out: int | None = None) -> Shared:
    """x * c for a public constant c: local product, then TruncPr when c is not an integer,
    down to `frac_out` fractional bits (default fxp's; more for values known small).

    Integers (every element of c integral) multiply exactly with no communication; other
    constants are encoded with f + k fractional bits, k = floor(log2(1 / max|c|)) for |c| < 1
    (so 1/384 keeps 18 significant bits, not 9, while |x c| 2^(2f+k) <= |x| 2^2f stays in
    the ring wherever x does), and cost one trunc (2 rounds).
    """
    fxp = fxp or fixed_point()
    c = np.asarray(c, dtype=np.float64)
    integral = np.all(np.round(c) == c) and np.all(np.abs(c) < 2 ** 62)
    frac = 0 if integral else fxp.frac_bits + _extra_coeff_bits(c)
    enc = _encode_public(c, frac)
    shape = tf.broadcast_static_shape(x.shape, tf.TensorShape(c.shape))
    with costs.protocol("mul_public", rounds=0 if integral else trunc_rounds(shape)):
        product = tensor.scale(x, enc, x.frac_bits + frac)
        return rescale(product, fxp.frac_bits if frac_out is None else frac_out)


def _extra_coeff_bits(c: np.ndarray) -> int:
    largest = float(np.max(np.abs(c))) if c.size else 0.0
    return 0 if largest == 0 or largest >= 1 else min(24, math.floor(-math.log2(largest)))


def rescale(x: Shared, frac_bits: int) -> Shared:
    """x with `frac_bits` fractional bits: drops the extra ones with TruncPr (value unchanged
    up to 1 ulp; 2 rounds, ~5.3n ring elements), or returns x when it has no more than that."""
    if x.frac_bits <= frac_bits:
        return x
    with tf.name_scope("rescale"):
        return _trunc_replicated(x, x.frac_bits - frac_bits, frac_bits)


def trunc(x: Shared, bits: int) -> Shared:
    """x / 2^bits (value divided, same fractional bits) by TruncPr: 2 rounds, 5n + (bits+1)n/64 ring elements.

    Exact up to one unit in the last place; x's ring value must stay below 2^62 in magnitude.
    """
    with costs.protocol("trunc", rounds=trunc_rounds(x.shape)), tf.name_scope("trunc"):
        return _trunc_replicated(x, bits, x.frac_bits)


def _trunc_replicated(x: Shared, bits: int, out_frac: int) -> Shared:
    """TruncPr on replicated x: A = party j uses u_A = x_j + x_{j+1}; B = party j+1, u_B = x_{j+2}."""
    stream = runtime.new_stream("trunc_pr")
    a, b, d = _roles()
    with tf.device(runtime.device(a)):
        u_a = x.pairs[a][0] + x.pairs[a][1]
    u_b = x.pairs[b][1]
    return _trunc_pr(u_a, u_b, None, x.pairs[d][0], x.shape, bits, stream, out_frac, x.depth,
                     (a, b, d))


def _roles() -> tuple[int, int, int]:
    """(A, B, dealer) for the next TruncPr call of this graph: rotated call by call so the
    parties share the load (the dealer sends twice what A and B send)."""
    j = runtime.next_turn("trunc_pr")
    return j, (j + 1) % NUM_PARTIES, (j + 2) % NUM_PARTIES


def _trunc_pr(u_a: tf.Tensor, u_b: tf.Tensor, u_dealer: tf.Tensor | None,
              dealer_has_input: tf.Tensor, shape: tf.TensorShape, bits: int, stream: int,
              out_frac: int, depth: int, roles: tuple[int, int, int]) -> Shared:
    """TruncPr of x = u_A + u_B (+ u_D, sent by the dealer to A and B in the first round),
    roles (A, B, D) = (j, j+1, j+2).

    1. D: deal corr = shares of (msb(r), low bits of r / 2^m) to B; r = F(k_j) + F(k_{j+2}).
    2. A, B: exchange m_A = u_A + 2^62 + F(k_j), m_B = u_B + F(k_{j+2}) -> c = x + 2^62 + r.
    3. A, B: local y_A, y_B with y_A + y_B = floor(x / 2^m) + e; exchange y - t -> t_{j+1}.
    Output shares t_j = F(k_j, 3), t_{j+2} = F(k_{j+2}, 3), t_{j+1} as exchanged.
    Cost: 2 rounds; A, B 2n each, D 2n (u_D, or none) + n + (m+1)n/64 (corr).
    With Config.trunc_rounds = 3 only A opens c: B sends m_B and D u_D to A (round 1); A sends
    y_A - t_j and c's msb bits (n/64) to B (round 2), the only part of c that B's y_B uses, a
    uniform bit to B, which does not know F(k_j); B sends y_B - t_{j+2} back (round 3).
    Cost: 3 rounds; A n + n/64, B 2n, D n (u_D, or none) + n + (m+1)n/64: 5.3n for a product
    at m = 18 instead of 7.3n.
    `stream` is this truncation's own (runtime.new_stream("trunc_pr")): its masks must never
    meet the PRG outputs of the product that produced u (a shared stream would let A strip
    F(k_{j+1}, s, 0) off m_B and read B's cross terms).
    The deal needs only keys, so TensorFlow would run every truncation's deal of the graph at
    the call's start and hold all of them (3n per truncation) until used; it waits instead for
    `dealer_has_input`, D's own tensor of x (a share or u_D), so it runs when x exists.
    """
    ops = _ops.load()
    keys = runtime.prss()
    a, b, d = roles
    with tf.device(runtime.device(d)), tf.control_dependencies([dealer_has_input]):
        corr, d_own, d_next = ops.puma_trunc_pr_deal(keys.own[d], keys.next[d],
                                                     runtime.shape_on(d, shape), stream=stream,
                                                     bits=bits)
    with tf.device(runtime.device(a)):
        m_a = ops.puma_trunc_pr_mask(u_a, keys.own[a], stream=stream, add_offset=True)
    with tf.device(runtime.device(b)):
        m_b = ops.puma_trunc_pr_mask(u_b, keys.next[b], stream=stream, add_offset=False)
    extras_a = [] if u_dealer is None else [runtime.transfer(u_dealer, d, a)]
    m_b_at_a = runtime.transfer(m_b, b, a)
    corr_at_b = runtime.transfer(corr, d, b)
    rounds = trunc_rounds(shape)
    if rounds == 3:
        # A alone opens c; B's share needs only c_63, a uniform bit to B (r_A is unknown to it)
        with tf.device(runtime.device(a)):
            msg_a, t_j, (c_msb,) = ops.puma_trunc_pr_finish_a(
                m_a, m_b_at_a, extras_a, keys.own[a], stream=stream, bits=bits, opener=1)
        c_msb_at_b = runtime.transfer(c_msb, a, b)
        with tf.device(runtime.device(b)):
            msg_b, t_j2 = ops.puma_trunc_pr_finish_b_msb(m_b, c_msb_at_b, corr_at_b,
                                                         keys.next[b], stream=stream, bits=bits)
    else:
        extras_b = [] if u_dealer is None else [runtime.transfer(u_dealer, d, b)]
        m_a_at_b = runtime.transfer(m_a, a, b)
        with tf.device(runtime.device(a)):
            msg_a, t_j, _ = ops.puma_trunc_pr_finish_a(m_a, m_b_at_a, extras_a, keys.own[a],
                                                       stream=stream, bits=bits)
        with tf.device(runtime.device(b)):
            msg_b, t_j2 = ops.puma_trunc_pr_finish_b(m_b, m_a_at_b, extras_b, corr_at_b,
                                                     keys.next[b], stream=stream, bits=bits)
    msg_b_at_a = runtime.transfer(msg_b, b, a)
    msg_a_at_b = runtime.transfer(msg_a, a, b)
    with tf.device(runtime.device(a)):
        t_j1_a = opbuild.add(msg_a, msg_b_at_a)
    with tf.device(runtime.device(b)):
        t_j1_b = opbuild.add(msg_a_at_b, msg_b)
    pairs: list = [None] * NUM_PARTIES
    pairs[a] = (t_j, t_j1_a)
    pairs[b] = (t_j1_b, t_j2)
    pairs[d] = (d_own, d_next)
    for p in pairs:
        for t in p:
            t.set_shape(shape)
    return Shared(pairs, out_frac, depth + rounds)


def _reshare(z: list[tf.Tensor], frac_bits: int, depth: int, ring_bits: int = 64) -> Shared:
    """3-out-of-3 shares z_i -> replicated: party i receives z_{i+1} (1 round, n each).
    ring_bits=32: shares mod 2^32 (each in [0, 2^32)) cross as 4-byte words (uint32) and are
    read back into [0, 2^32)."""
    pairs = []
    for i in range(NUM_PARTIES):
        nxt = (i + 1) % NUM_PARTIES
        received = (runtime.transfer_low32(z[nxt], nxt, [i])[i] if ring_bits == 32
                    else runtime.transfer(z[nxt], nxt, i))
        pairs.append((z[i], received))
    return Shared(pairs, frac_bits, depth + 1)


def _product(z: list[tf.Tensor], frac_bits: int, depth: int, fxp: FixedPoint, shift: int = 0,
             frac_out: int | None = None) -> Shared:
    """Finishes a product from 3-out-of-3 shares z_i with `frac_bits` fractional bits: TruncPr
    down to frac_out (default: fxp's, or frac_bits if fewer) while also dividing by 2^shift,
    or a plain reshare when nothing is dropped. The truncation draws from a stream of its own,
    never the product's zero-share stream."""
    out_frac = min(frac_bits, fxp.frac_bits) if frac_out is None else frac_out
    bits = frac_bits - out_frac + shift
    if bits < 0:
        raise ValueError(f"cannot raise a product from {frac_bits} to {out_frac} fractional bits")
    if bits == 0:
        return _reshare(z, frac_bits, depth)
    stream = runtime.new_stream("trunc_pr")
    a, b, d = _roles()
    return _trunc_pr(z[a], z[b], z[d], z[d], z[a].shape, bits, stream, out_frac, depth,
                     (a, b, d))


def _product_cost(x: Shared, y: Shared, fxp: FixedPoint, shape: tf.TensorShape,
                  shift: int = 0, frac_out: int | None = None) -> int:
    """Rounds of a product of `shape`: a TruncPr's, or the reshare's 1 if nothing is dropped."""
    frac = x.frac_bits + y.frac_bits
    out = min(frac, fxp.frac_bits) if frac_out is None else frac_out
    return trunc_rounds(shape) if frac - out + shift > 0 else 1


def mul(x: Shared, y: Union[Shared, Public], fxp: FixedPoint | None = None,
        shift: int = 0, frac_out: int | None = None, addend: Shared | None = None) -> Shared:
    """Elementwise x * y (broadcasting), divided by 2^shift in the same truncation, with
    `frac_out` fractional bits (default fxp's; more keeps precision for values known small).

    z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i + alpha_i   (alpha: PRSS zero share)
    then TruncPr on (z_A, z_B, z_D) for fixed point (2 rounds), else a reshare (1 round).
    `addend` (a shared value with exactly x's + y's fractional bits) is added to the product
    before that truncation at no cost: party i adds its first share to z_i.
    """
    if not isinstance(y, Shared):
        if shift or frac_out is not None or addend is not None:
            raise ValueError("shift, frac_out and addend apply to products of two shared values")
        return mul_public(x, y, fxp)
    return mul_sum([(x, y)], fxp, shift, frac_out, addend)


def mul_sum(products: list[tuple[Shared, Shared]], fxp: FixedPoint | None = None,
            shift: int = 0, frac_out: int | None = None, addend: Shared | None = None) -> Shared:
    """sum_j x_j * y_j (+ addend) with the cost of one product: the 3-out-of-3 shares of every
    product (each with its own PRSS zero share) are summed locally, then truncated or reshared
    once (2 rounds, ~7.3n / 1 round, 3n). Every x_j * y_j must have the same fractional bits."""
    fxp = fxp or fixed_point()
    ops = _ops.load()
    fracs = {x.frac_bits + y.frac_bits for x, y in products}
    if len(fracs) != 1:
        raise ValueError(f"products to sum have different fractional bits {sorted(fracs)}")
    frac = fracs.pop()
    if addend is not None and addend.frac_bits != frac:
        raise ValueError(f"addend has {addend.frac_bits} fractional bits, the product {frac}")
    shape = tf.TensorShape([])
    for x, y in products:
        shape = tf.broadcast_static_shape(shape, tf.broadcast_static_shape(x.shape, y.shape))
    if addend is not None:
        shape = tf.broadcast_static_shape(shape, addend.shape)
    x0, y0 = products[0]
    depth = max([max(x.depth, y.depth) for x, y in products] +
                ([addend.depth] if addend is not None else []))
    name = "mul" if len(products) == 1 else "mul_sum"
    with costs.protocol(name, rounds=_product_cost(x0, y0, fxp, shape, shift, frac_out)), \
            tf.name_scope(name):
        keys = runtime.prss()
        streams = [runtime.new_stream("zero_share") for _ in products]

        def widen(t: tf.Tensor) -> tf.Tensor:
            if t.shape == shape:
                return t
            return opbuild.broadcast_to(t, runtime.local_const(shape.as_list(), tf.int32))

        z = []
        for i in range(NUM_PARTIES):
            with runtime.on(i):
                terms = []
                for (x, y), stream in zip(products, streams):
                    xs, ys = [widen(t) for t in x.pairs[i]], [widen(t) for t in y.pairs[i]]
                    terms.append(ops.puma_mul_share(xs[0], xs[1], ys[0], ys[1], keys.own[i],
                                                    keys.next[i], stream=stream))
                if addend is not None:
                    terms.append(widen(addend.pairs[i][0]))
                z.append(tf.add_n(terms) if len(terms) > 1 else terms[0])
        return _product(z, frac, depth, fxp, shift, frac_out)


def matmul(x: Shared, y: Shared, transpose_a: bool = False, transpose_b: bool = False,
           fxp: FixedPoint | None = None, ring_bits: int = 64) -> Shared:
    """op(x) @ op(y), batched like tf.linalg.matmul (batch dims broadcast).

    z_i = x_i @ (y_i + y_{i+1}) + x_{i+1} @ y_i + alpha_i   (two ring GEMMs per party)
    then TruncPr (2 rounds, 8 ring elements per output) or a reshare for integer operands.
    ring_bits=32 (a product with nothing to truncate only): shares of the product mod 2^32,
    each in [0, 2^32), for compare.lift_from_32 to bring back to Z_2^64; the GEMMs multiply
    4 byte limbs instead of 8.
    """
    if ring_bits not in (32, 64):
        raise ValueError(f"ring_bits must be 32 or 64, got {ring_bits!r}")
    if ring_bits != 64 and x.frac_bits + y.frac_bits > (fxp or fixed_point()).frac_bits:
        raise ValueError("a product mod 2^32 cannot be truncated: give it operands whose "
                         "fractional bits add up to at most the format's")
    fxp = fxp or fixed_point()
    ops = _ops.load()
    x_shape, y_shape = x.shape, y.shape
    if x_shape.rank is None or y_shape.rank is None or x_shape.rank < 2 or y_shape.rank < 2:
        raise ValueError(f"matmul needs operands of rank >= 2, got {x_shape} and {y_shape}")
    x_batch, y_batch = x_shape[:-2], y_shape[:-2]
    if x_shape.rank > 2 and y_shape.rank > 2 and x_batch != y_batch:
        batch = tf.broadcast_static_shape(x_batch, y_batch)
        x = x.map_local(lambda t: tf.broadcast_to(t, batch.concatenate(x_shape[-2:])))
        y = y.map_local(lambda t: tf.broadcast_to(t, batch.concatenate(y_shape[-2:])))
    out_shape = tf.broadcast_static_shape(x_batch, y_batch).concatenate(
        [x_shape[-1] if transpose_a else x_shape[-2], y_shape[-2] if transpose_b else y_shape[-1]])
    with costs.protocol("matmul", rounds=_product_cost(x, y, fxp, out_shape)), \
            tf.name_scope("matmul"):
        keys = runtime.prss()
        stream = runtime.new_stream("zero_share")
        z = []
        for i in range(NUM_PARTIES):
            with tf.device(runtime.device(i)):
                z.append(ops.puma_mat_mul_share(
                    x.pairs[i][0], x.pairs[i][1], y.pairs[i][0], y.pairs[i][1], keys.own[i],
                    keys.next[i], stream=stream, transpose_a=transpose_a,
                    transpose_b=transpose_b, ring_bits=ring_bits))
        if ring_bits == 32:
            return _reshare(z, x.frac_bits + y.frac_bits, max(x.depth, y.depth), ring_bits=32)
        return _product(z, x.frac_bits + y.frac_bits, max(x.depth, y.depth), fxp)


def _install_operators() -> None:
    """Shared's operators, so protocols read like the maths (x * y, x @ w, 1 - x)."""
    Shared.__add__ = Shared.__radd__ = lambda self, other: add(self, other)
    Shared.__sub__ = lambda self, other: sub(self, other)
    Shared.__rsub__ = lambda self, other: (sub(other, self) if isinstance(other, Shared)
                                           else public_minus(other, self))
    Shared.__neg__ = lambda self: neg(self)
    Shared.__mul__ = Shared.__rmul__ = lambda self, other: mul(self, other)
    Shared.__matmul__ = lambda self, other: matmul(self, other)


runtime.exclude_from_autograph(globals())
_install_operators()
