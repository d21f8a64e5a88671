"""The plaintext model as the rewriter sees it: one signature of a SavedModel, frozen, with static
input shapes, its nodes classified by who may compute them.

Kinds (a node's kind follows from its data inputs' kinds):
| kind    | value known to            | computed                                         |
|---------|---------------------------|--------------------------------------------------|
| CONST   | everyone (architecture)   | at convert time; embedded in the secure graph    |
| WEIGHT  | the model owner only      | at convert time; split into the parties' bundles |
| PUBLIC  | client and parties        | at run time on the client (`--public-input`)     |
| CLIENT  | the client only           | at run time, in plaintext on the client          |
| SECRET  | nobody                    | at run time by the parties, with a rewrite rule  |
Shape, Size and Rank are CONST (secure graphs have static shapes). Weights are the signature's
captured variables, whatever their size or dtype, and everything computed from them without
run-time data; conservatively also every other float constant with more than one element, except
a rotary embedding's inverse frequencies (theta^(-2i/d), i < d/2: architecture, one number from
the model's config), so that rotary angles stay CONST.

Weight values live beside the graph, not in it: a frozen model's GraphDef holds every weight
once more (the C++ graph it is imported into, and every copy made to fold, yet again), so the
weight Const nodes keep their dtype and shape only and `weight_values` holds the arrays, read
once. Folding runs only the sub-graph its outputs need, with just those weights put back.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2, tensor_pb2
# Private pieces of convert_variables_to_constants_v2 (TensorFlow is pinned to 2.21): the public
# function also rebuilds a ConcreteFunction around the frozen GraphDef, which held the weights
# 6-7 times at once (SmolLM2's generation signature: 12 GB) and kept a copy alive after it.
from tensorflow.python.framework.convert_to_constants import (
    _FunctionConverterDataInEager, _replace_variables_by_constants)


class Kind(enum.IntEnum):
    """Ordered so that combining inputs takes the max (SECRET dominates)."""
    CONST = 0
    WEIGHT = 1
    PUBLIC = 2
    CLIENT = 3
    SECRET = 4


SHAPE_OPS = ("Shape", "Size", "Rank", "ShapeN")
SKIPPED_OPS = ("NoOp", "Assert")  # control-only nodes: never needed for a value


class ConversionError(ValueError):
    """The model cannot be converted; the message says which node and what to do."""


@dataclasses.dataclass
class TensorInfo:
    name: str  # "node:index"
    shape: tuple[int, ...]
    dtype: tf.DType


def tensor_name(ref: str) -> str:
    """A NodeDef input reference as "node:index"."""
    return ref if ":" in ref else f"{ref}:0"


def node_of(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


class FrozenGraph:
    """One frozen signature: nodes in topological order, static shapes, kinds, folded values."""

    def __init__(self, graph_def: graph_pb2.GraphDef, inputs: Mapping[str, TensorInfo],
                 outputs: Mapping[str, str], weight_nodes: set[str],
                 public_inputs: Sequence[str] = (), state: Mapping[str, str] | None = None,
                 known_values: Mapping[str, np.ndarray] | None = None):
        """`graph_def` is taken over (its weight values are moved out); `known_values` are
        values of Const nodes already at hand (the frozen variables), read instead of parsed."""
        self.inputs = dict(inputs)          # signature name -> placeholder tensor info
        self.outputs = dict(outputs)        # signature name -> tensor name
        unknown = set(public_inputs) - set(self.inputs)
        if unknown:
            raise ConversionError(f"--public-input {sorted(unknown)}: no such signature input "
                                  f"(inputs: {sorted(self.inputs)})")
        self.public_inputs = set(public_inputs)
        # state: output name -> input name; both stay secret-shared on the parties between
        # calls (a decoder's KV cache): the input arrives as shares, the output leaves as shares
        self.state = dict(state or {})
        for out_key, in_key in self.state.items():
            if out_key not in self.outputs or in_key not in self.inputs:
                raise ConversionError(f"state {out_key}={in_key}: needs an output {out_key!r} "
                                      f"and an input {in_key!r} of the signature")
            if not self.inputs[in_key].dtype.is_floating or in_key in self.public_inputs:
                raise ConversionError(f"state input {in_key!r} must be a float, non-public "
                                      "input")
        self.state_inputs = set(self.state.values())
        for key, info in self.inputs.items():
            if not (info.dtype.is_integer or info.dtype.is_floating or info.dtype.is_bool):
                raise ConversionError(
                    f"signature input {key!r} is {info.dtype.name}: secure models take numbers "
                    "only (tokenize text on the client and export a signature over token ids, "
                    "as transformers' models take input_ids)")
        self.weight_nodes = set(weight_nodes)
        # weight Const name -> its value; its node keeps a stub (dtype and shape, no content)
        self.weight_values: dict[str, np.ndarray] = self._take_weight_values(
            graph_def, known_values or {})
        self.graph_def = _with_static_placeholders(graph_def, self.inputs)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(self.graph_def, name="")
        self.nodes: dict[str, node_def_pb2.NodeDef] = {n.name: n for n in self.graph_def.node}
        self.order = _topological_order(self.graph_def)
        self.kinds: dict[str, Kind] = {}
        self._classify()

    # -- shapes and kinds ------------------------------------------------------------------
    def tensor(self, ref: str) -> tf.Tensor:
        return self.graph.get_tensor_by_name(tensor_name(ref))

    def static_shape(self, ref: str) -> tuple[int, ...]:
        shape = self.tensor(ref).shape
        if not shape.is_fully_defined():
            raise ConversionError(f"{ref}: shape {shape} is not static; secure graphs need "
                                  "static shapes (fix the input shapes with --input-shape)")
        return tuple(shape.as_list())

    def data_inputs(self, name: str) -> list[str]:
        return [ref for ref in self.nodes[name].input if not ref.startswith("^")]

    def _classify(self) -> None:
        placeholders = {tensor_name(t.name).split(":")[0]: n for n, t in self.inputs.items()}
        for name in self.order:
            node = self.nodes[name]
            if node.op == "Placeholder":
                sig_name = placeholders.get(name)
                if sig_name is None:
                    raise ConversionError(f"placeholder {name} is not a signature input")
                kind = (Kind.SECRET if sig_name in self.state_inputs else
                        Kind.PUBLIC if sig_name in self.public_inputs else Kind.CLIENT)
            elif node.op == "Const":
                kind = Kind.WEIGHT if self._is_weight_const(node) else Kind.CONST
            elif node.op in SHAPE_OPS:
                for ref in self.data_inputs(name):
                    self.static_shape(ref)
                kind = Kind.CONST
            else:
                kind = max((self.kinds[node_of(r)] for r in self.data_inputs(name)),
                           default=Kind.CONST)
                if kind in (Kind.PUBLIC, Kind.CLIENT) and Kind.WEIGHT in {
                        self.kinds[node_of(r)] for r in self.data_inputs(name)}:
                    kind = Kind.SECRET  # a weight meets run-time data: computed securely
            self.kinds[name] = kind

    def _take_weight_values(self, graph_def: graph_pb2.GraphDef,
                            known: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Moves each weight Const's value out of `graph_def` (in place) into the result."""
        values = {}
        for node in graph_def.node:
            if node.op != "Const":
                continue
            proto = node.attr["value"].tensor
            dtype = tf.dtypes.as_dtype(proto.dtype)
            many = int(np.prod([d.size for d in proto.tensor_shape.dim])) > 1
            if node.name in self.weight_nodes or (dtype.is_floating and many):
                value = known[node.name] if node.name in known else tf.make_ndarray(proto)
                if node.name not in self.weight_nodes and is_rotary_inverse_frequencies(value):
                    continue  # architecture, not a weight: stays in the graph (CONST)
                self.weight_nodes.add(node.name)
                values[node.name] = value
                _keep_only_dtype_and_shape(node)
        return values

    def _is_weight_const(self, node: node_def_pb2.NodeDef) -> bool:
        return node.name in self.weight_nodes

    def kind(self, ref: str) -> Kind:
        return self.kinds[node_of(ref)]

    # -- folding ---------------------------------------------------------------------------
    def fold(self, refs: Sequence[str]) -> dict[str, np.ndarray]:
        """Values of CONST/WEIGHT tensors: a Const's (through Identity) as stored, the others
        computed in plaintext TensorFlow (one session run over the sub-graph they need)."""
        refs = [tensor_name(r) for r in refs]
        for ref in refs:
            if self.kind(ref) not in (Kind.CONST, Kind.WEIGHT):
                raise ValueError(f"{ref} depends on run-time inputs and cannot be folded")
        values, computed = {}, []
        for ref in refs:
            source = self._stored_const(ref)
            if source is None:
                computed.append(ref)
            else:
                values[ref] = self.weight_values[source] if source in self.weight_values \
                    else tf.make_ndarray(self.nodes[source].attr["value"].tensor)
        if computed:
            values.update(self._run_folded(computed))
        return values

    def through_identity(self, ref: str) -> str:
        """The tensor an Identity chain ending in `ref` forwards (`ref` itself if none)."""
        ref = tensor_name(ref)
        while self.nodes[node_of(ref)].op == "Identity":
            ref = tensor_name(self.data_inputs(node_of(ref))[0])
        return ref

    def _stored_const(self, ref: str) -> str | None:
        """The Const node whose output `ref` is, through Identity ops, else None."""
        ref = self.through_identity(ref)
        return node_of(ref) if self.nodes[node_of(ref)].op == "Const" else None

    def _run_folded(self, refs: Sequence[str]) -> dict[str, np.ndarray]:
        sub_def = tf.compat.v1.graph_util.extract_sub_graph(
            self.graph_def, sorted({node_of(r) for r in refs}))
        weights = []
        for node in sub_def.node:
            if node.name in self.weight_values:
                # fed as a placeholder: a value copied into the GraphDef (SmolLM2: 0.65 GB) was
                # serialized, parsed and constant-folded again (31 of the 52 s of classify)
                dtype, shape = node.attr["dtype"].type, node.attr["value"].tensor.tensor_shape
                node.op = "Placeholder"
                node.ClearField("input")
                node.attr.clear()
                node.attr["dtype"].type = dtype
                node.attr["shape"].shape.CopyFrom(shape)
                weights.append(node.name)
            elif node.op in SHAPE_OPS and node.op != "ShapeN":  # shapes are static: constants
                value = self._shape_op_value(node)
                node.op = "Const"
                node.ClearField("input")
                dtype = node.attr["out_type"].type if "out_type" in node.attr else tf.int32
                node.attr.clear()
                node.attr["dtype"].type = dtype
                node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(
                    np.asarray(value, dtype=tf.dtypes.as_dtype(dtype).as_numpy_dtype)))
        sub_def = tf.compat.v1.graph_util.extract_sub_graph(
            sub_def, sorted({node_of(r) for r in refs}))  # without what only shapes needed
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(sub_def, name="")
        # CONST values never depend on run-time inputs, but a ShapeN (not turned into a
        # constant above: several outputs) still reads its placeholder: feed zeros
        present = {n.name for n in sub_def.node}
        feeds = {graph.get_tensor_by_name(info.name): np.zeros(info.shape,
                                                               info.dtype.as_numpy_dtype)
                 for info in self.inputs.values() if node_of(info.name) in present}
        feeds.update({graph.get_tensor_by_name(name + ":0"): self.weight_values[name]
                      for name in weights if name in present})
        # run once: Grappler's rewrites would cost more than they save
        config = tf.compat.v1.ConfigProto()
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        with tf.compat.v1.Session(graph=graph, config=config) as session:
            values = session.run(refs, feed_dict=feeds)
        return dict(zip(refs, values))

    def weight_feeds(self) -> dict[tf.Tensor, np.ndarray]:
        """Feeds that give `graph`'s weight Const nodes their values (for running it)."""
        return {self.tensor(name + ":0"): value for name, value in self.weight_values.items()}

    def _shape_op_value(self, node: node_def_pb2.NodeDef):
        shape = self.static_shape(self.data_inputs(node.name)[0])
        if node.op == "Shape":
            return list(shape)
        if node.op == "Size":
            return int(np.prod(shape))
        return len(shape)


