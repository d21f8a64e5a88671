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


# "auto" from 16 elements takes 3 rounds for these 16-element values, from 17 it takes 2
SETTINGS = {"2": config.Config(trunc_rounds=2), "3": config.Config(trunc_rounds=3),
            "auto-3": config.Config(trunc_rounds="auto", three_rounds_from=16),
            "auto-2": config.Config(trunc_rounds="auto", three_rounds_from=17)}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_declared_rounds_equal_the_depth_built(name, setting):
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

    with config.use(SETTINGS[setting]):
        run.get_concrete_function(tf.TensorSpec([16], tf.float64),
                                  tf.TensorSpec([16], tf.float64))
    assert seen["declared"] == {name.split("/")[0]: seen["built"]}


def test_auto_truncation_takes_three_rounds_from_the_threshold():
    """Config(trunc_rounds="auto"): 3 rounds for a value of three_rounds_from elements or
    more, 2 below it and for a shape not known statically; 2 and 3 stay what they say."""
    auto = config.Config()
    assert auto.trunc_rounds == "auto" and auto.three_rounds_from == 1 << 16
    assert [auto.trunc_rounds_for(n) for n in (None, 1, 65535, 65536, 128 * 1536)] == \
        [2, 2, 2, 3, 3]
    assert config.Config(trunc_rounds=2).trunc_rounds_for(10 ** 6) == 2
    assert config.Config(trunc_rounds=3).trunc_rounds_for(1) == 3
    with config.use(auto):
        assert arithmetic.trunc_rounds([1, 128, 384]) == 2  # a dense product's output
        assert arithmetic.trunc_rounds([1, 12, 128, 128]) == 3  # attention's scores
        assert arithmetic.trunc_rounds(tf.TensorShape([None, 384])) == 2
    with pytest.raises(ValueError, match="2, 3 or 'auto'"):
        config.Config(trunc_rounds=4)
    assert [config.parse_trunc_rounds(t) for t in ("2", "3", "auto")] == [2, 3, "auto"]
