"""Rewrite rules: each SECRET node of the frozen graph becomes protocol calls.

`RULES[op_type](ctx, node, args)` returns the node's outputs, where args are the node's data inputs
as values (`rewrites.values`) and `ctx` (a `rewrites.program.BuildContext`) converts values to
shares. Whole idioms (GeLU, LayerNorm, RMSNorm, SiLU, masked Softmax) are declared one per file in `rewrites/idioms/`.

| ops                                                  | protocol                       | rounds |
|------------------------------------------------------|--------------------------------|--------|
| Identity, IdentityN, StopGradient, Reshape, Transpose, ExpandDims, Squeeze, StridedSlice, Slice, Split, SplitV, Pack, Unpack, ConcatV2, Tile, BroadcastTo, Pad, Sum, Neg, GatherV2 (public ids), Cast (float) | the same op on every share | 0 |
| AddV2, Add, BiasAdd, Sub, AddN                       | add / add_public               | 0      |
| Mul, RealDiv by a constant                           | mul_public                     | 0 or 2 |
| Mul, Square, SquaredDifference, Pow (integer)        | mul                            | 2 each |
| MatMul, BatchMatMulV2, Einsum                        | matmul                         | 2      |
| Mean                                                 | local sum, mul_public          | 2      |
| RealDiv by a client value                            | client computes 1/y, shares it | 2      |
| RealDiv by a secret, Reciprocal; Rsqrt; Sqrt         | reciprocal; rsqrt; x rsqrt(x)  | ~28    |
| Softmax                                              | nn.softmax (last axis)         | ~120   |
| Tanh, Sigmoid, Relu, Abs, Maximum/Minimum            | nn.tanh, nn.sigmoid, relu, msb |        |
| ArgMax (constant axis; integer index out)            | compare.argmax_index | 11 log2 n |
| GatherV2 (client ids: embeddings)                    | one-hot matmul mod 2^32, lifted (a weight table; a computed one: Z_2^64, 1) | 8      |
| idioms: GeLU (erf, erfc, tanh forms), LayerNorm      | approx.gelu, nn.layer_norm     |        |
| idioms: RMSNorm, SiLU, Softmax(scores + mask)       | nn.rms_norm, approx.silu, nn.softmax |  |
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, node_def_pb2

from tf_puma.rewrites.graph import ConversionError
from tf_puma.rewrites.values import ClientValue, Value, Weight
from tf_puma import runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.protocols import approx, arithmetic, compare, nn, tensor
from tf_puma.sharing import Shared

Rule = Callable[["BuildContext", node_def_pb2.NodeDef, list[Value]], list[Value]]  # noqa: F821
RULES: dict[str, Rule] = {}


def rule(*op_types: str):
    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = fn
        return fn
    return register


def _attr(node: node_def_pb2.NodeDef, name: str, default=None):
    if name not in node.attr:
        return default
    value = node.attr[name]
    field = value.WhichOneof("value")
    if field == "list":
        return list(value.list.i) or list(value.list.s) or list(value.list.f)
    return getattr(value, field)


# ---- share-wise ops: the op itself, on int64 shares ----------------------------------------
SHARE_WISE = ("Identity", "StopGradient", "Reshape", "Transpose", "ExpandDims", "Squeeze",
              "StridedSlice", "Slice", "Split", "SplitV", "Pack", "Unpack", "ConcatV2", "Tile",
              "BroadcastTo", "Pad", "Sum", "GatherV2")
_FLOAT_TYPES = {tf.float16.as_datatype_enum, tf.bfloat16.as_datatype_enum,
                tf.float32.as_datatype_enum, tf.float64.as_datatype_enum}


def _int64_attrs(node: node_def_pb2.NodeDef) -> dict:
    """The node's attributes with every float type attribute turned into int64."""
    attrs = {}
    for key, value in node.attr.items():
        if value.WhichOneof("value") == "type" and value.type in _FLOAT_TYPES:
            attrs[key] = attr_value_pb2.AttrValue(type=tf.int64.as_datatype_enum)
        elif value.WhichOneof("value") == "list" and value.list.type and any(
                t in _FLOAT_TYPES for t in value.list.type):
            types = [tf.int64.as_datatype_enum if t in _FLOAT_TYPES else t
                     for t in value.list.type]
            attrs[key] = attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(
                type=types))
        else:
            attrs[key] = value
    return attrs


