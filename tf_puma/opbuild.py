"""Graph ops created straight from their OpDef, without TensorFlow's Python op wrappers.

A generated wrapper (`tf.raw_ops.X`, a `tf.load_op_library` function, `a + b`) spends ~60% of
an op's creation time in Python type inference and argument checks (`_apply_op_helper`); a
secure graph has ~13k ops for MiniLM and ~130k for a decoder, so tracing was mostly that. Here
the attrs an op's inputs imply (a `type_attr` from the input's dtype, a `number_attr` from a
list's length) are read from the OpDef once per op type, and the op is created with
`Graph._create_op_internal` (what the wrappers end in: name scope, device, control
dependencies, colocation and FuncGraph captures all apply). TensorFlow's C++ side still
validates the node against its OpDef, fills default attrs and infers shapes.

Only tensors are accepted as inputs; anything else (and eager execution) goes through the
generated wrapper, so behaviour is the wrapper's in every case.
"""

from __future__ import annotations

import collections
import types
from typing import Any, Callable, Sequence

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.framework import op_def_registry


class _Signature:
    """What creating one op type needs from its OpDef."""

    def __init__(self, op_type: str) -> None:
        op_def = op_def_registry.get(op_type)
        if op_def is None:
            raise KeyError(f"no op {op_type!r} is registered")
        self.op_type = op_type
        self.inputs = [arg.name for arg in op_def.input_arg]
        # per input: (number_attr, type_attr, type_list_attr), "" where absent
        self.input_attrs = [(arg.number_attr, arg.type_attr, arg.type_list_attr)
                            for arg in op_def.input_arg]
        self.attr_types = {attr.name: attr.type for attr in op_def.attr}
        # per output: the attr holding its length when it is a list, else ""
        self.output_lists = [arg.number_attr or arg.type_list_attr for arg in op_def.output_arg]
        names = [arg.name for arg in op_def.output_arg]
        self.result = (collections.namedtuple(op_type, names) if len(names) > 1 else None)
        self.name = "".join(("_" + c.lower()) if c.isupper() else c for c in op_type).lstrip("_")

    def attrs(self, inputs: Sequence[Any], given: dict) -> dict | None:
        """AttrValues for the node (None: not handled here)."""
        attrs: dict[str, attr_value_pb2.AttrValue] = {}
        for value, (number, type_attr, type_list) in zip(inputs, self.input_attrs):
            if number or type_list:
                if not isinstance(value, (list, tuple)):
                    return None
                if number:
                    attrs[number] = _attr("int", len(value))
                if type_list:
                    attrs[type_list] = attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.
                                                                ListValue(type=[
                                                                    t.dtype.as_datatype_enum
                                                                    for t in value]))
                dtype = value[0].dtype if value else None
            else:
                dtype = value.dtype
            if type_attr and dtype is not None and type_attr not in attrs:
                attrs[type_attr] = _attr("type", dtype)
        for key, value in given.items():
            if value is None:
                continue  # the op's default, as the wrapper takes None
            kind = self.attr_types.get(key)
            if kind not in _SCALAR_KINDS:
                return None
            attrs[key] = _attr(kind, value)
        return attrs

    def outputs(self, op: tf.Operation, attrs: dict):
        """The op's outputs grouped as the generated wrapper returns them."""
        flat, groups = list(op.outputs), []
        for length_attr in self.output_lists:
            if length_attr:
                attr = attrs.get(length_attr)
                n = (attr.i if attr is not None and attr.HasField("i") else
                     len(op.get_attr(length_attr)) if self.attr_types[length_attr] != "int"
                     else op.get_attr(length_attr))
                groups.append(flat[:n])
                flat = flat[n:]
            else:
                groups.append(flat.pop(0))
        if not groups:
            return op
        return self.result(*groups) if self.result is not None else groups[0]


_SCALAR_KINDS = ("int", "bool", "float", "string", "type", "shape")
_ATTR_CACHE: dict[tuple, attr_value_pb2.AttrValue] = {}


