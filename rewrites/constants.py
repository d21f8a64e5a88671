"""Merging the secure SavedModel's duplicate constants.

Tracing makes a Const node for every Python shape, axis or index list a TensorFlow op is given
(tf.reshape(t, [4, 32]) on each party and share: 6 nodes for one value), so a traced MiniLM
layer held ~3.5 times as many Const nodes as distinct (device, value) pairs. Every node costs the
client's load (the function is imported node by node) and the first call (partitioning and
registration on the parties). This pass keeps one Const per function, device, dtype, value and
receivers (runtime.SENT_TO_ATTR) and points every consumer at it; nothing else in the graph
changes (no value is added, none is computed, no op moves to another device).
"""

from __future__ import annotations

import os

from tensorflow.core.framework import function_pb2
from tensorflow.core.protobuf import saved_model_pb2

from tf_puma.runtime import SENT_TO_ATTR

SAVED_MODEL_FILE = "saved_model.pb"


def merge_duplicate_constants(saved_model_dir: str) -> dict[str, int]:
    """Rewrites SAVED_MODEL_DIR/saved_model.pb in place; returns each function's node count
    after the merge (by function name)."""
    path = os.path.join(saved_model_dir, SAVED_MODEL_FILE)
    model = saved_model_pb2.SavedModel()
    with open(path, "rb") as fh:
        model.ParseFromString(fh.read())
    removed, counts = 0, {}
    for meta_graph in model.meta_graphs:
        for function in meta_graph.graph_def.library.function:
            removed += merge_in_function(function)
            counts[function.signature.name] = len(function.node_def)
    if removed:
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(model.SerializeToString())
        os.replace(tmp, path)
    return counts


def merge_in_function(function: function_pb2.FunctionDef) -> int:
    """Merges the function's input-free Const nodes with equal device, dtype and value into
    the first of them; returns how many nodes were removed."""
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    for node in function.node_def:
        if node.op != "Const" or node.input:
            continue
        key = (node.device, node.attr["dtype"].type,
               node.attr["value"].tensor.SerializeToString(deterministic=True),
               tuple(node.attr[SENT_TO_ATTR].list.s) if SENT_TO_ATTR in node.attr else ())
        if key in first:
            renamed[node.name] = first[key]
        else:
            first[key] = node.name
    if not renamed:
        return 0
    kept = [node for node in function.node_def if node.name not in renamed]
    for node in kept:
        for k, ref in enumerate(node.input):
            node.input[k] = _renamed_ref(ref, renamed)
    for mapping in (function.ret, function.control_ret):
        for key, ref in mapping.items():
            mapping[key] = _renamed_ref(ref, renamed)
    del function.node_def[:]
    function.node_def.extend(kept)
    return len(renamed)


def _renamed_ref(ref: str, renamed: dict[str, str]) -> str:
    """A FunctionDef reference ("node:output:0", "^node" or an argument) with a merged node
    replaced by the one kept."""
    control = ref.startswith("^")
    name, sep, rest = ref.lstrip("^").partition(":")
    if name not in renamed:
        return ref
    return ("^" if control else "") + renamed[name] + sep + rest
