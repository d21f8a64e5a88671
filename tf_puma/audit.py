"""Static audits of a secure graph, function bodies included: placement and PRG reuse.

Two invariants every secure graph must keep (DESIGN.md, privacy invariants):
1. **Placement.** Every Puma op is placed on a device, and every edge between two devices is a
   `runtime.transfer` (so it is counted and recorded in views): the producing op lists the
   output and its receiving endpoint in its SENT_TO_ATTR attribute.
2. **PRG outputs used once.** No party draws the same F(key, stream, sub) twice in one execution,
   and no stream is shared by two protocol steps (two families of custom_ops/prg_draws.h): the
   fused product once handed its TruncPr its own zero-share stream, so party A could strip
   F(k_{j+1}, s, 0) off B's masked value and read B's cross terms.

The audit works on the GraphDef and its function library (what a SavedModel stores), so it
covers `tf.function` graphs, nested function calls and loaded secure models alike. Draws are
listed as (holder, key, stream, sub): the holder is the party (or client) whose device runs the
kernel, the key is the PumaNewKey op the key input comes from (through identities, transfers and
function arguments), the stream is the kernel's `stream` attribute, and the sub comes from the
kernels' own table (PumaPrgDrawTable, the C++ constants in prg_draws.h). A draw inside a loop
body with a key made outside the body repeats on every iteration and is refused; a function
called twice with the same keys draws twice and is refused.

Cost: linear in the number of nodes (a BERT-size secure graph in a few seconds).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Mapping, Optional, Union

import tensorflow as tf
from tensorflow.core.framework import function_pb2, graph_pb2, node_def_pb2
from tensorflow.python.framework import op_def_registry

from tf_puma import _ops
from tf_puma.cluster import CLIENT_JOB, PARTY_JOB
from tf_puma.runtime import SENT_TO_ATTR

_FORWARDING_OPS = ("Identity", "Snapshot", "StopGradient")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
_LOOP_OPS = ("While", "StatelessWhile")
_BRANCH_OPS = ("If", "StatelessIf", "Case", "StatelessCase")


@dataclasses.dataclass(frozen=True)
class TableEntry:
    family: str
    key_input: str
    sub: int  # -1: the op's `sub` attribute


@dataclasses.dataclass(frozen=True)
class Draw:
    """One PRG output a kernel expands: F(key, stream, sub) on `holder`'s device."""
    holder: str  # "0", "1", "2", "client" or "?" (unplaced)
    key: str  # the PumaNewKey op the key comes from, or "?<where>" when it cannot be traced
    stream: Optional[int]
    sub: int
    family: str
    node: str  # path of the drawing node: call sites / function / node


_TABLE: Optional[dict[str, list[TableEntry]]] = None


def draw_table() -> dict[str, list[TableEntry]]:
    """The kernels' PRG draws by op type, read from the op library itself."""
    global _TABLE
    if _TABLE is None:
        lines = _ops.load().puma_prg_draw_table().numpy()
        table: dict[str, list[TableEntry]] = collections.defaultdict(list)
        for line in lines:
            op, family, key_input, sub = line.decode().split()
            table[op].append(TableEntry(family, key_input, int(sub)))
        _TABLE = dict(table)
    return _TABLE


def holder_of(device: str) -> str:
    """"0".."2" for a party's device, "client" for the client's, "?" when unplaced."""
    if not device:
        return "?"
    spec = tf.DeviceSpec.from_string(device)
    if spec.job == PARTY_JOB:
        return str(spec.task if spec.task is not None else "?")
    if spec.job == CLIENT_JOB:
        return "client"
    return "?"


# -- graph walking -------------------------------------------------------------------------------
Origin = Optional[str]  # a key origin (the PumaNewKey op's path), or None when unknown


class _Scope:
    """The nodes of one graph or function body, and where its arguments come from."""

    def __init__(self, nodes: Iterable[node_def_pb2.NodeDef], path: str,
                 args: Mapping[str, tuple["_Scope", str]], loop: bool):
        self.nodes = {n.name: n for n in nodes}
        self.path = path
        self.args = dict(args)  # argument name -> (caller scope, caller input ref)
        self.loop = loop  # a loop body: runs many times per execution


def _split_ref(ref: str) -> tuple[str, int]:
    """(node, output index) of an input reference; function-body refs are node:arg:index."""
    parts = ref.split(":")
    if len(parts) == 1:
        return parts[0], 0
    return parts[0], int(parts[-1])


