"""A small declarative pattern language over frozen-graph nodes (the idioms it describes live in
`rewrites/idioms/`, one file each).

A pattern is `Op(type, *operand_patterns)`, `Var(name)` (binds any tensor; a second use must bind
the same one), `Const(value)` (a CONST scalar, or an array of equal elements, close to value),
`Same(name, pattern)` (matches pattern once, then the same node again) or `AnyOf(*patterns)`.
Operands of commutative ops (Mul, Add, AddV2) match in either order; Identity nodes are looked
through. `match(graph, pattern, ref)` returns the bindings or None.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np
import tensorflow as tf

from tf_puma.rewrites.graph import FrozenGraph, Kind, node_of, tensor_name

COMMUTATIVE = ("Mul", "Add", "AddV2")


@dataclasses.dataclass(frozen=True)
class Var:
    name: str


@dataclasses.dataclass(frozen=True)
class Const:
    value: float
    rtol: float = 1e-4


class Op:
    def __init__(self, op_type: str, *operands: "Pattern"):
        self.op_type = op_type
        self.operands = operands

    def __repr__(self) -> str:
        return f"{self.op_type}({', '.join(map(repr, self.operands))})"


class Same:
    def __init__(self, name: str, pattern: "Pattern"):
        self.name = name
        self.pattern = pattern


class AnyOf:
    def __init__(self, *patterns: "Pattern"):
        self.patterns = patterns


Pattern = Union[Var, Const, Op, Same, AnyOf]
Bindings = dict




def const_value(graph: FrozenGraph, ref: str) -> Optional[np.ndarray]:
    """The value of a CONST tensor (a Const node, or folded if small), else None."""
    ref = graph.through_identity(ref)
    node = graph.nodes[node_of(ref)]
    if graph.kind(ref) != Kind.CONST:
        return None
    if node.op == "Const":
        return tf.make_ndarray(node.attr["value"].tensor)
    shape = graph.tensor(ref).shape
    if not shape.is_fully_defined() or shape.num_elements() > 1024:
        return None
    return graph.fold([ref])[tensor_name(ref)]


def match(graph: FrozenGraph, pattern: Pattern, ref: str,
          bindings: Optional[Bindings] = None) -> Optional[Bindings]:
    """Bindings (name -> tensor ref, plus "$nodes": the matched op nodes) if `ref` matches."""
    b: Bindings = {"$nodes": []} if bindings is None else bindings
    ref = graph.through_identity(ref)
    if isinstance(pattern, Var):
        if pattern.name in b:
            return b if b[pattern.name] == ref else None
        return {**b, pattern.name: ref}
    if isinstance(pattern, Const):
        value = const_value(graph, ref)
        if value is None or value.size == 0:
            return None
        ok = np.allclose(value, pattern.value, rtol=pattern.rtol, atol=0)
        return b if ok else None
    if isinstance(pattern, Same):
        key = "$same:" + pattern.name
        if key in b:
            return b if b[key] == ref else None
        found = match(graph, pattern.pattern, ref, b)
        return None if found is None else {**found, key: ref}
    if isinstance(pattern, AnyOf):
        for option in pattern.patterns:
            found = match(graph, option, ref, b)
            if found is not None:
                return found
        return None
    node = graph.nodes[node_of(ref)]
    if node.op != pattern.op_type or ref.split(":")[1] != "0":
        return None
    inputs = graph.data_inputs(node.name)
    if len(inputs) != len(pattern.operands):
        return None
    orders = [inputs]
    if pattern.op_type in COMMUTATIVE and len(inputs) == 2:
        orders.append(inputs[::-1])
    for order in orders:
        found: Optional[Bindings] = {**b, "$nodes": [*b["$nodes"], node.name]}
        for operand, inp in zip(pattern.operands, order):
            found = match(graph, operand, inp, found)
            if found is None:
                break
        if found is not None:
            return found
    return None