def _create(node: node_def_pb2.NodeDef, inputs: Sequence[tf.Tensor], attrs: dict,
            num_outputs: int) -> list[tf.Tensor]:
    graph = tf.compat.v1.get_default_graph()
    op = graph._create_op_internal(node.op, list(inputs), attrs=attrs,  # noqa: SLF001
                                   name=node.op.lower())
    return list(op.outputs[:num_outputs] if num_outputs else op.outputs)


def replay_on_client(node: node_def_pb2.NodeDef, args: Sequence[Value]) -> list[tf.Tensor]:
    """The original op on plaintext client tensors (CLIENT and PUBLIC nodes)."""
    with tf.device(runtime.CLIENT_DEVICE):
        inputs = [a.tensor if isinstance(a, ClientValue) else tf.constant(a) for a in args]
        return _create(node, inputs, dict(node.attr), 0)


@rule(*SHARE_WISE)
def share_wise(ctx, node, args):
    """Applies the op to each share (shapes, slicing, sums: linear maps commute with sharing)."""
    if node.op == "GatherV2" and isinstance(args[1], ClientValue) and not args[1].public:
        return [_embedding(ctx, node, args)]
    float_inputs = [i for i, ref in enumerate(ctx.data_inputs(node))
                    if ctx.dtype(ref).is_floating or isinstance(args[i], Shared)]
    if not float_inputs:
        raise ConversionError(f"{node.op} {node.name}: no float operand to share")
    shared = ctx.aligned([args[i] for i in float_inputs])
    by_position = dict(zip(float_inputs, shared))
    frac = shared[0].frac_bits
    depth = max(s.depth for s in shared)
    attrs = _int64_attrs(node)
    num_outputs = len(ctx.output_refs(node))
    outs: list[list] = [[None] * NUM_PARTIES for _ in range(num_outputs)]
    for party in range(NUM_PARTIES):
        with tf.device(runtime.device(party)):
            per_slot = []
            for slot in (0, 1):
                inputs = []
                for i, arg in enumerate(args):
                    if i in by_position:
                        inputs.append(by_position[i].pairs[party][slot])
                    else:
                        inputs.append(ctx.public_on(arg, party, node))
                per_slot.append(_create(node, inputs, attrs, num_outputs))
            for k in range(num_outputs):
                outs[k][party] = (per_slot[0][k], per_slot[1][k])
    return [Shared(pairs, frac, depth) for pairs in outs]


def _embedding(ctx, node, args) -> Shared:
    """params[ids] with the client's ids: one-hot rows shared by the client, times the table."""
    params, ids = args[0], args[1].tensor
    axis = int(np.asarray(args[2])) if len(args) > 2 else 0
    if axis != 0 or _attr(node, "batch_dims", 0):
        raise ConversionError(f"GatherV2 {node.name}: secret lookups need axis 0, batch_dims 0")
    table = ctx.shared(params)
    if table.shape.rank != 2:
        raise ConversionError(f"GatherV2 {node.name}: the table must be 2-D, got {table.shape}")
    # A weight table is looked up mod 2^32 (nn.embedding); a computed one through the whole
    # ring, its values unknown here. The limit is checked, never used to choose: the secure
    # graph's form must not depend on the weights' values.
    narrow = isinstance(params, Weight)
    if narrow:
        _check_lookup_range(node, params.name, ctx.program.weights[params.name])
    with tf.device(runtime.CLIENT_DEVICE):
        flat = tf.reshape(ids, [-1])
    rows = nn.embedding(flat, table, narrow=narrow)
    return tensor.reshape(rows, [*ids.shape.as_list(), table.shape[1]])