def _attr(kind: str, value) -> attr_value_pb2.AttrValue:
    if kind == "shape":
        dims = tf.TensorShape(value)
        value = None if dims.rank is None else tuple(dims.as_list())
    key = (kind, value)
    attr = _ATTR_CACHE.get(key)
    if attr is None:
        if kind == "int":
            attr = attr_value_pb2.AttrValue(i=int(value))
        elif kind == "bool":
            attr = attr_value_pb2.AttrValue(b=bool(value))
        elif kind == "float":
            attr = attr_value_pb2.AttrValue(f=float(value))
        elif kind == "string":
            attr = attr_value_pb2.AttrValue(s=value.encode() if isinstance(value, str) else value)
        elif kind == "shape":
            attr = attr_value_pb2.AttrValue(shape=tf.TensorShape(value).as_proto())
        else:
            attr = attr_value_pb2.AttrValue(type=tf.as_dtype(value).as_datatype_enum)
        _ATTR_CACHE[key] = attr
    return attr


_SIGNATURES: dict[str, _Signature] = {}


def _signature(op_type: str) -> _Signature:
    signature = _SIGNATURES.get(op_type)
    if signature is None:
        signature = _SIGNATURES[op_type] = _Signature(op_type)
    return signature


def _all_tensors(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, tf.Tensor) for v in value)
    return isinstance(value, tf.Tensor)


def create(op_type: str, *inputs, name: str | None = None, **attrs):
    """Creates `op_type` in the current graph from tensors (a list for a list input, all
    positional) and scalar attrs; returns what its generated wrapper would (a tensor, a list
    for a list output, a named tuple for several outputs, the op for none). None when an input
    or attr is not one this path handles (the caller then uses the wrapper)."""
    if tf.executing_eagerly() or not all(_all_tensors(v) for v in inputs):
        return None
    signature = _signature(op_type)
    if len(inputs) != len(signature.inputs):
        return None
    node_attrs = signature.attrs(inputs, attrs)
    if node_attrs is None:
        return None
    flat = [t for v in inputs for t in (v if isinstance(v, (list, tuple)) else (v,))]
    op = tf.compat.v1.get_default_graph()._create_op_internal(  # noqa: SLF001
        op_type, flat, name=name or op_type, attrs=node_attrs)
    return signature.outputs(op, node_attrs)


def fast(wrapper: Callable, op_type: str) -> Callable:
    """`wrapper` (a generated op function) with graph-mode calls through `create`."""
    signature = _signature(op_type)

    def call(*args, name: str | None = None, **attrs):
        if len(args) == len(signature.inputs):
            result = create(op_type, *args, name=name, **attrs)
            if result is not None:
                return result
        return wrapper(*args, name=name, **attrs)

    call.__name__ = call.__qualname__ = wrapper.__name__
    call.__doc__ = wrapper.__doc__
    return call


def fast_module(module: types.ModuleType) -> types.SimpleNamespace:
    """The op functions of a `tf.load_op_library` module (snake_case names) with graph-mode
    calls through `create`; its other attributes as they are."""
    namespace = types.SimpleNamespace(**{k: getattr(module, k) for k in dir(module)
                                         if not k.startswith("__")})
    for op_type in dir(module):
        # an op's raw function (CamelCase) beside its wrapper and the wrapper's eager fallback
        if not op_type[:1].isupper() or op_def_registry.get(op_type) is None:
            continue
        name = _signature(op_type).name
        if not hasattr(module, name + "_eager_fallback"):
            continue  # not an op of this library (typing's Any, List beside TF's ops)
        setattr(namespace, name, fast(getattr(module, name), op_type))
    return namespace


# TensorFlow's own ops that protocols create by the thousand (share-wise arithmetic, shapes),
# with tf.* as the fallback: positional tensors, the op's defaults for every other attr.
add = fast(tf.add, "AddV2")
subtract = fast(tf.subtract, "Sub")
negative = fast(tf.negative, "Neg")
multiply = fast(tf.multiply, "Mul")
reshape = fast(tf.reshape, "Reshape")
transpose = fast(tf.transpose, "Transpose")
broadcast_to = fast(tf.broadcast_to, "BroadcastTo")
expand_dims = fast(tf.expand_dims, "ExpandDims")
slice = fast(tf.slice, "Slice")  # noqa: A001 - tf.slice's name
matmul_2d = fast(tf.linalg.matmul, "MatMul")  # MatMul takes matrices only (no batch axes)
