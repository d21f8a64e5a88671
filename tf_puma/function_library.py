"""A SavedModel's signatures as functions of the eager context, without `tf.saved_model.load`.

`tf.saved_model.load` rebuilds every function of the model's library as a Python FuncGraph, one
Python object per op, before anything is called. A client only calls the signatures, whose
graphs (tens of thousands of ops each for a secure model) then sit in its memory for nothing:
for SmolLM2's generation model (two signatures of 77k ops) that load took 32 s and 1.8 GB.

Here the client registers the FunctionDefs a signature needs with the eager context as they are
(C++ only) and calls the signature's function by name, as a restored ConcreteFunction does when
executing eagerly (`context.call_function`: TF's runtime partitions it across the devices named
in it, the party tasks included). Every function is registered under a name of its own for this
load, so two models (or two loads of one) in a process never meet. `release()` removes them
again, which also releases their instantiations on the parties.

Only the client holds the functions' bodies. TensorFlow sends every function a client adds to
every remote task, but a party runs only its own partition of a signature, which TF registers
with it at the first call: the whole functions cost each party as much again (~350 MiB for
SmolLM2's generation model). So each function is added by name only (the parties keep that
empty definition until `release()` removes it) and the op library's
TfPumaReplaceFunctionLocally gives it its body in this process.

The client needs a body only while TensorFlow instantiates a signature (its first call, and
again after a reconnect). Between those, each function is in the context's library as a stub:
its signature, with outputs that name RELEASED_NODE, a node it does not have. The bodies wait
here, serialized and compressed, and a signature's closure gets them back for its first call
only. A call TensorFlow has to instantiate again fails on the stub (InvalidArgumentError naming
RELEASED_NODE) before anything runs, and is run again with the bodies. For SmolLM2's generation
model this keeps the two functions' ~2 x 77k parsed nodes out of the client's heap: the decode
function's instantiation, the client's peak, happens without the prefill's body.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import threading
import zlib
from typing import Iterable, Iterator, Mapping

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, function_pb2, node_def_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.eager import context

_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
# Node attributes no runtime step reads, dropped before registration: the tracer's shape hints
# and the rewriter's transfer marks (tf_puma.audit reads those from the SavedModel itself). They
# are copied into every graph TensorFlow builds from a function, on the client and, for each
# party's partition, on that party: without them a party's peak over a 128-token SmolLM2
# generation fell from 4,905-4,952 to 4,751-4,795 MiB (scratch A/B, same model and calls).
_HINT_ATTRS = ("_output_shapes", "_puma_sent_to")
# The node a stub's outputs name: instantiating a stub fails with this name in the message.
RELEASED_NODE = "tf_puma_body_released"
_load_ids = itertools.count()
_load_ids_lock = threading.Lock()


class SignatureFunction:
    """One signature of a SavedModel, callable with its named inputs (tensors, including
    tensors on other tasks) and returning {output name: tensor}, like
    `tf.saved_model.load(d).signatures[name]`."""

    def __init__(self, name: str, function_name: str, input_names: list[str],
                 output_index: dict[str, int], num_outputs: int, bodies: _Bodies,
                 closure: list[str]):
        self.name = name
        self.function_name = function_name
        self.input_names = input_names      # the order of the function's arguments
        self.output_index = output_index    # output name -> position in the function's outputs
        self.num_outputs = num_outputs
        self.bodies = bodies                # where its library's bodies wait
        self.closure = closure              # the functions its instantiation reads
        self.instantiations = 0             # times TensorFlow instantiated it with the bodies
        self._instantiated = False

    def __call__(self, **inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        missing = [k for k in self.input_names if k not in inputs]
        extra = sorted(set(inputs) - set(self.input_names))
        if missing or extra:
            raise TypeError(f"signature {self.name!r} takes {self.input_names}; missing "
                            f"{missing}, unexpected {extra}")
        args = [tf.convert_to_tensor(inputs[k]) for k in self.input_names]
        flat = self._call(args)
        return {key: flat[i] for key, i in self.output_index.items()}

    def _call(self, args: list[tf.Tensor]) -> list[tf.Tensor]:
        def call() -> list[tf.Tensor]:
            return context.context().call_function(self.function_name.encode(), args,
                                                   self.num_outputs)

        if self._instantiated:
            try:
                return call()  # TensorFlow's cached instantiation: the stubs are not read
            except tf.errors.InvalidArgumentError as err:
                if RELEASED_NODE not in str(err):
                    raise
                self._instantiated = False  # TF instantiates again (a reconnect): nothing ran
        with self.bodies.lock:  # one instantiation at a time; a second caller finds it done
            if self._instantiated:
                return call()
            self.bodies.give(self.closure)
            try:
                flat = call()
            finally:
                self.bodies.take(self.closure)
            self._instantiated = True
            self.instantiations += 1
            return flat


class FunctionLibrary:
    """The named signatures of the SavedModel in `model_dir`, registered for eager calls."""

    def __init__(self, model_dir: str, signatures: Iterable[str]):
        meta_graph = _read_meta_graph(model_dir)
        library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        nodes = {n.name: n for n in meta_graph.graph_def.node}
        with _load_ids_lock:
            suffix = f"_tfpuma{next(_load_ids)}"
        ctx = context.context()
        self.bodies = _Bodies(ctx)
        self.signatures: dict[str, SignatureFunction] = {}
        needed: list[str] = []
        for name in signatures:
            if name not in meta_graph.signature_def:
                raise KeyError(f"{model_dir} has no signature {name!r} (it has "
                               f"{sorted(k for k in meta_graph.signature_def if '__' not in k)})")
            signature, called = _signature_function(model_dir, name,
                                                    meta_graph.signature_def[name], nodes,
                                                    library, suffix, self.bodies)
            self.signatures[name] = signature
            needed.append(called)
        self._names: list[str] = []
        ctx.ensure_initialized()
        for renamed in _closure(needed, library):  # renamed in place: no second copy
            renamed.signature.name += suffix
            for node in renamed.node_def:
                for hint in _HINT_ATTRS:
                    if hint in node.attr:
                        del node.attr[hint]
                if node.op in library:  # a function called as an op
                    node.op += suffix
                for ref in _function_refs(node):
                    if ref.name in library:
                        ref.name += suffix
            self.bodies.add(renamed)
            self._names.append(renamed.signature.name)

    def release(self) -> None:
        """Removes this load's functions from the eager context (idempotent)."""
        ctx = context.context()
        for name in self._names:
            if ctx.has_function(name):
                ctx.remove_function(name)
        self._names = []
        self.signatures = {}
        self.bodies.forget()


