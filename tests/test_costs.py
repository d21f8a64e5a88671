"""Costs are declared once, next to each protocol (`costs.protocol(name, rounds=...)`); this
test holds every declaration to the depth the protocol actually builds, so the cost report, the
docstrings and the README cannot drift from the graphs."""

from __future__ import annotations

import pytest
import tensorflow as tf

import tf_puma
from tf_puma import config, costs
from tf_puma.protocols import approx, arithmetic, boolean, compare


def _square(s):
    return s.map_local(lambda t: tf.reshape(t, [4, 4]))


# case -> (inputs from the shared x, y; the protocol call on those inputs); a case named
# "protocol/variant" declares under protocol
CASES = {
    "less/coarse": (lambda x, y: (x, y), lambda x, y: compare.less(x, y, compare.coarse(18))),
    "msb/window": (lambda x, y: (x,), lambda x: boolean.msb(x, 3, 17)),
    "mul": (lambda x, y: (x, y), lambda x, y: x * y),
    "matmul": (lambda x, y: (_square(x), _square(y)), lambda x, y: x @ y),
    "trunc": (lambda x, y: (x,), lambda x: arithmetic.trunc(x, 3)),
    "mul_public": (lambda x, y: (x,), lambda x: arithmetic.mul_public(x, 0.3)),
    "less": (lambda x, y: (x, y), compare.less),
    "select": (lambda x, y: (compare.less(x, y), x, y), compare.select),
    "msb": (lambda x, y: (x,), boolean.msb),
    "a2b": (lambda x, y: (x,), boolean.a2b),
    "b2a": (lambda x, y: (boolean.msb(x),), boolean.b2a),
    "and": (lambda x, y: (boolean.msb(x), boolean.msb(y)), boolean.and_),
    "gelu": (lambda x, y: (x,), approx.gelu),
    "gelu/puma": (lambda x, y: (x,), lambda x: approx.gelu(x, method="puma")),
    "silu": (lambda x, y: (x,), approx.silu),
    "silu/puma": (lambda x, y: (x,), lambda x: approx.silu(x, method="puma")),
}


@pytest.mark.parametrize("trunc_rounds", config.TRUNC_ROUNDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_declared_rounds_equal_the_depth_built(name, trunc_rounds):
    prepare, call = CASES[name]
    seen = {}

    @tf.function
    def run(a, b):
        inputs = prepare(tf_puma.share(a), tf_puma.share(b))
        with costs.Ledger() as ledger:
            out = call(*inputs)
        seen["declared"] = {n: r.rounds for n, r in ledger.ops.items() if n != "prss_setup"}
        seen["built"] = out.depth - max(i.depth for i in inputs)
        return tf.constant(0)

    with config.use(config.Config(trunc_rounds=trunc_rounds)):
        run.get_concrete_function(tf.TensorSpec([16], tf.float64),
                                  tf.TensorSpec([16], tf.float64))
    assert seen["declared"] == {name.split("/")[0]: seen["built"]}