def _keep_only_dtype_and_shape(node: node_def_pb2.NodeDef) -> None:
    """A weight Const's stub: its value's dtype and shape without its content."""
    proto = node.attr["value"].tensor
    proto.CopyFrom(tensor_pb2.TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape))


def is_rotary_inverse_frequencies(value: np.ndarray) -> bool:
    """True for the vector theta^(-2i/d), i = 0..d/2-1, theta > 1 (rotary position embedding's
    inverse frequencies, as transformers' rotary layers hold them), to float32 precision. At
    least 4 values (head size 8): fewer would fit any vector starting with 1."""
    v = np.asarray(value, np.float64)
    if v.ndim != 1 or v.size < 4 or v[0] != 1.0 or not np.all((v > 0) & (v <= 1)):
        return False
    d = 2 * v.size
    theta = v[1] ** (-d / 2.0)
    if not theta > 1:
        return False
    expected = theta ** (-2.0 * np.arange(v.size) / d)
    return bool(np.allclose(v, expected, rtol=1e-5, atol=0))


def _with_static_placeholders(graph_def: graph_pb2.GraphDef,
                              inputs: Mapping[str, TensorInfo]) -> graph_pb2.GraphDef:
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    shapes = {info.name.split(":")[0]: info.shape for info in inputs.values()}
    for node in out.node:
        if node.op == "Placeholder" and node.name in shapes:
            node.attr["shape"].shape.CopyFrom(tf.TensorShape(shapes[node.name]).as_proto())
    return out