class _Bodies:
    """The library's function bodies while the context holds their stubs: serialized and
    compressed here (zlib level 1: a 77k-node secure function, 23 MiB serialized, 2 MiB, 0.05 s
    to decompress; parsed in the library it took ~80 MiB)."""

    def __init__(self, ctx: context.Context):
        self._ctx = ctx
        self._held: dict[str, bytes] = {}
        self._stubs: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def add(self, fdef: function_pb2.FunctionDef) -> None:
        """Adds `fdef` to the context as its stub (its name alone on the remote tasks) and
        keeps its body here."""
        name = fdef.signature.name
        self._held[name] = zlib.compress(fdef.SerializeToString(), 1)
        self._stubs[name] = _stub(fdef).SerializeToString()
        name_only = function_pb2.FunctionDef()
        name_only.signature.name = name
        self._ctx.add_function_def(name_only)
        try:
            _replace_here(self._ctx, self._stubs[name], name)
        except RuntimeError:
            self._ctx.remove_function(name)
            raise

    def body(self, name: str) -> function_pb2.FunctionDef:
        """Function `name` as it was registered, body included."""
        return function_pb2.FunctionDef.FromString(zlib.decompress(self._held[name]))

    def give(self, names: Iterable[str]) -> None:
        """Puts the bodies back (names released meanwhile are skipped: TF's NotFoundError)."""
        for name in names:
            if name in self._held:
                _replace_here(self._ctx, zlib.decompress(self._held[name]), name)

    def take(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self._stubs:
                _replace_here(self._ctx, self._stubs[name], name)

    def forget(self) -> None:
        self._held, self._stubs = {}, {}


def _stub(fdef: function_pb2.FunctionDef) -> function_pb2.FunctionDef:
    """`fdef`'s signature and attributes without a body; every output names RELEASED_NODE."""
    stub = function_pb2.FunctionDef()
    stub.signature.CopyFrom(fdef.signature)
    for key in fdef.attr:
        stub.attr[key].CopyFrom(fdef.attr[key])
    for output in fdef.signature.output_arg:
        stub.ret[output.name] = f"{RELEASED_NODE}:output:0"
    for output in fdef.signature.control_output:
        stub.control_ret[output] = RELEASED_NODE
    return stub


def _replace_here(ctx: context.Context, data: bytes, name: str) -> None:
    """Replaces function `name`'s definition in this process's library with `data`."""
    error = ctypes.create_string_buffer(1024)
    if _replace_locally()(_context_pointer(ctx), data, len(data), error, len(error)) != 0:
        raise RuntimeError(f"cannot replace function {name}: "
                           f"{error.value.decode(errors='replace')}")


@functools.lru_cache(maxsize=1)
def _replace_locally():
    """The op library's TfPumaReplaceFunctionLocally (custom_ops/client_functions.cc)."""
    from tf_puma import _ops  # noqa: PLC0415

    _ops.load()
    try:
        replace = ctypes.CDLL(_ops.library_path()).TfPumaReplaceFunctionLocally
    except AttributeError:
        raise RuntimeError(f"the op library {_ops.library_path()} predates this tf-puma (it "
                           "lacks TfPumaReplaceFunctionLocally): rebuild it with `make build` "
                           "or `make bazel-build`") from None
    replace.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                        ctypes.c_size_t]
    replace.restype = ctypes.c_int
    return replace


