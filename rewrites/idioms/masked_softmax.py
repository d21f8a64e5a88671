"""Softmax over scores plus an additive attention mask -> nn.softmax with the mask clamped.

transformers' decoders (Mistral/LLaMA, and their attention_mask inputs) mask with the dtype's
minimum (-3.4e38), far outside fixed point (|x| < 2^44 at 18 fractional bits): added as is, it
would wrap around the ring. Softmax only needs masked entries far enough below the row's maximum
that their exponential is 0: a mask value m becomes max(m, -MASK_FLOOR) (-2^14; exp's clip
already gives 0 below -14), added locally (a constant mask, or a public one, which P0 and P2
receive once at its own shape, not per layer and head) or by the client before sharing (a mask
computed from the client's secret inputs). Finite masks above the floor (GPT-2's -1e4, ALiBi
biases) are added unchanged. A constant added to every score (stable_softmax's +1e-9) leaves a
softmax unchanged and is dropped. Cost: the softmax's.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_puma import runtime
from tf_puma.protocols import arithmetic, nn
from tf_puma.rewrites import patterns
from tf_puma.rewrites.graph import Kind
from tf_puma.rewrites.idioms import Idiom, register
from tf_puma.rewrites.patterns import AnyOf, Op, Var
from tf_puma.rewrites.values import ClientValue

MASK_FLOOR = 2.0 ** 14

X = Var("x")
_MASKED = AnyOf(Op("AddV2", X, Var("mask")), Op("Add", X, Var("mask")))
PATTERN = Op("Softmax", AnyOf(Op("AddV2", _MASKED, Var("shift")), _MASKED))


def applies(g, b) -> bool:
    """The mask is known to the client (constant, public or client input); a shift, if any, is
    one constant number."""
    if g.kind(b["mask"]) == Kind.SECRET or g.kind(b["mask"]) == Kind.WEIGHT:
        return False
    if "shift" in b:
        shift = patterns.const_value(g, b["shift"])
        return shift is not None and shift.size == 1
    return True


def clamped_mask(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(mask, np.float64), -MASK_FLOOR)


def build(ctx, b):
    shape = ctx.graph.static_shape(b["$nodes"][1] + ":0")  # the masked scores' shape
    x = ctx.broadcast(ctx.shared(ctx.value(b["x"])), shape)
    mask = ctx.value(b["mask"])
    if isinstance(mask, ClientValue) and mask.public:
        # sent once (for all layers) at its own shape, not broadcast over the heads; added to
        # share x_0 only
        ring, frac = ctx.public_ring(mask, (0, 2), floor=-MASK_FLOOR)
        scores = arithmetic.add_public_tensor(x, ring, frac)
    elif isinstance(mask, ClientValue):
        with tf.device(runtime.CLIENT_DEVICE):
            floored = tf.maximum(mask.tensor, tf.cast(-MASK_FLOOR, mask.tensor.dtype))
            floored = tf.broadcast_to(floored, shape)
        scores = arithmetic.add(*ctx.aligned([x, ClientValue(floored)]))
    else:
        scores = arithmetic.add_public(x, np.broadcast_to(clamped_mask(mask), shape))
    return nn.softmax(scores)


MASKED_SOFTMAX = register(Idiom(name="masked_softmax", patterns=(PATTERN,), roots=("Softmax",),
                                build=build, applies=applies))
