"""Per-graph protocol state: devices, PRSS keys, stream ids, and every cross-party transfer.

Protocols build TensorFlow graphs (inside `tf.function`); each party's ops are placed on its own
device and TensorFlow's partitioner turns every cross-device edge into a Send/Recv over gRPC. All
such edges go through `transfer`, which marks the sending op, counts the bytes and rounds, and
lets tests record each party's view; it adds no op (TensorFlow sends a tensor once per receiving
device however many ops there read it). `tf_puma.audit` checks a traced graph has no other
cross-device edge and draws no PRG output twice.

PRSS (pseudo-random secret sharing): on every execution of a secure graph each party i draws a
fresh 128-bit key k_i from its OS (PumaNewKey) and sends it to party i-1 only, so party i holds
(k_i, k_{i+1}); the client and the third party never see it. Fresh keys per execution make every
call's randomness fresh without any counter the client could replay or parties could desync; one
execution separates its uses of a key by a stream id unique in the graph: `new_stream(family)`
gives each PRG-drawing kernel call its own stream, and that call owns every sub of it. The key exchange runs in
parallel with the client's input sharing, so it adds no round to the critical path.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator, Sequence, Union

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.framework.ops import EagerTensor

from tf_puma import _ops, costs
from tf_puma.cluster import CLIENT_DEVICE, NUM_PARTIES, party_device

Endpoint = Union[int, str]  # a party index or "client"
STREAM_FAMILIES = ("zero_share", "xor_zero_share", "trunc_pr", "b2a", "prg")  # prg_draws.h families
CLIENT = costs.CLIENT
# On an op whose outputs `transfer` sends: "SLOT>ENDPOINT" for each output (its flat index) and
# receiver ("0".."2", "client"), e.g. "1>2": output 1 goes to party 2.
SENT_TO_ATTR = "_puma_sent_to"


def device(endpoint: Endpoint) -> str:
    return CLIENT_DEVICE if endpoint == CLIENT else party_device(int(endpoint))


def static_num_elements(shape: tf.TensorShape) -> int:
    """Elements of a static shape; secure graphs have static shapes so costs are exact."""
    if not shape.is_fully_defined():
        raise ValueError(f"tf-puma transfers need static shapes (to count their bytes), got {shape}")
    return int(np.prod(shape.as_list(), dtype=np.int64))


class _ViewRecorder:
    """Every tensor each party receives while active (security tests)."""

    def __init__(self) -> None:
        self.received: list[list[tf.Tensor]] = [[] for _ in range(NUM_PARTIES)]


_local = threading.local()


def _recorders() -> list[_ViewRecorder]:
    if not hasattr(_local, "recorders"):
        _local.recorders = []
    return _local.recorders


@contextlib.contextmanager
def record_views() -> Iterator[_ViewRecorder]:
    """Records the tensors each party receives in transfers made inside the block."""
    rec = _ViewRecorder()
    _recorders().append(rec)
    try:
        yield rec
    finally:
        _recorders().remove(rec)


def transfer(tensor: tf.Tensor, src: Endpoint, dst: Endpoint) -> tf.Tensor:
    """`tensor` (on src's device) for use by ops on dst's: one message, counted in the cost
    ledger and marked on the producing op (SENT_TO_ATTR) for the placement audit. Returns the
    tensor itself: dst's ops read it and TensorFlow's partitioner makes the Send/Recv pair (an
    Identity on dst per transfer was 27% of a secure graph's ops)."""
    if src == dst:
        return tensor
    _mark_sent(tensor, dst)
    costs.record_transfer(src, static_num_elements(tensor.shape) * tensor.dtype.size)
    if dst != CLIENT:
        for rec in _recorders():
            rec.received[int(dst)].append(tensor)
    return tensor


def transfer_low32(tensor: tf.Tensor, src: Endpoint, dsts: list[Endpoint]) -> dict:
    """`tensor`'s low 32 bits for each of `dsts`, read back there as int64 in [0, 2^32): the
    value crosses as 4-byte words (uint32; TensorFlow's casts wrap), for a value used mod 2^32
    only. One message per destination, one cast on src."""
    with on(src):
        words = tf.cast(tensor, tf.uint32)
    received = {}
    for dst in dsts:
        moved = transfer(words, src, dst)
        with on(dst):
            received[dst] = tf.cast(moved, tf.int64)
    return received


def _mark_sent(tensor: tf.Tensor, dst: Endpoint) -> None:
    """Adds "SLOT>dst" to the SENT_TO_ATTR list of the op producing `tensor` (when it is an op
    of the graph being built; a function's captured inputs are its arguments, which the audit
    treats as such)."""
    op = getattr(tensor, "op", None) if not isinstance(tensor, EagerTensor) else None
    if op is None or op.graph is not tf.compat.v1.get_default_graph():
        return
    try:
        sent = list(op.get_attr(SENT_TO_ATTR))
    except ValueError:
        sent = []
    entry = f"{tensor.value_index}>{dst}".encode()
    if entry not in sent:
        op._set_attr(SENT_TO_ATTR, attr_value_pb2.AttrValue(  # noqa: SLF001 - TF's attr setter
            list=attr_value_pb2.AttrValue.ListValue(s=sent + [entry])))


class Prss:
    """The parties' keys for one graph: own[i] = k_i and next[i] = k_{i+1}, both on party i."""

    def __init__(self) -> None:
        ops = _ops.load()
        self.own: list[tf.Tensor] = []
        for i in range(NUM_PARTIES):
            with tf.device(party_device(i)):
                self.own.append(ops.puma_new_key(name="prss_key"))
        self.next = [transfer(self.own[(i + 1) % NUM_PARTIES], (i + 1) % NUM_PARTIES, i)
                     for i in range(NUM_PARTIES)]


class _GraphState:
    def __init__(self) -> None:
        self.prss: Prss | None = None
        self.next_stream = 1
        self.turns: dict[str, int] = {}  # round-robin counters (e.g. TruncPr's roles)
        self.scalars: dict = {}  # (endpoint, value key, dtype) -> constant tensor


_graph_states: "weakref.WeakKeyDictionary[tf.Graph, _GraphState]" = weakref.WeakKeyDictionary()


def exclude_from_autograph(module_globals: dict) -> None:
    """Marks a module's public functions `do_not_convert`: protocol code is plain Python that
    builds graphs, and AutoGraph transpiling it (recursively, on every trace) costs seconds."""
    name = module_globals["__name__"]
    for key, value in list(module_globals.items()):
        if (callable(value) and not key.startswith("__") and not isinstance(value, type)
                and getattr(value, "__module__", None) == name):
            module_globals[key] = tf.autograph.experimental.do_not_convert(value)


def require_graph() -> None:
    """Raises unless called while building a graph (protocols never run eagerly)."""
    if tf.executing_eagerly():
        raise RuntimeError("tf-puma protocols build graphs: call them inside a tf.function "
                           "(eager execution would route values through the client)")


def _state() -> _GraphState:
    require_graph()
    graph = tf.compat.v1.get_default_graph()
    state = _graph_states.get(graph)
    if state is None:
        state = _graph_states[graph] = _GraphState()
    return state


def prss() -> Prss:
    """This graph's PRSS keys, created on first use."""
    state = _state()
    if state.prss is None:
        with costs.protocol("prss_setup", rounds=1, detached=True), tf.name_scope("prss_setup"):
            state.prss = Prss()
    return state.prss


def new_stream(family: str) -> int:
    """A stream id unique within the current graph, for one kernel call of `family` (a family of
    custom_ops/prg_draws.h: "zero_share", "xor_zero_share", "trunc_pr", "prg").

    The call owns every sub of the stream: never pass one stream to two protocol steps (a
    product's zero share and its truncation drawing the same F(k, s, 0) let a party unmask the
    other's message). `tf_puma.audit` checks this on whole graphs.
    """
    if family not in STREAM_FAMILIES:
        raise ValueError(f"unknown PRG family {family!r}; one of {sorted(STREAM_FAMILIES)}")
    state = _state()
    stream = state.next_stream
    state.next_stream += 1
    return stream


def next_turn(name: str) -> int:
    """0, 1, 2, 0, ... per graph for `name`: rotates a protocol's roles over the parties."""
    state = _state()
    turn = state.turns.get(name, 0)
    state.turns[name] = turn + 1
    return turn % NUM_PARTIES


def const_on(endpoint: Endpoint, value, dtype: tf.DType = tf.int64) -> tf.Tensor:
    """A constant placed on `endpoint`'s device (constants must not cross devices implicitly).

    Python ints, short int sequences (shapes) and small numpy arrays are created once per graph
    and device (graphs stay small and quick to trace: MiniLM-128's trace asked for 4,382
    constants, 268 of them distinct).
    """
    key = _constant_key(value)
    if key is not None and not tf.executing_eagerly():
        cache = _state().scalars
        key = (endpoint, key, dtype)
        if key not in cache:
            with tf.device(device(endpoint)), _no_deps():
                cache[key] = tf.constant(value, dtype=dtype)
        return cache[key]
    with tf.device(device(endpoint)):
        return tf.constant(value, dtype=dtype)


@contextlib.contextmanager
def on(endpoint: Endpoint) -> Iterator[None]:
    """Builds ops on `endpoint`'s device, which `local_const` then uses (Shared.map_local and
    the other share-wise builders enter it for each party)."""
    stack = _endpoints()
    stack.append(endpoint)
    try:
        with tf.device(device(endpoint)):
            yield
    finally:
        stack.pop()


def _endpoints() -> list[Endpoint]:
    if not hasattr(_local, "endpoints"):
        _local.endpoints = []
    return _local.endpoints


def local_const(value, dtype: tf.DType) -> tf.Tensor:
    """A constant operand of a local op (a shape, an axis, a public factor) on the endpoint of
    the innermost `on`, cached as `const_on`'s (a tensor's own device does not say where its
    consumer runs: a transferred tensor is its sender's). Outside `on`: in the current device
    scope, uncached."""
    stack = _endpoints()
    if not stack:
        return tf.constant(value, dtype=dtype)
    return const_on(stack[-1], value, dtype)


SHARED_SEQUENCE_MAX = 16  # longer lists are rare and not worth a cache entry
SHARED_ARRAY_MAX = 4096  # numpy arrays up to this many elements are cached (by their bytes)


def _constant_key(value) -> tuple | None:
    """A hashable key for an int, a short sequence of ints (bool excluded) or a small numpy
    array or scalar, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("int", value)
    if (isinstance(value, (list, tuple)) and len(value) <= SHARED_SEQUENCE_MAX
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return ("seq", tuple(value))
    if isinstance(value, (np.ndarray, np.generic)) and value.size <= SHARED_ARRAY_MAX:
        array = np.asarray(value)
        return ("np", array.dtype.str, array.shape, array.tobytes())
    return None


@contextlib.contextmanager
def _no_deps() -> Iterator[None]:
    """Creates ops free of any enclosing tf.control_dependencies (shared constants)."""
    with tf.control_dependencies(None):
        yield


def shape_on(endpoint: Endpoint, shape: tf.TensorShape | Sequence[int]) -> tf.Tensor:
    dims = tf.TensorShape(shape)
    if not dims.is_fully_defined():
        raise ValueError(f"tf-puma needs static shapes inside secure graphs, got {dims}")
    return const_on(endpoint, dims.as_list())