# Python's PyCapsule_GetPointer with its own prototype (ctypes.pythonapi's is shared).
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def _context_pointer(ctx: context.Context) -> int:
    """The TFE_Context* inside the eager context's handle (a PyCapsule without a name)."""
    return _capsule_pointer(ctx._handle, None)  # noqa: SLF001 - TF's handle, no public getter


def _read_meta_graph(model_dir: str) -> meta_graph_pb2.MetaGraphDef:
    path = os.path.join(model_dir, "saved_model.pb")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise FileNotFoundError(f"{model_dir} is not a SavedModel: cannot read {path} "
                                f"({err.strerror})") from None
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(data)
    for meta_graph in saved.meta_graphs:
        if tf.saved_model.SERVING in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"{path} has no MetaGraph tagged 'serve'")


def _signature_function(model_dir: str, name: str, signature: meta_graph_pb2.SignatureDef,
                        nodes: Mapping, library: Mapping, suffix: str, bodies: _Bodies
                        ) -> tuple[SignatureFunction, str]:
    """The signature's call node in the SavedModel's graph: which function, its arguments in
    order (each one of the signature's inputs) and where each output comes from."""
    callers = {t.name.split(":")[0] for t in signature.outputs.values()}
    if len(callers) != 1 or nodes.get(next(iter(callers))) is None \
            or nodes[next(iter(callers))].op not in _CALL_OPS:
        raise ValueError(f"{model_dir}: signature {name!r} is not one function call (outputs "
                         f"from {sorted(callers)}); load it with tf.saved_model.load")
    call = nodes[callers.pop()]
    input_of = {t.name.split(":")[0]: key for key, t in signature.inputs.items()}
    arguments = [i.split(":")[0] for i in call.input if not i.startswith("^")]
    captured = [a for a in arguments if a not in input_of]
    if captured:
        raise ValueError(f"{model_dir}: signature {name!r} reads state that is not one of its "
                         f"inputs ({captured[:3]}); load it with tf.saved_model.load")
    called = call.attr["f"].func.name
    if called not in library:
        raise ValueError(f"{model_dir}: signature {name!r} calls {called!r}, which the "
                         "SavedModel's function library lacks")
    outputs = {key: int(t.name.split(":")[1]) if ":" in t.name else 0
               for key, t in signature.outputs.items()}
    num_outputs = len(library[called].signature.output_arg)
    closure = [f.signature.name + suffix for f in _closure([called], library)]
    return (SignatureFunction(name, called + suffix, [input_of[a] for a in arguments], outputs,
                              num_outputs, bodies, closure), called)


def _closure(roots: list[str], library: Mapping) -> list[function_pb2.FunctionDef]:
    """The functions `roots` call, directly or not (If/While branches, nested calls)."""
    seen: dict[str, None] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in library:
            continue
        seen[name] = None
        for node in library[name].node_def:
            if node.op in library:
                stack.append(node.op)
            stack.extend(ref.name for ref in _function_refs(node))
    return [library[name] for name in seen]


def _function_refs(node: node_def_pb2.NodeDef) -> Iterator[attr_value_pb2.NameAttrList]:
    """The functions a node's attrs name (If/While branches, a call's `f`, nested in a func
    attr's own attrs), as the protos themselves: renaming one renames the reference."""
    stack = list(node.attr.values())
    while stack:
        value = stack.pop()
        kind = value.WhichOneof("value")
        if kind == "func":
            yield value.func
            stack.extend(value.func.attr.values())
        elif kind == "list":
            yield from value.list.func