def _topological_order(graph_def: graph_pb2.GraphDef) -> list[str]:
    """Node names with every (data or control) input before its consumers."""
    deps = {n.name: [node_of(r) for r in n.input] for n in graph_def.node}
    order: list[str] = []
    state: dict[str, int] = {}
    for root in deps:
        stack = [(root, 0)]
        while stack:
            name, i = stack.pop()
            if i == 0:
                if state.get(name) == 2:
                    continue
                state[name] = 1
            if i < len(deps[name]):
                stack.append((name, i + 1))
                child = deps[name][i]
                if state.get(child) != 2:
                    if state.get(child) == 1:
                        raise ConversionError(f"the graph has a cycle through {child} "
                                              "(control flow is not supported)")
                    stack.append((child, 0))
            else:
                state[name] = 2
                order.append(name)
    return order


def load_signature(saved_model_dir: str, signature: str = "serving_default",
                   input_shapes: Mapping[str, Sequence[int]] | None = None,
                   public_inputs: Sequence[str] = (),
                   state: Mapping[str, str] | None = None) -> FrozenGraph:
    """Loads and freezes one signature; `input_shapes` fills dimensions the signature leaves
    unknown (e.g. {"input_ids": [1, 32]}); `state` pairs outputs with inputs that stay
    secret-shared between calls ({"present_0": "past_0"})."""
    return LoadedSignature(saved_model_dir, signature).frozen(input_shapes, public_inputs, state)


