"""One version of a secure model, loaded the way TF Serving loads a SavedModel: the TF1
SavedModel loader in a `Session` whose target is the cluster's client task
(`SessionBundleConfig.session_target`), with `share_cluster_devices_in_session` so the
signature's graph sees the parties' devices.

A request with fewer rows than the converted batch is padded (copies of its first row) and its
outputs cut back; more rows run as several secure calls of one batch each. Calls run one at
a time: concurrent requests are packed by the batcher instead (a secure call's time is mostly
rounds, so one packed call beats several interleaved ones).

Faults: a call through a party that does not answer waits up to `restart_grace_s` for it (a
party's watcher restarts its server in ~3 s), then fails with PartyUnavailable naming it; a
party that restarted lost this session on its side (AbortedError "Session handle is not
found"): the model is loaded into a new session and the call is run again, up to
RESTART_RERUNS times (each party's watcher may recycle its server at its own moment, and the
cluster's channels to a restarted party reconnect with gRPC's backoff).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from tf_puma import secure_model
from tf_puma.cluster import Cluster, PartyUnavailable, await_parties, check_parties
from tf_puma.manifest import Manifest

FIRST_CALL_TIMEOUT_S = 600.0
RESTART_GRACE_S = 8.0
RESTART_RERUNS = secure_model.RESTART_RERUNS  # reruns after restarts, as a Python client's
RECONNECT_PAUSE_S = 1.0  # before the n-th rerun: n times this
_PARTY_FAULTS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError)
HEALTH_EVERY_S = 1.0
# A party that refuses connections is gone at once; one that only fails to answer in time (a
# stopped process, or a loaded machine's slow gRPC threads) must keep failing this long.
HEALTH_MISS_S = 5.0


class ServingError(ValueError):
    """A request the model cannot answer as asked (becomes INVALID_ARGUMENT / HTTP 400)."""


def session_config() -> tf.compat.v1.ConfigProto:
    """What TF Serving's `session_config` must hold for a secure model (docs/serving.md)."""
    config = tf.compat.v1.ConfigProto()
    config.experimental.share_cluster_devices_in_session = True
    config.graph_options.rewrite_options.disable_meta_optimizer = True  # see connection.connect
    return config