class _Auditor:
    def __init__(self, graph_def: graph_pb2.GraphDef):
        self.functions: dict[str, function_pb2.FunctionDef] = {
            f.signature.name: f for f in graph_def.library.function}
        self.table = draw_table()
        self.draws: list[Draw] = []
        self.problems: list[str] = []
        self._walked_calls = 0

    # Where a key comes from: a PumaNewKey (key origin string) or None.
    def key_origin(self, scope: _Scope, ref: str, depth: int = 0) -> Origin:
        if depth > 200:
            return None
        name, index = _split_ref(ref)
        if name in scope.args and name not in scope.nodes:
            caller, caller_ref = scope.args[name]
            if caller is None:
                return None
            return self.key_origin(caller, caller_ref, depth + 1)
        node = scope.nodes.get(name)
        if node is None:
            return None
        if node.op in _FORWARDING_OPS:
            return self.key_origin(scope, _data_inputs(node)[0], depth + 1)
        if node.op == "IdentityN":
            return self.key_origin(scope, _data_inputs(node)[index], depth + 1)
        if node.op == "PumaNewKey":
            return f"{scope.path}{name}"
        return None

    def walk(self, scope: _Scope) -> None:
        for node in scope.nodes.values():
            if node.op.startswith("Puma") and not node.device:
                self.problems.append(f"{scope.path}{node.name} ({node.op}) has no device")
            self._check_edges(scope, node)
            if node.op in self.table:
                self._record_draws(scope, node)
            self._enter_functions(scope, node)

    def _check_edges(self, scope: _Scope, node: node_def_pb2.NodeDef) -> None:
        if not node.device:
            return
        here = tf.DeviceSpec.from_string(node.device)
        for ref in _data_inputs(node):
            src = scope.nodes.get(_split_ref(ref)[0])
            if (src is not None and src.device and tf.DeviceSpec.from_string(src.device) != here
                    and (_output_slot(src, ref), holder_of(node.device)) not in sent_to(src)):
                self.problems.append(f"{scope.path}{src.name} ({src.device}) -> {node.name} "
                                     f"({node.device}) crosses devices outside transfer()")

    def _record_draws(self, scope: _Scope, node: node_def_pb2.NodeDef) -> None:
        where = f"{scope.path}{node.name}"
        inputs = _data_inputs(node)
        stream = _attr_int(node, "stream")
        for entry in self.table[node.op]:
            key = self.key_origin(scope, inputs[_input_index(node, entry.key_input)])
            if key is None:
                key = f"?{where}:{entry.key_input}"
                self.problems.append(f"{where} ({node.op}): key input {entry.key_input!r} "
                                     "does not come from a PumaNewKey of this execution")
            elif scope.loop and not key.startswith(scope.path):
                self.problems.append(f"{where} ({node.op}) draws in a loop body with a key made "
                                     "outside it: the same output repeats every iteration")
            sub = entry.sub if entry.sub >= 0 else _attr_int(node, "sub")
            self.draws.append(Draw(holder_of(node.device), key, stream, sub, entry.family,
                                   where))

    def _enter_functions(self, scope: _Scope, node: node_def_pb2.NodeDef) -> None:
        if node.op in _CALL_OPS or node.op in _LOOP_OPS or node.op in _BRANCH_OPS:
            attrs = {"f": False, "body": True, "cond": False, "then_branch": False,
                     "else_branch": False}
            inputs = _data_inputs(node)
            if node.op in _BRANCH_OPS:
                inputs = inputs[1:]  # the predicate or branch index comes first
            names = [(a, node.attr[a].func.name) for a in attrs if a in node.attr]
            if "branches" in node.attr:
                names += [("branches", f.name) for f in node.attr["branches"].list.func]
            for attr, fname in names:
                self._walk_function(fname, scope, inputs, node, loop=scope.loop or attrs.get(
                    attr, False))
        elif node.op in self.functions:  # a library function called by its own name
            self._walk_function(node.op, scope, _data_inputs(node), node, loop=scope.loop)

    def _walk_function(self, fname: str, caller: _Scope, inputs: list[str],
                       node: node_def_pb2.NodeDef, loop: bool) -> None:
        fdef = self.functions.get(fname)
        if fdef is None:
            return
        self._walked_calls += 1
        if self._walked_calls > 100_000:
            raise RuntimeError("audit: more than 100,000 function calls; is the graph recursive?")
        args = {arg.name: (caller, inputs[i]) if i < len(inputs) else (None, "")
                for i, arg in enumerate(fdef.signature.input_arg)}
        path = f"{caller.path}{node.name}/{fname}/"
        self.walk(_Scope(fdef.node_def, path, args, loop))

    def check_reuse(self) -> None:
        seen: dict[tuple, str] = {}
        for d in self.draws:
            if d.stream is None or d.key.startswith("?"):
                continue
            k = (d.holder, d.key, d.stream, d.sub)
            if k in seen:
                self.problems.append(
                    f"party {d.holder} draws F({d.key}, stream {d.stream}, sub {d.sub}) twice: "
                    f"in {seen[k]} and in {d.node}")
            else:
                seen[k] = d.node
        families: dict[tuple, tuple[str, str]] = {}
        for d in self.draws:
            if d.stream is None:
                continue
            k = (d.key, d.stream)
            if k in families and families[k][0] != d.family:
                self.problems.append(
                    f"stream {d.stream} of key {d.key} is shared by two protocol steps: "
                    f"{families[k][0]} ({families[k][1]}) and {d.family} ({d.node}); give each "
                    "kernel call its own runtime.new_stream()")
            families.setdefault(k, (d.family, d.node))