def _check_lookup_range(node, name: str, table: np.ndarray) -> None:
    """A table looked up mod 2^32 must stay below 2^(30 - frac_bits) (compare.lift_from_32)."""
    limit = 2.0 ** (compare.LIFT_RANGE_LOG2 - arithmetic.fixed_point().frac_bits)
    if not table.size:
        return
    worst = np.unravel_index(np.argmax(np.abs(table)), table.shape)
    if abs(float(table[worst])) >= limit:
        raise ConversionError(
            f"GatherV2 {node.name}: the embedding table {name!r} holds {float(table[worst]):.6g} "
            f"at index {list(map(int, worst))}; a secret lookup takes tables with |value| < "
            f"{limit:g} at {arithmetic.fixed_point().frac_bits} fractional bits: convert with "
            "fewer fractional bits (tf_puma.config) or rescale the table")


@rule("IdentityN")
def identity_n(ctx, node, args):
    """Its inputs, unchanged (a custom gradient's wrapper; no op is emitted)."""
    return list(args)


@rule("Cast")
def cast(ctx, node, args):
    if not (tf.as_dtype(_attr(node, "SrcT")).is_floating
            and tf.as_dtype(_attr(node, "DstT")).is_floating):
        raise ConversionError(f"Cast {node.name}: only float-to-float casts of secret values "
                              f"are supported, got {tf.as_dtype(_attr(node, 'SrcT')).name} -> "
                              f"{tf.as_dtype(_attr(node, 'DstT')).name}")
    return [ctx.shared(args[0])]


# ---- linear ----------------------------------------------------------------------------------
def _add(ctx, node, a: Value, b: Value) -> Shared:
    out_shape = ctx.output_shape(node)
    for x, c in ((a, b), (b, a)):
        if isinstance(c, (np.ndarray, np.generic)):  # a numpy scalar too (see _mul)
            return arithmetic.add_public(ctx.broadcast(ctx.shared(x), out_shape), np.asarray(c))
    for x, c in ((a, b), (b, a)):
        if _is_public_client(c) and not isinstance(x, ClientValue):  # e.g. an attention mask
            ring, frac = ctx.public_ring(c, (0, 2))
            return arithmetic.add_public_tensor(ctx.broadcast(ctx.shared(x), out_shape), ring,
                                                frac)
    return ctx.broadcast(arithmetic.add(*ctx.aligned([a, b])), out_shape)


def _is_public_client(v: Value) -> bool:
    """A client value the parties may see (positions, masks, rotary tables: --public-input)."""
    return isinstance(v, ClientValue) and v.public


def _negated(ctx, v: Value) -> Value:
    if isinstance(v, np.ndarray):
        return -v
    if _is_public_client(v):
        return ctx.public_negated(v)
    return arithmetic.neg(ctx.shared(v))


@rule("AddV2", "Add", "BiasAdd")
def add(ctx, node, args):
    return [_add(ctx, node, args[0], args[1])]


@rule("Sub")
def sub(ctx, node, args):
    return [_add(ctx, node, args[0], _negated(ctx, args[1]))]


@rule("Neg")
def neg(ctx, node, args):
    return [arithmetic.neg(ctx.shared(args[0]))]


@rule("AddN")
def add_n(ctx, node, args):
    out = args[0]
    for a in args[1:]:
        out = _add(ctx, node, out, a)
    return [ctx.shared(out)]


# ---- products --------------------------------------------------------------------------------
def _mul(ctx, node, a: Value, b: Value) -> Shared:
    # A constant may arrive as a numpy scalar (1 / c or -c of a 0-d array): taken for a value
    # to share, it made a share product with the constant broadcast to the output's shape.
    for x, c in ((a, b), (b, a)):
        if isinstance(c, (np.ndarray, np.generic)):
            return ctx.broadcast(arithmetic.mul_public(ctx.shared(x), np.asarray(c)),
                                 ctx.output_shape(node))
    for x, c in ((a, b), (b, a)):
        if _is_public_client(c) and not isinstance(x, ClientValue):  # e.g. rotary cos / sin
            ring, frac = ctx.public_ring(c, range(NUM_PARTIES))
            return arithmetic.mul_public_tensor(
                ctx.broadcast(ctx.shared(x), ctx.output_shape(node)), ring, frac)
    return arithmetic.mul(ctx.shared(a), ctx.shared(b))