class LoadedSignature:
    """One signature loaded and frozen once, for FrozenGraphs at several input shapes (a
    decoder's prefill and decode): the frozen variables' values are held once and shared."""

    def __init__(self, saved_model_dir: str, signature: str = "serving_default") -> None:
        if not os.path.isdir(saved_model_dir):
            raise ConversionError(f"{saved_model_dir}: no such SavedModel directory")
        try:
            loaded = tf.saved_model.load(saved_model_dir)
        except Exception as err:  # noqa: BLE001 - the loader raises many types
            raise ConversionError(f"{saved_model_dir}: cannot load the SavedModel ({err})") \
                from err
        if signature not in loaded.signatures:
            raise ConversionError(f"{saved_model_dir} has no signature {signature!r}; it has "
                                  f"{sorted(loaded.signatures)} (choose one with --signature)")
        fn = loaded.signatures[signature]
        self.weight_nodes = {internal.op.name for external, internal in fn.graph.captures
                             if external.dtype == tf.resource}
        frozen = _FunctionConverterDataInEager(func=fn, lower_control_flow=True,
                                               aggressive_inlining=False)
        graph_def, _ = _replace_variables_by_constants(converter_data=frozen)
        self.known_values = {name: data.numpy for name, data in frozen.tensor_data.items()}
        for node in graph_def.node:  # weights' values are known_values': stubs here (dtype,
            # shape), as FrozenGraph leaves them; each FrozenGraph copies this small GraphDef
            if (node.op == "Const" and node.name in self.known_values
                    and node.name in self.weight_nodes):
                _keep_only_dtype_and_shape(node)
        self.graph_def = graph_def
        self.input_specs: dict[str, tf.TensorSpec] = dict(fn.structured_input_signature[1])
        if not isinstance(fn.structured_outputs, dict):
            raise ConversionError(f"signature {signature!r} must return a dict of named outputs")
        keys = sorted(fn.structured_outputs)  # flattening order of a dict
        self.outputs = {key: t.name for key, t in zip(keys, fn.outputs)}
        del frozen, loaded

    def frozen(self, input_shapes: Mapping[str, Sequence[int]] | None = None,
               public_inputs: Sequence[str] = (),
               state: Mapping[str, str] | None = None) -> FrozenGraph:
        """The FrozenGraph at `input_shapes` (see load_signature)."""
        input_shapes = dict(input_shapes or {})
        inputs: dict[str, TensorInfo] = {}
        for name, spec in sorted(self.input_specs.items()):
            shape = list(spec.shape.as_list())
            if name in input_shapes:
                given = list(input_shapes.pop(name))
                if len(given) != len(shape) or any(s is not None and s != g
                                                   for s, g in zip(shape, given)):
                    raise ConversionError(f"--input-shape {name}={'x'.join(map(str, given))} "
                                          f"does not fit the signature's shape {spec.shape}")
                shape = given
            if any(d is None for d in shape):
                raise ConversionError(f"input {name} has shape {spec.shape} with unknown "
                                      f"dimensions; secure graphs need static shapes: pass "
                                      f"--input-shape {name}=" + "x".join(
                                          "1" if d is None else str(d) for d in shape))
            inputs[name] = TensorInfo(tensor_name(spec.name or name), tuple(shape), spec.dtype)
        if input_shapes:
            raise ConversionError(f"--input-shape {sorted(input_shapes)}: no such signature "
                                  "input")
        graph_def = graph_pb2.GraphDef()
        graph_def.CopyFrom(self.graph_def)  # FrozenGraph takes its copy over
        return FrozenGraph(graph_def, inputs, self.outputs, self.weight_nodes, public_inputs,
                           state, self.known_values)