def sent_to(node: node_def_pb2.NodeDef) -> list[tuple[int, str]]:
    """(output, endpoint) for each output of this node `runtime.transfer` sent and each
    receiver ("0".."2", "client")."""
    if SENT_TO_ATTR not in node.attr:
        return []
    entries = [s.decode().split(">") for s in node.attr[SENT_TO_ATTR].list.s]
    return [(int(slot), dst) for slot, dst in entries]


def _output_slot(node: node_def_pb2.NodeDef, ref: str) -> int:
    """The flat output index a reference to `node` reads: "node:2" in a GraphDef, "node:arg:i"
    in a function body (i within output argument `arg`, counted with the op's definition)."""
    parts = ref.lstrip("^").split(":")
    if len(parts) < 3:
        return int(parts[1]) if len(parts) == 2 else 0
    return _arg_start(node, op_def_registry.get(node.op).output_arg, parts[1]) + int(parts[2])


def _arg_start(node: node_def_pb2.NodeDef, args, name: str) -> int:
    """Flat position of argument `name`'s first tensor among `args` (an op definition's input
    or output arguments), each counting 1, its number_attr or its type list's length."""
    index = 0
    for arg in args:
        if arg.name == name:
            return index
        if arg.number_attr:
            index += int(node.attr[arg.number_attr].i)
        elif arg.type_list_attr:
            index += len(node.attr[arg.type_list_attr].list.type)
        else:
            index += 1
    raise KeyError(f"{node.op} {node.name} has no argument {name!r}")


def _data_inputs(node: node_def_pb2.NodeDef) -> list[str]:
    return [ref for ref in node.input if not ref.startswith("^")]


def _attr_int(node: node_def_pb2.NodeDef, name: str) -> int:
    if name in node.attr:
        return int(node.attr[name].i)
    for attr in op_def_registry.get(node.op).attr:
        if attr.name == name:
            return int(attr.default_value.i)
    raise KeyError(f"{node.op} has no attribute {name}")


def _input_index(node: node_def_pb2.NodeDef, arg_name: str) -> int:
    """Position of input argument `arg_name` among the node's flattened data inputs."""
    return _arg_start(node, op_def_registry.get(node.op).input_arg, arg_name)


def _graph_def(graph: Union[tf.Graph, graph_pb2.GraphDef]) -> graph_pb2.GraphDef:
    return graph if isinstance(graph, graph_pb2.GraphDef) else graph.as_graph_def()


def _run(graph: Union[tf.Graph, graph_pb2.GraphDef]) -> _Auditor:
    graph_def = _graph_def(graph)  # serialising a large graph takes seconds: once
    auditor = _Auditor(graph_def)
    auditor.walk(_Scope(graph_def.node, "", {}, loop=False))
    auditor.check_reuse()
    return auditor


def report(graph: Union[tf.Graph, graph_pb2.GraphDef]) -> tuple[list[str], list[Draw]]:
    """(violations, draws) of one walk over the graph."""
    auditor = _run(graph)
    return auditor.problems, auditor.draws


def prg_draws(graph: Union[tf.Graph, graph_pb2.GraphDef]) -> list[Draw]:
    """Every PRG draw of one execution of `graph` (function bodies included)."""
    return _run(graph).draws


def audit_graph(graph: Union[tf.Graph, graph_pb2.GraphDef]) -> list[str]:
    """Every violation of the two invariants above, as readable lines (empty = clean)."""
    return _run(graph).problems


def audit_saved_model(model_dir: str, signature: Optional[str] = None) -> list[str]:
    """audit_graph over a secure SavedModel's signatures (all of them by default)."""
    loaded = tf.saved_model.load(model_dir)
    names = [signature] if signature else list(loaded.signatures)
    problems = []
    for name in names:
        problems += [f"[{name}] {p}" for p in audit_graph(loaded.signatures[name].graph)]
    return problems


def summary(draws: list[Draw]) -> dict[str, int]:
    """Draw counts per family (for reports and tests)."""
    return dict(collections.Counter(d.family for d in draws))


