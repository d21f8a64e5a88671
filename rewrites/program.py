"""The secure program of one frozen signature: idioms found, needed nodes, convert-time values,
and `build`, which emits the secure graph (inside a tf.function) node by node.

Each needed node runs where its kind says (`rewrites.graph.Kind`): CONST and WEIGHT values are
folded at convert time (weights become `Weight` handles the parties load from their bundles),
PUBLIC and CLIENT nodes replay the original op on the client, SECRET nodes go through a rule
(`rewrites.rules`). Costs are recorded per layer (a ledger per group of node names).
"""

from __future__ import annotations

import collections
import re
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

from tf_puma.rewrites import idioms, patterns, rules
from tf_puma.rewrites.graph import ConversionError, FrozenGraph, Kind, node_of, tensor_name
from tf_puma.rewrites.values import ClientValue, Value, Weight
from tf_puma import bundle, costs, runtime, sharing
from tf_puma.cluster import NUM_PARTIES
from tf_puma.fixedpoint import FixedPoint
from tf_puma.protocols import arithmetic, tensor
from tf_puma.sharing import Shared

_LAYER = re.compile(r"(?:^|/)((?:layer|h|layers|block)_?\._?\d+)(?:/|$)")
_HINTS = {  # besides the idioms' own hints
    "Exp": "exp of a secret is supported inside Softmax only",
    "Log": "no secure logarithm (compute log-probabilities on the client from revealed logits)",
}


def layer_of(node_name: str) -> str:
    """The cost-report group of a node: its encoder/decoder layer, else embeddings or head."""
    found = _LAYER.search(node_name)
    if found:
        return found.group(1)
    if any(key in node_name for key in ("embeddings", "wte", "wpe", "embed_tokens")):
        return "embeddings"
    return "head"