class Servable:
    """A secure model version answering `predict` through a TF1 session on `target`."""

    def __init__(self, name: str, version: int, path: str, target: str, cluster: Cluster):
        self.name, self.version, self.path = name, version, path
        self.target = target
        self.cluster = cluster
        self.manifest: Manifest = secure_model.read_manifest(path)
        if self.manifest.generation is not None:
            raise secure_model.ManifestError(
                f"{path} is a generation model (tf-puma convert --generate), which keeps a KV "
                "cache on the parties between calls; serve a forward-pass conversion instead, "
                "or generate with `tf-puma generate`")
        self._lock = threading.Lock()
        self._last_call_s: float | None = None
        self._party_failed: Exception | None = None  # the fault of a call a party missed
        self.calls = 0
        self._load()

    def _load(self) -> None:
        graph = tf.Graph()
        session = tf.compat.v1.Session(target=self.target, graph=graph, config=session_config())
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], self.path)
        self.graph, self.session = graph, session
        self.signature_defs = dict(meta.signature_def)

    @property
    def signature_names(self) -> list[str]:
        return [self.manifest.signature]

    @property
    def batch(self) -> int:
        """Rows per secure call: the inputs' (common) first dimension."""
        return next(iter(self.manifest.inputs.values())).shape[0]

    def rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        """The request's row count (its inputs' common first dimension)."""
        spec = self.manifest.inputs
        rows = {name: (np.shape(value)[0] if np.ndim(value) else None)
                for name, value in inputs.items()}
        for name, want in spec.items():
            if name in inputs and np.ndim(inputs[name]) != len(want.shape):
                raise ServingError(f"input {name!r}: expected {len(want.shape)} dimensions "
                                   f"(shape [rows, {', '.join(map(str, want.shape[1:]))}]), got "
                                   f"shape {list(np.shape(inputs[name]))}")
        counts = set(rows.values())
        if len(counts) != 1 or None in counts:
            raise ServingError(f"inputs have different row counts: {rows}")
        return counts.pop()

    def validate(self, inputs: Mapping[str, Any], signature: str | None = None,
                 output_filter: list[str] | None = None
                 ) -> tuple[dict[str, np.ndarray], int, list[str]]:
        """The request as arrays, its row count and the outputs to return; ServingError or
        secure_model.InputError say what is wrong (every row block is checked as it would run)."""
        if signature not in (None, "", self.manifest.signature):
            raise ServingError(f"model {self.name!r} has no signature {signature!r}; it serves "
                               f"{self.manifest.signature!r}")
        outputs = list(output_filter or self.manifest.outputs)
        unknown = sorted(set(outputs) - set(self.manifest.outputs))
        if unknown:
            raise ServingError(f"unknown output(s) {unknown}; the model has "
                               f"{sorted(self.manifest.outputs)}")
        missing = sorted(set(self.manifest.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(self.manifest.inputs))
        if missing or extra:
            raise ServingError(f"the model takes inputs {sorted(self.manifest.inputs)}; missing "
                               f"{missing}, unexpected {extra}")
        arrays = {}
        for name, value in inputs.items():
            try:
                arrays[name] = np.asarray(value)
            except ValueError as err:  # ragged nested lists
                raise ServingError(f"input {name!r}: not a rectangular array ({err})") from None
            if arrays[name].dtype == object:
                raise ServingError(f"input {name!r}: not a rectangular array of numbers")
        rows = self.rows_of(arrays)
        if rows == 0:
            raise ServingError("the request has no rows")
        for chunk, _ in self._chunks(arrays, rows):
            secure_model.check_inputs(self.manifest, chunk)
        return arrays, rows, outputs

    def _chunks(self, arrays: dict[str, np.ndarray], rows: int):
        """Blocks of `batch` rows, the last padded with copies of its first row (zeros could
        leave the model outside its range: an all-zero attention mask divides by zero in mean
        pooling); yields (block, real rows)."""
        batch = self.batch
        for start in range(0, rows, batch):
            chunk = {k: v[start:start + batch] for k, v in arrays.items()}
            got = len(next(iter(chunk.values())))
            if got < batch:  # copies of the first row, as TF Serving's batching pads
                chunk = {k: np.concatenate([v, np.repeat(v[:1], batch - got, axis=0)])
                         for k, v in chunk.items()}
            yield chunk, got

    def predict(self, inputs: Mapping[str, Any], signature: str | None = None,
                output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs for `inputs` (any number of rows); ServingError, secure_model.InputError,
        PartyUnavailable or TimeoutError say what went wrong."""
        arrays, rows, outputs = self.validate(inputs, signature, output_filter)
        pieces: list[dict[str, np.ndarray]] = []
        for chunk, got in self._chunks(arrays, rows):
            out = self._call(secure_model.check_inputs(self.manifest, chunk), outputs)
            pieces.append({k: (v[:got] if self._batched(k) else v) for k, v in out.items()})
        if len(pieces) == 1:
            return pieces[0]
        return {k: np.concatenate([p[k] for p in pieces]) for k in outputs}

    def _batched(self, output: str) -> bool:
        shape = self.manifest.outputs[output].shape
        return bool(shape) and shape[0] == self.batch

    def _call(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        signature = self.signature_defs[self.manifest.signature]
        fetches = {k: signature.outputs[k].name for k in outputs}
        feed_dict = {signature.inputs[k].name: v for k, v in feeds.items()}
        with self._lock:
            if self._party_failed is not None:  # a party was down at the last call: is it back?
                self._wait_for_parties(self._party_failed)
                self._load()
                self._party_failed = None
            try:
                return self._run(fetches, feed_dict)
            except _PARTY_FAULTS as err:  # a party died, or restarted (AbortedError)
                fault: Exception = err
            for rerun in range(RESTART_RERUNS):  # a new session each time; fresh keys and streams
                self._party_failed = fault
                self._wait_for_parties(fault, grace_s=RESTART_GRACE_S)
                # The cluster's own channels to a restarted party reconnect with gRPC's backoff
                # (TF caps it at 1 s) after the health check's fresh channel already got through.
                time.sleep(RECONNECT_PAUSE_S * rerun)
                self._load()
                self._party_failed = None
                try:
                    return self._run(fetches, feed_dict)
                except _PARTY_FAULTS as err:
                    fault = err
            self._party_failed = fault
            self._wait_for_parties(fault, grace_s=0)  # names a party that is down now
            raise PartyUnavailable(f"a party restarted during the call and the call failed "
                                   f"{RESTART_RERUNS + 1} times, in a new session after each "
                                   f"({_first_line(fault)})") from None

    def _run(self, fetches: dict[str, str], feed_dict: dict[str, np.ndarray]) -> dict:
        """One session.run, watched: TF1's distributed runtime does not end a step whose
        party died (the client's partition waits for that party's tensors forever), so the run
        happens in a thread while the parties are asked for their status every
        HEALTH_EVERY_S; a party that refuses connections or does not answer for HEALTH_MISS_S
        in a row (one slow answer on a loaded host is not a fault), or the deadline (first call
        600 s, then 10x the last + 30 s), abandons the run and its session (the next call loads
        a new one) and raises UnavailableError / TimeoutError."""
        timeout = (FIRST_CALL_TIMEOUT_S if self._last_call_s is None
                   else 10 * self._last_call_s + 30)
        session = self.session
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["out"] = session.run(fetches, feed_dict)
            except BaseException as err:  # noqa: BLE001 - handed to the caller below
                result["err"] = err

        start = time.monotonic()
        worker = threading.Thread(target=run, name="tf-puma-serve-call", daemon=True)
        worker.start()
        missed_since: float | None = None  # when the parties' current run of misses began
        while True:
            worker.join(HEALTH_EVERY_S)
            if not worker.is_alive():
                break
            try:
                check_parties(self.cluster, timeout=HEALTH_EVERY_S)
                missed_since = None
            except PartyUnavailable as down:
                missed_since = missed_since or time.monotonic()
                if down.refused or time.monotonic() - missed_since >= HEALTH_MISS_S:
                    self._abandon()
                    raise tf.errors.UnavailableError(None, None, str(down)) from None
            if time.monotonic() - start > timeout:
                self._abandon()
                raise TimeoutError(f"the secure call did not finish within {timeout:.0f} s "
                                   "although all parties answer")
        if "err" in result:
            if isinstance(result["err"], tf.errors.InvalidArgumentError):  # the graph's checks
                raise ServingError(_first_line(result["err"]).split(": ", 1)[-1]) from None
            raise result["err"]
        self._last_call_s = time.monotonic() - start
        self.calls += 1
        return result["out"]

    def _abandon(self) -> None:
        """Leaves a stuck run to its thread; later calls use a new session."""
        self._party_failed = self._party_failed or RuntimeError("a call was abandoned")

    def _wait_for_parties(self, fault: Exception, grace_s: float = RESTART_GRACE_S) -> None:
        """Returns once all parties answer (within `grace_s`); else PartyUnavailable."""
        try:
            await_parties(self.cluster, grace_s)
        except PartyUnavailable as down:
            raise PartyUnavailable(f"{down} The call failed ({_first_line(fault)}); the server "
                                   "recovers by itself once the party answers again.") from None

    def close(self) -> None:
        self.session.close()


def _first_line(err: BaseException) -> str:
    return secure_model._first_line(err)  # noqa: SLF001 - one wording for runtime faults