@rule("Mul")
def mul(ctx, node, args):
    return [_mul(ctx, node, args[0], args[1])]


@rule("Square")
def square(ctx, node, args):
    x = ctx.shared(args[0])
    return [arithmetic.mul(x, x)]


@rule("SquaredDifference")
def squared_difference(ctx, node, args):
    d = _add(ctx, node, args[0], _negated(ctx, args[1]))
    return [arithmetic.mul(d, d)]


@rule("Pow")
def pow_(ctx, node, args):
    exponent = args[1]
    if not isinstance(exponent, np.ndarray) or exponent.size != 1:
        raise ConversionError(f"Pow {node.name}: the exponent must be a constant scalar")
    e = float(exponent)
    x = ctx.shared(args[0])
    if e == 0.5:
        return [arithmetic.mul(x, approx.rsqrt(x))]
    if e == -0.5:
        return [approx.rsqrt(x)]
    if e == -1:
        return [approx.reciprocal(x)]
    if e != round(e) or not 1 <= e <= 8:
        raise ConversionError(f"Pow {node.name}: exponent {e} is not supported (integers 1..8, "
                              "0.5, -0.5, -1)")
    powers = approx.powers(x, [int(e)])
    return [powers[int(e)]]


@rule("RealDiv", "Div")
def real_div(ctx, node, args):
    a, b = args
    if isinstance(b, np.ndarray):
        return [_mul(ctx, node, a, 1.0 / b.astype(np.float64))]
    if isinstance(b, ClientValue):
        with tf.device(runtime.CLIENT_DEVICE):
            inverse = ClientValue(tf.math.reciprocal(b.tensor), b.public)
        return [_mul(ctx, node, a, inverse)]
    return [_mul(ctx, node, a, approx.reciprocal(ctx.shared(b)))]


@rule("Reciprocal", "Inv")
def reciprocal(ctx, node, args):
    return [approx.reciprocal(ctx.shared(args[0]))]


@rule("Rsqrt")
def rsqrt(ctx, node, args):
    return [approx.rsqrt(ctx.shared(args[0]))]


@rule("Sqrt")
def sqrt(ctx, node, args):
    x = ctx.shared(args[0])
    return [arithmetic.mul(x, approx.rsqrt(x))]


def _matmul(a: Shared, b: Shared, adj_a: bool, adj_b: bool) -> Shared:
    """matmul with TF's batch broadcasting; [..., M, K] @ [K, N] runs as one 2-D product."""
    ra, rb = a.shape.rank, b.shape.rank
    if ra > 2 and rb == 2 and not adj_a:
        lead = a.shape.as_list()[:-1]
        flat = tensor.reshape(a, [-1, a.shape[-1]])
        out = arithmetic.matmul(flat, b, transpose_b=adj_b)
        return tensor.reshape(out, [*lead, out.shape[-1]])
    if ra != rb:
        batch = tf.broadcast_static_shape(a.shape[:-2], b.shape[:-2]).as_list()
        a = tensor.broadcast_to(a, [*batch, *a.shape.as_list()[-2:]])
        b = tensor.broadcast_to(b, [*batch, *b.shape.as_list()[-2:]])
    return arithmetic.matmul(a, b, transpose_a=adj_a, transpose_b=adj_b)


@rule("MatMul")
def matmul(ctx, node, args):
    return [_matmul(ctx.shared(args[0]), ctx.shared(args[1]), bool(_attr(node, "transpose_a")),
                    bool(_attr(node, "transpose_b")))]


@rule("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul")
def batch_matmul(ctx, node, args):
    return [_matmul(ctx.shared(args[0]), ctx.shared(args[1]), bool(_attr(node, "adj_x")),
                    bool(_attr(node, "adj_y")))]