class SecureProgram:
    """Everything about one signature that the secure graph needs, decided at convert time."""

    def __init__(self, graph: FrozenGraph, bundle_id: str = ""):
        self.graph = graph
        self.bundle_id = bundle_id  # names the parties' share bundle of this conversion
        self.idioms: dict[str, tuple[idioms.Idiom, dict]] = self._find_idioms()
        self.order = self._needed_in_order()
        self._check_supported()
        frontier = sorted(self._frontier())
        folded = graph.fold(frontier)
        self.constants: dict[str, np.ndarray] = {}
        self.weights: dict[str, np.ndarray] = {}
        for ref, value in folded.items():
            if graph.kind(ref) == Kind.WEIGHT:
                self.weights[weight_name(ref)] = np.asarray(value)
            else:
                self.constants[ref] = np.asarray(value)

    # -- analysis --------------------------------------------------------------------------
    def _find_idioms(self) -> dict[str, tuple[idioms.Idiom, dict]]:
        """Secret nodes that end an idiom: node name -> (idiom, bindings); first match wins."""
        found = {}
        known = idioms.all_idioms()
        for name in self.graph.order:
            node = self.graph.nodes[name]
            if self.graph.kinds[name] != Kind.SECRET:
                continue
            for idiom in known:
                if node.op not in idiom.roots:
                    continue
                bindings = next((b for b in (patterns.match(self.graph, p, name)
                                             for p in idiom.patterns) if b is not None), None)
                if (bindings is not None and self.graph.kind(bindings["x"]) == Kind.SECRET
                        and idiom.applies(self.graph, bindings)):
                    found[name] = (idiom, bindings)
                    break
        return found

    def dependencies(self, name: str) -> list[str]:
        if name in self.idioms:
            return [ref for key, ref in self.idioms[name][1].items() if not key.startswith("$")]
        return self.graph.data_inputs(name)

    def _runtime(self, ref: str) -> bool:
        return self.graph.kind(ref) not in (Kind.CONST, Kind.WEIGHT)

    def _needed_in_order(self) -> list[str]:
        needed: set[str] = set()
        stack = [node_of(ref) for ref in self.graph.outputs.values()]
        while stack:
            name = stack.pop()
            if name in needed or not self._runtime(name):
                continue
            needed.add(name)
            stack.extend(node_of(ref) for ref in self.dependencies(name))
        return [name for name in self.graph.order if name in needed]

    def _frontier(self) -> set[str]:
        refs = {tensor_name(ref) for ref in self.graph.outputs.values()
                if not self._runtime(ref)}
        for name in self.order:
            refs.update(tensor_name(ref) for ref in self.dependencies(name)
                        if not self._runtime(ref))
        return refs

    def _check_supported(self) -> None:
        problems = []
        for name in self.order:
            node = self.graph.nodes[name]
            if (self.graph.kinds[name] == Kind.SECRET and name not in self.idioms
                    and node.op not in rules.RULES and node.op != "Placeholder"):
                scope = name.rsplit("/", 1)[0] if "/" in name else "(top level)"
                hint = {**_HINTS, **idioms.hints()}.get(
                    node.op, "no secure rewrite rule for this op type")
                problems.append(f"  {node.op:<14} {name}\n  {'':<14} in {scope}: {hint}")
        for key, ref in self.graph.outputs.items():
            if self.graph.kind(ref) == Kind.WEIGHT:
                problems.append(f"  output {key!r} depends on the weights only: revealing it "
                                "would disclose them")
        if problems:
            raise ConversionError("cannot make these nodes secure (nothing was written):\n"
                                  + "\n".join(problems))

    def secure_groups(self) -> list[str]:
        """The cost-report groups (layers) of the secure nodes, in build order."""
        groups: dict[str, None] = {}
        for name in self.order:
            if self.graph.kinds[name] not in (Kind.CLIENT, Kind.PUBLIC) and \
                    self.graph.nodes[name].op != "Placeholder":
                groups.setdefault(layer_of(name))
        return list(groups)

    def idiom_summary(self) -> str:
        """`gelu x6, layer_norm x13`: the idioms found, by name."""
        needed = set(self.order)
        found = collections.Counter(idiom.name for name, (idiom, _) in self.idioms.items()
                                    if name in needed)
        return ", ".join(f"{name} x{n}" for name, n in sorted(found.items()))

    def counts(self) -> dict[str, int]:
        c = collections.Counter(self.graph.kinds[n].name for n in self.order)
        return dict(c, idioms=len(self.idioms), weights=len(self.weights))

    # -- building the secure graph ---------------------------------------------------------
    def build(self, inputs: dict[str, tf.Tensor],
              on_layer: Optional[Callable[[str, int, int], None]] = None,
              ledgers: Optional[dict[str, costs.Ledger]] = None) -> dict[str, tf.Tensor]:
        """Emits the secure graph for `inputs` (client tensors by signature name; Shared values
        for state inputs) and returns the signature's outputs, revealed to the client (state
        outputs: Shared, at the format's fractional bits, never revealed). Call inside a
        tf.function. `on_layer(group, i, n)` is called as the i-th of n groups starts."""
        ctx = BuildContext(self)
        total_groups = len(self.secure_groups()) if on_layer else 0
        placeholders = {node_of(info.name): key for key, info in self.graph.inputs.items()}
        ledgers = {} if ledgers is None else ledgers
        for name in self.order:
            node = self.graph.nodes[name]
            kind = self.graph.kinds[name]
            if node.op == "Placeholder" and placeholders[name] in self.graph.state_inputs:
                ctx.env[f"{name}:0"] = inputs[placeholders[name]]
                continue
            if node.op == "Placeholder":
                ctx.env[f"{name}:0"] = ClientValue(_checked_input(
                    inputs[placeholders[name]], placeholders[name],
                    self.graph.inputs[placeholders[name]].shape), kind == Kind.PUBLIC)
                continue
            args = [ctx.value(ref) for ref in self.graph.data_inputs(name)] \
                if name not in self.idioms else []
            if kind in (Kind.CLIENT, Kind.PUBLIC):
                outs = [ClientValue(t, kind == Kind.PUBLIC)
                        for t in rules.replay_on_client(node, args)]
            else:
                group = layer_of(name)
                if group not in ledgers:
                    ledgers[group] = costs.Ledger()
                    if on_layer:
                        on_layer(group, len(ledgers), total_groups)
                with ledgers[group], tf.name_scope(node.op):
                    outs = self._secure(ctx, node)
            for k, out in enumerate(outs):
                ctx.env[f"{name}:{k}"] = out
        return {key: (ctx.state_out(ref) if key in self.graph.state else ctx.reveal(ref, key))
                for key, ref in self.graph.outputs.items()}

    def _secure(self, ctx: "BuildContext", node: node_def_pb2.NodeDef) -> list[Value]:
        try:
            if node.name in self.idioms:
                idiom, bindings = self.idioms[node.name]
                outs = [idiom.build(ctx, bindings)]
            else:
                args = [ctx.value(ref) for ref in self.graph.data_inputs(node.name)]
                outs = rules.RULES[node.op](ctx, node, args)
        except ValueError as e:  # protocols' argument checks, named by node
            if isinstance(e, ConversionError):
                raise
            raise ConversionError(f"{node.op} {node.name}: {e}") from e
        for k, out in enumerate(outs):
            if not isinstance(out, Shared):  # None: an output no node uses (rules refuse else)
                continue
            want = self.graph.static_shape(f"{node.name}:{k}")
            if tuple(out.shape.as_list()) != want:
                raise ConversionError(f"internal: rule for {node.op} {node.name} produced shape "
                                      f"{out.shape}, the model has {want}")
        return outs


