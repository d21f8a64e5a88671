"""The sharing type: 2-out-of-3 replicated secret sharing over Z_2^64 (ABY3).

A secret x = x_0 + x_1 + x_2 (mod 2^64); party i holds the pair (x_i, x_{i+1}) on its own device,
so any two parties can reconstruct and any single party sees only uniformly random shares.
Values are fixed point with `frac_bits` fractional bits (0 for integers such as one-hot rows).
Operators (+, -, *, @) come with `tf_puma.protocols` (imported by `import tf_puma` on first use).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tf_puma import _ops, config, costs, runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.fixedpoint import FixedPoint

SharePair = tuple[tf.Tensor, tf.Tensor]


class Shared:
    """A secret-shared tensor: `pairs[i] = (x_i, x_{i+1})` on party i's device.

    `depth` is the number of communication rounds on the critical path that produced it (from
    the client's input), so a graph's latency in rounds is the depth of its outputs.
    """

    __array_priority__ = 100  # numpy defers to Shared's operators

    def __init__(self, pairs: Sequence[SharePair], frac_bits: int, depth: int = 0):
        if len(pairs) != NUM_PARTIES or any(len(p) != 2 for p in pairs):
            raise ValueError("a replicated sharing needs a pair of shares for each of 3 parties")
        self.pairs: tuple[SharePair, ...] = tuple((p[0], p[1]) for p in pairs)
        self.frac_bits = frac_bits
        self.depth = depth

    @property
    def shape(self) -> tf.TensorShape:
        return self.pairs[0][0].shape

    def map_local(self, fn, frac_bits: int | None = None) -> "Shared":
        """Applies a linear, share-wise function on every party (no communication)."""
        pairs = []
        for i, (a, b) in enumerate(self.pairs):
            with runtime.on(i):
                pairs.append((fn(a), fn(b)))
        return Shared(pairs, self.frac_bits if frac_bits is None else frac_bits, self.depth)

    def __repr__(self) -> str:
        return f"Shared(shape={self.shape}, frac_bits={self.frac_bits}, depth={self.depth})"
    # +, -, *, @ read like the maths: tf_puma.protocols.arithmetic installs them on import
    # (this module depends on nothing above the runtime).


def share(x: tf.Tensor, fxp: FixedPoint | None = None, frac_bits: int | None = None,
          name: str = "input", ring_bits: int = 64) -> Shared:
    """The client secret-shares its plaintext x (float, or integer with frac_bits=0).

    Steps (client): v = encode(x); draw fresh keys c0, c1; x_0 = F(c0), x_1 = F(c1),
    x_2 = v - x_0 - x_1 (one kernel, in v's buffer: the client never holds x_0 or x_1).
    Messages: (c0, c1) to P0, (c1, x_2) to P1, (x_2, c0) to P2; each party expands the keys
    itself. Cost: 1 round; 2 ring elements per value + 64 bytes, all from the client. A party
    sees two uniform shares (x_2 is masked by the other parties' F(c) values).
    ring_bits=32: x_2 crosses as its low 32 bits (4 bytes a value) and the shares add up to v
    mod 2^32 only: for a product mod 2^32 alone (arithmetic.matmul(..., ring_bits=32), whose
    result depends on its operands' low 32 bits), as the embedding's one-hot rows are.
    """
    if ring_bits not in (32, 64):
        raise ValueError(f"ring_bits must be 32 or 64, got {ring_bits!r}")
    fxp = fxp or config.current().fxp
    runtime.require_graph()
    ops = _ops.load()
    f = fxp.frac_bits if frac_bits is None else frac_bits
    with costs.protocol("share_input", rounds=1), tf.name_scope(f"share_{name}"):
        with tf.device(runtime.CLIENT_DEVICE):
            x = tf.convert_to_tensor(x)
            if not x.shape.is_fully_defined():
                raise ValueError(f"{name}: secure inputs need a static shape, got {x.shape}")
            if x.dtype.is_floating:
                v = FixedPoint(f).encode(x, name=name) if f else tf.cast(tf.round(x), tf.int64)
            elif x.dtype.is_integer:
                v = tf.cast(x, tf.int64)
                if f:
                    v = v * (2 ** f)
            else:
                raise TypeError(f"{name}: cannot secret-share dtype {x.dtype.name}; "
                                "use a float or integer tensor")
            c0, c1 = ops.puma_new_key(), ops.puma_new_key()
            x2 = ops.puma_mask_input(v, c0, c1, stream=0)
        keys_at = {0: (runtime.transfer(c0, runtime.CLIENT, 0),
                       runtime.transfer(c1, runtime.CLIENT, 0)),
                   1: runtime.transfer(c1, runtime.CLIENT, 1),
                   2: runtime.transfer(c0, runtime.CLIENT, 2)}
        x2_at = (runtime.transfer_low32(x2, runtime.CLIENT, [1, 2]) if ring_bits == 32 else
                 {p: runtime.transfer(x2, runtime.CLIENT, p) for p in (1, 2)})

        def expand(party: int, key: tf.Tensor) -> tf.Tensor:
            with tf.device(runtime.device(party)):
                return ops.puma_prg_uniform(key, runtime.shape_on(party, x.shape), stream=0)

        pairs = [(expand(0, keys_at[0][0]), expand(0, keys_at[0][1])),
                 (expand(1, keys_at[1]), x2_at[1]),
                 (x2_at[2], expand(2, keys_at[2]))]
        for a, b in pairs:
            a.set_shape(x.shape)
            b.set_shape(x.shape)
        return Shared(pairs, f, depth=1)


def _open_to_client(x: Shared) -> tf.Tensor:
    """x's ring value on the client: P0 sends x_0 + x_1, P1 sends x_2 (1 round, 2n elements)."""
    with tf.device(runtime.device(0)):
        part0 = x.pairs[0][0] + x.pairs[0][1]
    a = runtime.transfer(part0, 0, runtime.CLIENT)
    b = runtime.transfer(x.pairs[1][1], 1, runtime.CLIENT)
    costs.record_depth(x.depth + 1)
    with tf.device(runtime.CLIENT_DEVICE):
        return a + b


def reveal(x: Shared, dtype: tf.DType = tf.float32, name: str = "output") -> tf.Tensor:
    """Opens x to the client only and decodes it.

    Cost: 1 round, 2 ring elements per value (from P0 and P1).
    """
    with costs.protocol("reveal", rounds=1), tf.name_scope(f"reveal_{name}"):
        v = _open_to_client(x)
        with tf.device(runtime.CLIENT_DEVICE):
            if dtype.is_integer:
                return tf.cast(v // (2 ** x.frac_bits), dtype) if x.frac_bits else tf.cast(v, dtype)
            return FixedPoint(max(x.frac_bits, 1)).decode(v, dtype, frac_bits=x.frac_bits)


def reveal_ring(x: Shared) -> tf.Tensor:
    """Opens x to the client as raw int64 ring elements (tests and debugging)."""
    with costs.protocol("reveal", rounds=1):
        return _open_to_client(x)


runtime.exclude_from_autograph(globals())