@rule("Einsum")
def einsum(ctx, node, args):
    """Two-operand einsum without ellipsis as one batched matmul: a -> [B, M, K],
    b -> [B, K, N] by transposes and reshapes (local), product, then back to the output."""
    equation = _attr(node, "equation").decode()
    if len(args) != 2 or "..." in equation or "->" not in equation:
        raise ConversionError(f"Einsum {node.name}: only explicit two-operand equations "
                              f"without '...' are supported, got {equation!r}")
    lhs, out = equation.replace(" ", "").split("->")
    sa, sb = lhs.split(",")
    a, b = ctx.shared(args[0]), ctx.shared(args[1])
    # letters in one operand only and not in the output are summed first (local)
    for which, (spec, other) in enumerate(((sa, sb), (sb, sa))):
        drop = [i for i, ch in enumerate(spec) if ch not in other and ch not in out]
        if drop:
            x = a if which == 0 else b
            x = tensor.reduce_sum(x, axis=drop) if len(drop) > 1 else tensor.reduce_sum(
                x, axis=drop[0])
            spec = "".join(ch for i, ch in enumerate(spec) if i not in drop)
            if which == 0:
                a, sa = x, spec
            else:
                b, sb = x, spec
    if any(spec.count(ch) > 1 for spec in (sa, sb, out) for ch in spec):
        raise ConversionError(f"Einsum {node.name}: repeated indices are not supported")
    batch = [ch for ch in sa if ch in sb and ch in out]
    contract = [ch for ch in sa if ch in sb and ch not in out]
    free_a = [ch for ch in sa if ch not in sb]
    free_b = [ch for ch in sb if ch not in sa]
    dims = {**dict(zip(sa, a.shape.as_list())), **dict(zip(sb, b.shape.as_list()))}
    size = lambda chars: int(np.prod([dims[c] for c in chars], dtype=np.int64))  # noqa: E731
    a3 = tensor.reshape(tensor.transpose(a, [sa.index(c) for c in batch + free_a + contract]),
                        [size(batch), size(free_a), size(contract)])
    b3 = tensor.reshape(tensor.transpose(b, [sb.index(c) for c in batch + contract + free_b]),
                        [size(batch), size(contract), size(free_b)])
    product = arithmetic.matmul(a3, b3)
    natural = batch + free_a + free_b
    y = tensor.reshape(product, [dims[c] for c in natural])
    return [tensor.transpose(y, [natural.index(c) for c in out])]


@rule("Mean")
def mean(ctx, node, args):
    x = ctx.shared(args[0])
    axes = np.atleast_1d(np.asarray(args[1])).astype(int) % x.shape.rank
    n = int(np.prod([x.shape[a] for a in axes]))
    keep = bool(_attr(node, "keep_dims"))
    total = x.map_local(lambda t: tf.reduce_sum(t, axis=axes.tolist(), keepdims=keep))
    return [arithmetic.mul_public(total, 1.0 / n)]


def batch_norm_channel_axis(node: node_def_pb2.NodeDef, rank: int) -> int:
    """The channel axis of a FusedBatchNorm* node: 1 for NCHW/NCDHW, else the last."""
    data_format = _attr(node, "data_format", b"NHWC")
    data_format = data_format.decode() if isinstance(data_format, bytes) else data_format
    return 1 if data_format.startswith("NC") else rank - 1


