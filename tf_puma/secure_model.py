"""Loading and calling a secure SavedModel written by `tf-puma convert`.

    conn = tf_puma.connect("cluster.json")   # parties started with their own --shares
    model = tf_puma.load("OUT_DIR")          # for tf_puma.connection.current(), or connection=
    outputs = model(input_ids=ids, attention_mask=mask)   # plaintext, on the client

`tf.saved_model.load(OUT_DIR)` works too once the op library is loaded; `tf_puma.load` loads the
op library, checks inputs against the manifest so mistakes are named before anything runs, and
registers only the signature's functions (tf_puma.function_library: no Python graph per op).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from tf_puma import _ops
from tf_puma import connection as connection_lib
from tf_puma import manifest as manifest_lib
from tf_puma.cluster import PartyUnavailable, await_parties
from tf_puma.connection import Connection
from tf_puma.function_library import FunctionLibrary, SignatureFunction
from tf_puma.manifest import Manifest, ManifestError  # noqa: F401 - ManifestError re-exported


class InputError(ValueError):
    """An input does not match the secure model's signature."""


def read_manifest(model_dir: str) -> Manifest:
    """The model's manifest; ManifestError (a ValueError) says what is wrong."""
    return manifest_lib.read(model_dir)


def check_inputs(manifest: Manifest, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inputs as arrays of the signature's dtypes; raises InputError naming what is wrong."""
    spec = manifest.inputs
    missing = sorted(set(spec) - set(inputs))
    extra = sorted(set(inputs) - set(spec))
    if missing or extra:
        raise InputError(f"the model takes inputs {sorted(spec)}; missing {missing}, "
                         f"unexpected {extra}")
    out = {}
    for name, want in spec.items():
        value = inputs[name]
        dtype = tf.as_dtype(want.dtype)
        try:
            array = value.numpy() if isinstance(value, tf.Tensor) else np.asarray(value)
        except ValueError as err:  # ragged nested lists
            raise InputError(f"input {name!r}: not a rectangular array of shape "
                             f"{list(want.shape)} ({err})") from None
        if array.dtype.kind not in "iuf" or (dtype.is_integer and array.dtype.kind == "f"):
            raise InputError(f"input {name!r}: expected {dtype.name} values, got "
                             f"{array.dtype.name}")
        if tuple(array.shape) != want.shape:
            raise InputError(f"input {name!r}: expected shape {list(want.shape)} (fixed when the "
                             f"model was converted), got {list(array.shape)}")
        if array.size and dtype.is_integer:
            info = np.iinfo(dtype.as_numpy_dtype)
            low, high = array.min(), array.max()
            if low < info.min or high > info.max:
                raise InputError(f"input {name!r}: values {low}..{high} do not fit {dtype.name} "
                                 f"({info.min}..{info.max}); they would wrap around")
        if array.size and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InputError(f"input {name!r}: contains NaN or infinity at "
                             f"{np.argwhere(~np.isfinite(array))[0].tolist()}")
        out[name] = array.astype(dtype.as_numpy_dtype)
    return out


RESTART_GRACE_S = 8.0  # a party that does not answer may be restarting: wait this long first
RESTART_RERUNS = 3  # reruns after restarts: the three watchers recycle their servers each on its
# own clock, so one call can meet up to three restarts in a row
FIRST_CALL_DEADLINE_S = 600.0  # graph registration on the parties: ~55 s for BERT-base here

# What a call through a party that died, stalled or restarted raises (TF's gRPC runtime).
_PARTY_FAULTS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                 tf.errors.DeadlineExceededError)


class ModelClosed(RuntimeError):
    """The model was closed (its functions released on the parties)."""


