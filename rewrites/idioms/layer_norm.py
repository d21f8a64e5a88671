"""LayerNorm as Keras' LayerNormalization exports it (tf.nn.moments + batch_normalization)
-> nn.layer_norm over the last axis."""

from __future__ import annotations

import numpy as np

from tf_puma.protocols import nn
from tf_puma.rewrites import patterns
from tf_puma.rewrites.graph import Kind, node_of
from tf_puma.rewrites.idioms import Domain, Idiom, register
from tf_puma.rewrites.patterns import Op, Same, Var

# y = x * inv + (beta - mean * inv), inv = rsqrt(mean((x - mean)^2) + eps) * gamma
X = Var("x")
_MEAN = Same("mean", Op("Mean", X, Var("axes")))
_VAR = Op("Mean", Op("SquaredDifference", X, Op("StopGradient", _MEAN)), Var("axes_var"))
_INV = Same("inv", Op("Mul", Op("Rsqrt", Op("AddV2", _VAR, Var("eps"))), Var("gamma")))
PATTERN = Op("AddV2", Op("Mul", X, _INV), Op("Sub", Var("beta"), Op("Mul", _MEAN, _INV)))


def applies(g, b) -> bool:
    """Last axis only, kept dims, constant eps, gamma and beta constants or weights (<= 1-D)."""
    rank = len(g.static_shape(b["x"]))
    for key in ("axes", "axes_var"):
        axes = patterns.const_value(g, b[key])
        if axes is None or sorted(np.atleast_1d(axes) % rank) != [rank - 1]:
            return False
    mean_node = g.nodes[node_of(b["$same:mean"])]
    return (bool(mean_node.attr["keep_dims"].b)
            and all(g.kind(b[k]) in (Kind.CONST, Kind.WEIGHT) for k in ("gamma", "beta"))
            and g.kind(b["eps"]) == Kind.CONST
            and len(g.static_shape(b["gamma"])) <= 1 and len(g.static_shape(b["beta"])) <= 1)


def build(ctx, bindings):
    eps = float(np.asarray(ctx.value(bindings["eps"])).reshape(-1)[0])
    return nn.layer_norm(ctx.shared(ctx.value(bindings["x"])),
                         ctx.shared(ctx.value(bindings["gamma"])),
                         ctx.shared(ctx.value(bindings["beta"])), eps=eps)


def _measure(values):
    """The variance + eps of each row, which nn.layer_norm's rsqrt takes."""
    x = np.asarray(values["x"], np.float64)
    return x.var(axis=-1) + nn.effective_eps(float(np.ravel(values["eps"])[0]))


DOMAIN = Domain("LayerNorm variance + eps", *nn.LAYER_NORM_VARIANCE, _measure)

LAYER_NORM = register(Idiom(name="layer_norm", patterns=(PATTERN,), roots=("AddV2",),
                            build=build, applies=applies, domain=DOMAIN))