def _checked_input(t: tf.Tensor, key: str, shape: tuple[int, ...]) -> tf.Tensor:
    """t after a run-time check of its shape (signature callers can feed other shapes)."""
    with tf.device(runtime.CLIENT_DEVICE):
        actual = tf.raw_ops.Shape(input=t, out_type=tf.int64)  # not folded from static shape
        check = tf.debugging.Assert(
            tf.reduce_all(tf.equal(actual, tf.constant(shape, tf.int64))),
            [f"tf-puma: input {key} must have shape {list(shape)} (fixed when the model was "
             "converted), got", actual], name=f"check_{key}")
        with tf.control_dependencies([check]):
            return tf.identity(t, name=f"checked_{key}")


def weight_name(ref: str) -> str:
    """A weight's bundle name: its tensor name without the output index (or with it if > 0)."""
    node, index = tensor_name(ref).split(":")
    return node if index == "0" else f"{node}:{index}"


class BuildContext:
    """Per-trace state: values of the nodes built so far and conversions to shares."""

    def __init__(self, program: SecureProgram):
        self.program = program
        self.graph = program.graph
        self.env: dict[str, Value] = {}
        self._shared: dict[object, Shared] = {}
        self._public: dict[tuple[int, int], tf.Tensor] = {}
        self._public_ring: dict[tuple[tuple, int], tf.Tensor] = {}
        self._public_negated: dict[int, ClientValue] = {}
        for ref, value in program.constants.items():
            self.env[ref] = value
        for name, value in program.weights.items():
            self.env[tensor_name(name)] = Weight(name, tuple(value.shape))

    # -- graph facts for rules -------------------------------------------------------------
    def data_inputs(self, node: node_def_pb2.NodeDef) -> list[str]:
        return self.graph.data_inputs(node.name)

    def dtype(self, ref: str) -> tf.DType:
        return self.graph.tensor(ref).dtype

    def output_refs(self, node: node_def_pb2.NodeDef) -> list[str]:
        return [t.name for t in self.graph.graph.get_operation_by_name(node.name).outputs]

    def output_shape(self, node: node_def_pb2.NodeDef, k: int = 0) -> tuple[int, ...]:
        return self.graph.static_shape(f"{node.name}:{k}")

    def value(self, ref: str) -> Value:
        ref = tensor_name(ref)
        if ref not in self.env:
            raise ConversionError(f"internal: {ref} used before it was built")
        return self.env[ref]

    # -- conversions -----------------------------------------------------------------------
    def shared(self, v: Value) -> Shared:
        """v as shares: weights from the bundles, client values shared by the client, public
        constants as the trivial sharing (c, 0, 0)."""
        if isinstance(v, Shared):
            return v
        key = v.name if isinstance(v, Weight) else id(v.tensor) if isinstance(
            v, ClientValue) else None
        if key is not None and key in self._shared:
            return self._shared[key]
        if isinstance(v, Weight):
            out = bundle.party_weight(v.name, v.shape, bundle_id=self.program.bundle_id)
        elif isinstance(v, ClientValue):
            out = (self._public_shared(v) if v.public else sharing.share(
                v.tensor, frac_bits=None if v.tensor.dtype.is_floating else 0,
                name="client_value"))
        else:
            out = _constant_shared(np.asarray(v))
        if key is not None:
            self._shared[key] = out
        return out

    def aligned(self, values: Iterable[Value]) -> list[Shared]:
        shared = [self.shared(v) for v in values]
        frac = max(s.frac_bits for s in shared)
        return [s if s.frac_bits == frac else
                tensor.scale(s, 2 ** (frac - s.frac_bits), frac)
                for s in shared]

    def broadcast(self, x: Shared, shape: tuple[int, ...]) -> Shared:
        return x if tuple(x.shape.as_list()) == tuple(shape) else tensor.broadcast_to(x, shape)

    def public_on(self, arg: Value, party: int, node: node_def_pb2.NodeDef) -> tf.Tensor:
        """A non-secret operand (shape, axis, public indices) on a party's device."""
        if isinstance(arg, np.ndarray):
            return runtime.const_on(party, arg, tf.as_dtype(arg.dtype))
        if isinstance(arg, ClientValue) and arg.public:
            key = (id(arg.tensor), party)
            if key not in self._public:
                self._public[key] = runtime.transfer(arg.tensor, runtime.CLIENT, party)
            return self._public[key]
        raise ConversionError(f"{node.op} {node.name}: this operand must be a constant or a "
                              "public input (it would be shown to the parties); mark the "
                              "input --public-input if that is acceptable")

    def public_negated(self, v: ClientValue) -> ClientValue:
        """-v for a public client value, computed on the client once per trace (so a public
        tensor subtracted in many places is encoded and sent once, see public_ring)."""
        key = id(v.tensor)
        if key not in self._public_negated:
            with tf.device(runtime.CLIENT_DEVICE):
                self._public_negated[key] = ClientValue(tf.negative(v.tensor), public=True)
        return self._public_negated[key]

    def public_ring(self, v: ClientValue, parties: Iterable[int],
                    floor: float | None = None) -> tuple[dict[int, tf.Tensor], int]:
        """A public client value (raised to at least `floor`, if given) in the ring on each of
        `parties`, and its fractional bits: floats encoded in the format on the client,
        integers as they are (0 bits). Encoded and sent once per party and trace. For sums and
        products with shares that need no zero shares of it (arithmetic.add_public_tensor,
        mul_public_tensor)."""
        t = v.tensor
        frac = arithmetic.fixed_point().frac_bits if t.dtype.is_floating else 0
        key = (id(t), floor)
        if (key, -1) not in self._public_ring:
            with tf.device(runtime.CLIENT_DEVICE):
                if floor is not None:
                    t = tf.maximum(t, tf.cast(floor, t.dtype))
                self._public_ring[(key, -1)] = (arithmetic.fixed_point().encode(t) if frac
                                                else tf.cast(t, tf.int64))
        out = {}
        for party in parties:
            if (key, party) not in self._public_ring:
                self._public_ring[(key, party)] = runtime.transfer(
                    self._public_ring[(key, -1)], runtime.CLIENT, party)
            out[party] = self._public_ring[(key, party)]
        return out, frac

    def _public_shared(self, v: ClientValue) -> Shared:
        """A public client value as the sharing (t, 0, 0), for operations that need it as
        shares: t is the value public_ring sent to P0 and P2 (so it crosses once per trace,
        however it is used); the zeros are made on the parties."""
        ring, frac = self.public_ring(v, (0, 2))
        return _trivial_sharing(lambda i: ring[i], v.tensor.shape.as_list(), frac, depth=1)

    def state_out(self, ref: str) -> Shared:
        """A state output as shares at the format's fractional bits (the next call's input)."""
        x = self.shared(self.value(ref))
        frac = arithmetic.fixed_point().frac_bits
        if x.frac_bits > frac:
            cut = arithmetic.trunc(x, x.frac_bits - frac)
            x = Shared(cut.pairs, frac, cut.depth)
        elif x.frac_bits < frac:
            x = tensor.scale(x, 2 ** (frac - x.frac_bits), frac)
        return x

    def reveal(self, ref: str, key: str) -> tf.Tensor:
        value = self.value(ref)
        dtype = self.dtype(ref)
        with tf.device(runtime.CLIENT_DEVICE):
            if isinstance(value, np.ndarray):
                return tf.identity(tf.constant(value, dtype), name=key)
            if isinstance(value, ClientValue):
                return tf.identity(value.tensor, name=key)
        out = sharing.reveal(self.shared(value), dtype=dtype, name=key)
        with tf.device(runtime.CLIENT_DEVICE):
            return tf.identity(out, name=key)


def _constant_shared(c: np.ndarray, fxp: FixedPoint | None = None) -> Shared:
    """The trivial sharing (enc(c), 0, 0) of a public constant (no communication)."""
    fxp = fxp or arithmetic.fixed_point()
    enc = fxp.encode_np(c.astype(np.float64))
    return _trivial_sharing(lambda i: tf.constant(enc), enc.shape, fxp.frac_bits)


def _trivial_sharing(value_on: Callable[[int], tf.Tensor], shape: Iterable[int], frac: int,
                     depth: int = 0) -> Shared:
    """The sharing (t, 0, 0): share x_0 = value_on(i) (called under party i's device) held by
    P0 (first) and P2 (second), zeros everywhere else."""
    pairs = []
    for i in range(NUM_PARTIES):
        with tf.device(runtime.device(i)):
            zero = tf.zeros(shape, tf.int64)
            pairs.append((zero, zero) if i == 1 else
                         (value_on(i), zero) if i == 0 else (zero, value_on(i)))
    return Shared(pairs, frac, depth)


runtime.exclude_from_autograph(globals())
