"""Ops created from their OpDef (tf_puma.opbuild) against TensorFlow's own wrappers, and the
per-party constant cache (runtime.local_const) the protocols' local ops use."""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from tf_puma import _ops, opbuild, runtime
from tf_puma.runtime import SENT_TO_ATTR

ops = _ops.load()


def _graph_of(fn, *specs) -> tf.Graph:
    return tf.function(fn, autograph=False).get_concrete_function(*specs).graph


def _node(graph: tf.Graph, op_type: str):
    [op] = [op for op in graph.get_operations() if op.type == op_type]
    return op.node_def


def test_tf_ops_match_their_wrappers_in_values_and_nodes():
    x = np.arange(-6, 6, dtype=np.int64).reshape(3, 4) * (2 ** 61 + 5)  # products wrap
    y = np.arange(12, dtype=np.int64).reshape(3, 4) * (2 ** 62 + 3)
    cases = [  # (fast, wrapper, op type, operands)
        (opbuild.add, tf.add, "AddV2", lambda a, b: (a, b)),
        (opbuild.subtract, tf.subtract, "Sub", lambda a, b: (a, b)),
        (opbuild.negative, tf.negative, "Neg", lambda a, b: (a,)),
        (opbuild.multiply, tf.multiply, "Mul", lambda a, b: (a, b[:1])),  # broadcasts
        (opbuild.reshape, tf.reshape, "Reshape", lambda a, b: (a, tf.constant([2, -1]))),
        (opbuild.transpose, tf.transpose, "Transpose", lambda a, b: (a, tf.constant([1, 0]))),
        (opbuild.broadcast_to, tf.broadcast_to, "BroadcastTo",
         lambda a, b: (a[:1], tf.constant([5, 3, 4]))),
        (opbuild.expand_dims, tf.expand_dims, "ExpandDims", lambda a, b: (a, tf.constant(1))),
        (opbuild.slice, tf.slice, "Slice",
         lambda a, b: (a, tf.constant([1, 0]), tf.constant([-1, 3]))),
        (opbuild.matmul_2d, tf.linalg.matmul, "MatMul", lambda a, b: (a, tf.transpose(b))),
    ]
    spec = tf.TensorSpec([3, 4], tf.int64)
    for fast, wrapper, op_type, operands in cases:
        graphs, values = [], []
        for make in (fast, wrapper):
            fn = tf.function(lambda a, b, make=make: make(*operands(a, b)), autograph=False)
            graphs.append(fn.get_concrete_function(spec, spec).graph)
            values.append(fn(tf.constant(x), tf.constant(y)).numpy())
        np.testing.assert_array_equal(values[0], values[1], err_msg=op_type)
        fast_node, tf_node = _node(graphs[0], op_type), _node(graphs[1], op_type)
        assert dict(fast_node.attr) == dict(tf_node.attr), op_type
        assert fast_node.name == op_type  # in its name scope, as the op's wrapper names it
    # eager calls and non-tensor operands are the wrapper's
    assert opbuild.add(tf.constant(2), 3).numpy() == 5
    graph = _graph_of(lambda a: opbuild.multiply(a, 3), spec)
    assert [op.type for op in graph.get_operations()].count("Mul") == 1


def test_library_ops_match_their_generated_wrappers():
    """A list input (N), a list output sized by a defaulted attr (opener) and a named tuple."""
    raw = tf.load_op_library(_ops.library_path())
    spec, key = tf.TensorSpec([16], tf.int64), tf.TensorSpec([2], tf.int64)

    def finish(make, opener):
        def fn(a, b, extra, k):
            kwargs = {"opener": opener} if opener is not None else {}
            out = make(a, b, [extra], k, stream=7, bits=18, **kwargs)
            return out.msg, out.share_own, list(out.c_msb)
        return fn

    for opener, c_msb in ((None, 0), (0, 0), (1, 1)):
        graphs = [_graph_of(finish(make, opener), spec, spec, spec, key)
                  for make in (ops.puma_trunc_pr_finish_a, raw.puma_trunc_pr_finish_a)]
        nodes = [_node(g, "PumaTruncPrFinishA") for g in graphs]
        assert dict(nodes[0].attr) == dict(nodes[1].attr)
        assert nodes[0].attr["N"].i == 1 and nodes[0].attr["opener"].i == (opener or 0)
        outputs = [g.outputs for g in graphs]
        assert len(outputs[0]) == len(outputs[1]) == 2 + c_msb
    # string and shape attrs (a stateful op with no inputs)
    graphs = [_graph_of(lambda: make(weight="w", shape=[3, None], bundle="b", party=2))
              for make in (ops.puma_load_share, raw.puma_load_share)]
    nodes = [_node(g, "PumaLoadShare") for g in graphs]
    direct = _graph_of(lambda: opbuild.create("PumaLoadShare", weight="w", shape=[3, None],
                                              bundle="b", party=2))  # None would not trace
    assert dict(_node(direct, "PumaLoadShare").attr) == dict(nodes[1].attr)
    assert dict(nodes[0].attr) == dict(nodes[1].attr)
    assert nodes[0].attr["frac_bits"].i == -1  # a default filled in
    # one output: the tensor itself; eager: the generated wrapper
    graph = _graph_of(lambda k: ops.puma_prg_uniform(k, tf.constant([4], tf.int64), stream=3), key)
    assert _node(graph, "PumaPrgUniform").attr["stream"].i == 3
    k = ops.puma_new_key()
    np.testing.assert_array_equal(ops.puma_prg_uniform(k, [4], stream=3).numpy(),
                                  raw.puma_prg_uniform(k, [4], stream=3).numpy())


def test_local_constants_are_cached_per_party_and_free_of_control_dependencies():
    spec = tf.TensorSpec([3], tf.int64)

    def fn(a):
        outs = []
        with tf.control_dependencies([tf.identity(a)]):
            for party in (0, 1, 0):
                with runtime.on(party):
                    outs.append(a * runtime.local_const(5, tf.int64))
                    outs.append(a * runtime.local_const(np.array([1, 2, 3]), tf.int64))
        outs.append(a * runtime.local_const(5, tf.int64))  # outside `on`: not cached
        return outs

    graph = _graph_of(fn, spec)
    consts = [op for op in graph.get_operations() if op.type == "Const"]
    assert len(consts) == 5  # 2 per party (a scalar and an array), 1 uncached
    placed = collections.Counter(op.device for op in consts)
    canonical = [tf.DeviceSpec.from_string(runtime.device(p)).to_string() for p in (0, 1)]
    assert {placed[d] for d in canonical} == {2} and sum(placed.values()) == 5
    assert all(not op.control_inputs for op in consts)
    assert all(SENT_TO_ATTR not in op.node_def.attr for op in consts)