@rule("FusedBatchNormV3", "FusedBatchNormV2", "FusedBatchNorm")
def fused_batch_norm(ctx, node, args):
    """Training-mode batch norm, as Keras' LayerNormalization emits it when its epsilon is at
    least 1.001e-5 (Keras' default is 1e-3): x reshaped to [1, rows, features, 1] in NCHW, each
    channel (row) normalised over the other axes with its own mean and biased variance, then
    times scale plus offset (ones and zeros: Keras applies gamma and beta after). That is
    nn.layer_norm with the channel axis moved first and the rest flattened (cost: LayerNorm's).
    Only output y may be used; inference mode (stored mean and variance) is refused."""
    if not _attr(node, "is_training", True):
        raise ConversionError(f"{node.op} {node.name}: batch norm in inference mode (stored "
                              "mean and variance) is not supported; only the training-mode form "
                              "Keras' LayerNormalization uses")
    used = {ref for other in ctx.graph.nodes.values() for ref in other.input}
    extra = [k for k in range(1, len(ctx.output_refs(node))) if f"{node.name}:{k}" in used]
    if extra:
        raise ConversionError(f"{node.op} {node.name}: only its normalised output can be made "
                              f"secure; outputs {extra} (batch statistics) are used")
    x = ctx.shared(args[0])
    shape = x.shape.as_list()
    channel = batch_norm_channel_axis(node, len(shape))
    perm = [channel] + [a for a in range(len(shape)) if a != channel]
    moved = [shape[a] for a in perm]
    rows = tensor.reshape(tensor.transpose(x, perm), [moved[0], int(np.prod(moved[1:]))])
    y = nn.layer_norm(rows, eps=float(_attr(node, "epsilon", 1e-4)))
    scale, offset = args[1], args[2]
    def per_row(v: Value) -> Shared:  # a weight's [C] as [C, n], aligned with y
        return ctx.broadcast(tensor.reshape(ctx.shared(v), [-1, 1]), y.shape.as_list())

    if isinstance(scale, np.ndarray):
        if not np.all(scale == 1):
            y = arithmetic.mul_public(y, np.broadcast_to(scale.reshape(-1, 1),
                                                         y.shape.as_list()))
    else:
        y = arithmetic.mul(y, per_row(scale))
    if isinstance(offset, np.ndarray):
        if not np.all(offset == 0):
            y = arithmetic.add_public(y, np.broadcast_to(offset.reshape(-1, 1),
                                                         y.shape.as_list()))
    else:
        y = arithmetic.add(y, per_row(offset))
    back = tensor.transpose(tensor.reshape(y, moved), [perm.index(a) for a in range(len(shape))])
    return [back] + [None] * (len(ctx.output_refs(node)) - 1)


# ---- non-linear ------------------------------------------------------------------------------
@rule("Softmax")
def softmax(ctx, node, args):
    return [nn.softmax(ctx.shared(args[0]))]


@rule("Tanh")
def tanh(ctx, node, args):
    return [nn.tanh(ctx.shared(args[0]))]


@rule("Sigmoid")
def sigmoid(ctx, node, args):
    return [nn.sigmoid(ctx.shared(args[0]))]


@rule("Relu")
def relu(ctx, node, args):
    return [compare.relu(ctx.shared(args[0]))]


@rule("Abs")
def abs_(ctx, node, args):
    """|x| = x - 2 x [x < 0] (one comparison, one product)."""
    x = ctx.shared(args[0])
    return [arithmetic.sub(x, arithmetic.mul_public(arithmetic.mul(compare.is_negative(x), x), 2))]


@rule("Maximum", "Minimum")
def maximum(ctx, node, args):
    """max(x, c) = relu(x - c) + c; min(x, c) = c - relu(c - x); two secrets: compare."""
    a, b = args
    if isinstance(a, np.ndarray):
        a, b = b, a
    x = ctx.broadcast(ctx.shared(a), ctx.output_shape(node))
    if isinstance(b, np.ndarray):
        if node.op == "Maximum":
            return [arithmetic.add_public(compare.relu(arithmetic.add_public(x, -b)), b)]
        return [arithmetic.add_public(arithmetic.neg(compare.relu(
            arithmetic.add_public(arithmetic.neg(x), b))), b)]
    y = ctx.broadcast(ctx.shared(b), ctx.output_shape(node))
    if node.op == "Maximum":
        return [compare.maximum(x, y)]
    return [arithmetic.neg(compare.maximum(arithmetic.neg(x), arithmetic.neg(y)))]


@rule("ArgMax")
def arg_max(ctx, node, args):
    """The position of the max as an integer share (revealed, it is the index tf.argmax gives;
    greedy decoding's next token). Axis: a constant."""
    axis = args[1]
    if not isinstance(axis, np.ndarray) or axis.size != 1:
        raise ConversionError(f"ArgMax {node.name}: the axis must be a constant")
    return [compare.argmax_index(ctx.shared(args[0]), axis=int(axis))]


runtime.exclude_from_autograph(globals())
