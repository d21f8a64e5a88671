"""SiLU x * sigmoid(x) (LLaMA's MLP gate) -> nn.silu (x times the secure sigmoid).

Measured on SmolLM2's first 4 layers (8 tokens): logits max error 4.1e-3 with nn.silu against
0.84 with approx.silu's degree-10 polynomial (1.1e-2 per activation, multiplied by the 700-wide
activations that follow), for 19% more rounds.

Keras and transformers emit it as `tf.nn.silu`, which traces to an IdentityN around
x * sigmoid(beta * x) with beta = 1 (a custom gradient over inputs (activation, x, beta)): the
IdentityN's first output is the activation.
"""

from __future__ import annotations

from tf_puma.protocols import nn
from tf_puma.rewrites.idioms import Idiom, register
from tf_puma.rewrites.patterns import AnyOf, Const, Op, Var

X = Var("x")
PRODUCT = Op("Mul", X, Op("Sigmoid", AnyOf(X, Op("Mul", Const(1.0), X))))
WRAPPED = AnyOf(Op("IdentityN", PRODUCT, X, Const(1.0)), Op("IdentityN", PRODUCT, X))


def build(ctx, bindings):
    return nn.silu(ctx.shared(ctx.value(bindings["x"])))


SILU = register(Idiom(name="silu", patterns=(WRAPPED, PRODUCT), roots=("IdentityN", "Mul"),
                      build=build))