class SecureModel:
    """A loaded secure SavedModel: call it with named plaintext inputs.

    Every call has a deadline: `deadline_s` if given, else 600 s for the first call (the
    parties register the graph) and 10x the last call + 30 s after. When it passes, the parties
    are asked for their status and the error names the one that does not answer
    (cluster.PartyUnavailable), or says all answer (TimeoutError): never a silent hang.

    A party that dies during a call, and is not back within RESTART_GRACE_S (a watcher restarting
    or recycling its server takes ~3 s), fails it with PartyUnavailable naming the party; once all
    three answer again the next call reconnects by itself (a restarted party lost this client's
    context; TensorFlow re-creates it) and, if a call meets a party that restarted since the last
    one, that call is reconnected and run again (up to RESTART_RERUNS times: each party's watcher
    may recycle its server at its own moment): a fresh execution with fresh keys and streams
    each time, never a partial result.
    """

    def __init__(self, model_dir: str, signature: str | None = None,
                 deadline_s: float | None = None, connection: Connection | None = None):
        self.connection = connection or connection_lib.current()
        if self.connection is None:
            raise RuntimeError("connect to the cluster before loading a secure model: "
                               "tf_puma.connect('cluster.json') (or tf_puma.LocalCluster() for a "
                               "local trial), then tf_puma.load(...)")
        _ops.load()
        self.dir = model_dir
        self.manifest = read_manifest(model_dir)
        self.signature_name = signature or self.manifest.signature
        names = [self.signature_name] + [n for n in self._extra_signatures()
                                         if n != self.signature_name]
        self.library: FunctionLibrary | None = FunctionLibrary(model_dir, names)
        self.signature: SignatureFunction | None = self.library.signatures[self.signature_name]
        self.deadline_s = deadline_s
        self._last_call_s: float | None = None
        self._needs_reconnect = False
        self.connection.track(self)

    def _extra_signatures(self) -> list[str]:
        """Signatures loaded beside the called one (a generation model's prefill)."""
        return []

    def _deadline(self) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        if self._last_call_s is None:
            return FIRST_CALL_DEADLINE_S
        return 10 * self._last_call_s + 30

    def close(self) -> None:
        """Releases the model's functions on the parties; later calls raise ModelClosed."""
        self.signature = None
        if self.library is not None:
            self.library.release()
            self.library = None

    def __call__(self, **inputs: Any) -> dict[str, tf.Tensor]:
        if self.manifest.generation is not None:
            raise TypeError(f"{self.dir} is a generation model: use "
                            "tf_puma.load_generator(...).generate(...)")
        arrays = check_inputs(self.manifest, inputs)
        self._ready()
        feeds = {k: tf.constant(v) for k, v in arrays.items()}
        try:
            return self._call_with_deadline(feeds)
        except _PARTY_FAULTS as err:
            fault = err
        self._needs_reconnect = True  # until a rerun answers
        for _ in range(RESTART_RERUNS):
            try:  # which party? one that does not answer now, or one that restarted
                self.connection.check(timeout=5.0)
            except PartyUnavailable as down:
                if not self._party_returns(RESTART_GRACE_S):
                    raise PartyUnavailable(f"{down} The call failed ({_first_line(fault)}); the "
                                           "client reconnects by itself once the party answers "
                                           "again.") from None
            try:  # reconnecting asks every party to update the context: another party's
                self.connection.reconnect()  # server may be the one going down by now
                self._needs_reconnect = False
                return self._call_with_deadline(feeds)
            except _PARTY_FAULTS as err:
                fault = err
                self._needs_reconnect = True
        restarted = _party_in(fault)
        raise PartyUnavailable(
            f"party {restarted if restarted is not None else '?'} restarted again: the call "
            f"failed {RESTART_RERUNS + 1} times, reconnected after each ({_first_line(fault)})"
        ) from None

    def _ready(self) -> None:
        """Before a call: ModelClosed once closed; reconnects after a party fault was seen
        (PartyUnavailable while a party is still down)."""
        if self.signature is None:
            raise ModelClosed(f"the secure model {self.dir} was closed; load it again")
        if self._needs_reconnect:
            try:
                self.connection.reconnect()
            except _PARTY_FAULTS as err:  # a party went down between the check and the update
                party = _party_in(err)
                raise PartyUnavailable(
                    f"party {party if party is not None else '?'} went down while this client "
                    f"reconnected ({_first_line(err)}); the next call tries again") from None
            self._needs_reconnect = False

    def _party_returns(self, within_s: float) -> bool:
        """Whether all parties answer again within `within_s` (a party being restarted by its
        watcher, tf_puma/apps/supervisor.py, is back in ~3 s)."""
        try:
            await_parties(self.connection.cluster, within_s, check_timeout=1.0)
            return True
        except PartyUnavailable:
            return False

    def _call_with_deadline(self, feeds: dict[str, tf.Tensor],
                            signature: SignatureFunction | None = None) -> dict[str, tf.Tensor]:
        result: dict[str, Any] = {}
        signature = signature or self.signature

        def call() -> None:
            try:
                result["out"] = dict(signature(**feeds))
            except BaseException as err:  # noqa: BLE001 - handed to the caller below
                result["err"] = err

        deadline = self._deadline()
        start = time.monotonic()
        worker = threading.Thread(target=call, name="tf-puma-call", daemon=True)
        worker.start()
        worker.join(deadline)
        if worker.is_alive():
            self._needs_reconnect = True
            self.connection.check(timeout=5.0)  # names a party that is stuck
            raise TimeoutError(f"the secure call did not finish within its deadline of "
                               f"{deadline:.0f} s although all parties answer; pass a longer "
                               "deadline_s to tf_puma.load if the model is that slow")
        if "err" in result:
            raise result["err"]
        self._last_call_s = time.monotonic() - start
        return result["out"]


def _first_line(err: BaseException) -> str:
    """The line of a TF runtime error that says what happened (not its graph-location chatter)."""
    text = getattr(err, "message", None) or str(err)
    origin = ""  # "From /job:client/replica:0/task:0:" alone on its line: the fault is below
    for line in text.splitlines():
        line = re.sub(r"^\s*\(\d+\)\s*", "", line).strip()
        if line and not line.startswith(("Graph execution error", "Detected at node",
                                         "<stack traces", "defined at", "[[", "Additional")) \
                and "root error(s) found" not in line:
            if re.fullmatch(r"From /job:\S+:", line) and not origin:
                origin = line + " "
                continue
            return f"{type(err).__name__}: {origin}{line}"[:300]
    return f"{type(err).__name__}: {origin.strip()}" if origin else type(err).__name__


def _party_in(err: BaseException) -> int | None:
    """The party task an error from TF's runtime names, if any."""
    found = re.search(r"/job:puma/replica:0/task:(\d)", str(err))
    return int(found.group(1)) if found else None


def load(model_dir: str, signature: str | None = None, deadline_s: float | None = None,
         connection: Connection | None = None) -> SecureModel:
    """Loads a secure model for the given connection (default: the process's, from
    tf_puma.connect). `deadline_s` bounds every call (default: see SecureModel)."""
    return SecureModel(model_dir, signature, deadline_s, connection)
