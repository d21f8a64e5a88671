"""`--enable_batching`: concurrent requests packed into one secure call.

A secure call costs mostly rounds (its time hardly depends on how many of the converted batch's
rows are real), so rows of several waiting requests are packed into one call of the converted
batch size: the first waiting request opens a batch, others join until its rows are full or
`batch_timeout_micros` has passed, then one call answers them all. A request with more rows
than a batch runs on its own (Servable.predict splits it).

`--batching_parameters_file` is TF Serving's BatchingParameters text proto; the fields that
mean something here: max_batch_size (capped at the converted batch), batch_timeout_micros,
max_enqueued_batches (a full queue answers UNAVAILABLE, as TF Serving does).
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
from typing import Any, Mapping

import numpy as np

from tf_puma.apps.serving.models import RequestError
from tf_puma.apps.serving.servable import Servable


@dataclasses.dataclass
class BatchingParameters:
    max_batch_size: int = 0  # 0: the converted batch
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 64


_KNOWN = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
          "allowed_batch_sizes", "pad_variable_length_inputs"}


def parse_parameters(text: str) -> BatchingParameters:
    """TF Serving's BatchingParameters text format (`max_batch_size { value: 8 }` ...)."""
    params = BatchingParameters()
    body = re.sub(r"#[^\n]*", "", text)
    for name, value in re.findall(r"(\w+)\s*\{\s*value\s*:\s*(\w+)\s*\}", body):
        if name not in _KNOWN:
            raise ValueError(f"unknown batching parameter {name!r} (known: {sorted(_KNOWN)})")
        if hasattr(params, name):
            setattr(params, name, int(value))
    rest = re.sub(r"(\w+)\s*\{\s*value\s*:\s*\w+\s*\}|allowed_batch_sizes\s*:\s*\d+", "", body)
    if rest.strip():
        raise ValueError(f"cannot parse the batching parameters near {rest.strip()[:60]!r}")
    return params


@dataclasses.dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class Batcher:
    """Packs concurrent requests for one servable into shared secure calls (one thread)."""

    def __init__(self, servable: Servable, params: BatchingParameters):
        self.servable = servable
        batch = servable.batch
        self.rows = min(params.max_batch_size or batch, batch)
        self.timeout_s = params.batch_timeout_micros / 1e6
        self._queue: "queue.Queue[_Pending]" = queue.Queue(
            maxsize=max(1, params.max_enqueued_batches) * self.rows)
        self.packable = all(servable._batched(k) for k in servable.manifest.outputs)  # noqa: SLF001
        self.calls = 0
        self.requests = 0
        threading.Thread(target=self._loop, name=f"tf-puma-batcher-{servable.name}",
                         daemon=True).start()

    def predict(self, inputs: Mapping[str, Any], signature: str | None,
                output_filter: list[str] | None) -> dict:
        """As Servable.predict; a request is checked on its own before it joins a batch, so one
        bad request never fails the others."""
        arrays, rows, outputs = self.servable.validate(inputs, signature, output_filter)
        if not self.packable or rows > self.rows:
            return self.servable.predict(arrays, None, outputs)
        pending = _Pending(arrays, rows)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            raise RequestError("UNAVAILABLE", "the batch scheduling queue is full; retry "
                               "later") from None
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.outputs is not None
        return {k: pending.outputs[k] for k in outputs}

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            group, rows = [first], first.rows
            waiting_until = _now() + self.timeout_s
            while rows < self.rows:
                try:
                    nxt = self._queue.get(timeout=max(0.0, waiting_until - _now()))
                except queue.Empty:
                    break
                if rows + nxt.rows > self.rows:
                    self._run([nxt])  # does not fit: answered on its own after this group
                    continue
                group.append(nxt)
                rows += nxt.rows
            self._run(group)

    def _run(self, group: list[_Pending]) -> None:
        names = list(group[0].inputs)
        packed = {k: np.concatenate([p.inputs[k] for p in group]) for k in names}
        try:
            out = self.servable.predict(packed)
        except BaseException as err:  # noqa: BLE001 - every waiting request gets it
            for pending in group:
                pending.error = err
                pending.done.set()
            return
        self.calls += 1
        self.requests += len(group)
        start = 0
        for pending in group:
            pending.outputs = {k: v[start:start + pending.rows] for k, v in out.items()}
            start += pending.rows
            pending.done.set()


def _now() -> float:
    import time  # noqa: PLC0415

    return time.monotonic()
