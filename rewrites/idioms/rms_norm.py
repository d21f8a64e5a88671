"""RMSNorm (LLaMA, Mistral, T5) -> nn.rms_norm over the last axis.

transformers' TF Mistral: gamma * (x / sqrt(mean(x^2) + eps)); T5 and others multiply by
rsqrt(mean(x^2) + eps) instead. One rsqrt instead of a square root and a reciprocal.
"""

from __future__ import annotations

import numpy as np

from tf_puma.protocols import nn
from tf_puma.rewrites import patterns
from tf_puma.rewrites.graph import Kind, node_of
from tf_puma.rewrites.idioms import Domain, Idiom, register
from tf_puma.rewrites.patterns import AnyOf, Op, Var

X = Var("x")
_MEAN_SQUARE = Op("AddV2", Op("Mean", AnyOf(Op("Square", X), Op("Mul", X, X)), Var("axes")),
                  Var("eps"))
_NORMED = AnyOf(Op("RealDiv", X, Op("Sqrt", _MEAN_SQUARE)),
                Op("Mul", X, Op("Rsqrt", _MEAN_SQUARE)))
PATTERN = Op("Mul", Var("gamma"), _NORMED)


def applies(g, b) -> bool:
    """Last axis with kept dims, a constant eps, gamma a constant or weight vector."""
    rank = len(g.static_shape(b["x"]))
    axes = patterns.const_value(g, b["axes"])
    mean_nodes = [n for n in b["$nodes"] if g.nodes[n].op == "Mean"]
    return (axes is not None and sorted(np.atleast_1d(axes) % rank) == [rank - 1]
            and bool(g.nodes[node_of(mean_nodes[0])].attr["keep_dims"].b)
            and g.kind(b["eps"]) == Kind.CONST and patterns.const_value(g, b["eps"]) is not None
            and g.kind(b["gamma"]) in (Kind.CONST, Kind.WEIGHT)
            and len(g.static_shape(b["gamma"])) <= 1)


def build(ctx, bindings):
    eps = float(np.asarray(ctx.value(bindings["eps"])).reshape(-1)[0])
    return nn.rms_norm(ctx.shared(ctx.value(bindings["x"])),
                       ctx.shared(ctx.value(bindings["gamma"])), eps=eps)


def _measure(values):
    """The mean square + eps of each row, which nn.rms_norm's rsqrt takes."""
    x = np.asarray(values["x"], np.float64)
    return np.mean(x * x, axis=-1) + nn.effective_eps(float(np.ravel(values["eps"])[0]))


DOMAIN = Domain("RMSNorm mean square + eps", *nn.RMS_NORM_MEAN_SQUARE, _measure)

RMS_NORM = register(Idiom(name="rms_norm", patterns=(PATTERN,), roots=("Mul",), build=build,
                          applies=applies, domain=DOMAIN))
