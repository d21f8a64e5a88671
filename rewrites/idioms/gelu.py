"""GeLU in the three forms TensorFlow and transformers export -> approx.gelu."""

from __future__ import annotations

from tf_puma.protocols import approx
from tf_puma.rewrites.idioms import Idiom, register
from tf_puma.rewrites.patterns import AnyOf, Const, Op, Var

X = Var("x")
HALF_X = Op("Mul", Const(0.5), X)

# tf.nn.gelu(approximate=False): 0.5 x erfc(-x / sqrt 2)
ERFC = Op("Mul", HALF_X, Op("Erfc", Op("Mul", Op("Neg", X), Const(0.7071067811865476))))
# Keras / transformers' _gelu: 0.5 x (1 + erf(x / sqrt 2))
_ERF = Op("Erf", AnyOf(Op("Mul", X, Const(0.7071067811865476)),
                       Op("RealDiv", X, Const(1.4142135623730951))))
ERF = AnyOf(Op("Mul", HALF_X, Op("AddV2", Const(1.0), _ERF)),
            Op("Mul", X, Op("Mul", Const(0.5), Op("AddV2", Const(1.0), _ERF))))
# tf.nn.gelu(approximate=True) and transformers' gelu_new (GPT-2):
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
_CUBE = AnyOf(Op("Pow", X, Const(3.0)), Op("Mul", X, Op("Mul", X, X)),
              Op("Mul", X, Op("Square", X)))
_TANH = Op("Tanh", Op("Mul", Const(0.7978845608028654, rtol=1e-3),
                      Op("AddV2", X, Op("Mul", Const(0.044715, rtol=1e-3), _CUBE))))
TANH = AnyOf(Op("Mul", HALF_X, Op("AddV2", Const(1.0), _TANH)),
             Op("Mul", X, Op("Mul", Const(0.5), Op("AddV2", Const(1.0), _TANH))))

_HINT = "expected inside a GeLU idiom, 0.5*x*(1+erf(x/sqrt(2))) or 0.5*x*erfc(-x/sqrt(2))"


def build(ctx, bindings):
    return approx.gelu(ctx.shared(ctx.value(bindings["x"])))


GELU = register(Idiom(name="gelu", patterns=(ERFC, ERF, TANH), roots=("Mul",), build=build,
                      hints={"Erf": _HINT, "Erfc": _HINT}))
