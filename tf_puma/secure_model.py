"""Loading and calling a secure SavedModel written by `tf-puma convert`.

    tf_puma.connect("cluster.json")          # parties started with their own --shares
    model = tf_puma.load("OUT_DIR")
    outputs = model(input_ids=ids, attention_mask=mask)   # plaintext, on the client

`tf.saved_model.load(OUT_DIR)` works too once the op library is loaded (`tf_puma.load` does that
and checks inputs against the manifest so mistakes are named before anything runs).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from tf_puma import _ops
from tf_puma import manifest as manifest_lib
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


FIRST_CALL_DEADLINE_S = 600.0  # graph registration on the parties: ~55 s for BERT-base here


class SecureModel:
    """A loaded secure SavedModel: call it with named plaintext inputs.

    Every call has a deadline: `deadline_s` if given, else 600 s for the first call (the
    parties register the graph) and 10x the last call + 30 s after. When it passes, the parties
    are asked for their status and the error names the one that does not answer
    (cluster.PartyUnavailable), or says all answer (TimeoutError): never a silent hang.
    """

    def __init__(self, model_dir: str, signature: str | None = None,
                 deadline_s: float | None = None):
        _ops.load()
        self.dir = model_dir
        self.manifest = read_manifest(model_dir)
        self.signature_name = signature or self.manifest.signature
        self.loaded = tf.saved_model.load(model_dir)
        if self.signature_name not in self.loaded.signatures:
            raise KeyError(f"{model_dir} has no signature {self.signature_name!r}")
        self.signature = self.loaded.signatures[self.signature_name]
        self.deadline_s = deadline_s
        self._last_call_s: float | None = None

    def _deadline(self) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        if self._last_call_s is None:
            return FIRST_CALL_DEADLINE_S
        return 10 * self._last_call_s + 30

    def __call__(self, **inputs: Any) -> dict[str, tf.Tensor]:
        arrays = check_inputs(self.manifest, inputs)
        feeds = {k: tf.constant(v) for k, v in arrays.items()}
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["out"] = dict(self.signature(**feeds))
            except BaseException as err:  # noqa: BLE001 - handed to the caller below
                result["err"] = err

        deadline = self._deadline()
        start = time.monotonic()
        worker = threading.Thread(target=call, name="tf-puma-call", daemon=True)
        worker.start()
        worker.join(deadline)
        if worker.is_alive():
            from tf_puma import cluster  # noqa: PLC0415

            connected = cluster.connected_cluster()
            if connected is not None:
                cluster.check_parties(connected, timeout=5.0)  # names a party that is stuck
            raise TimeoutError(f"the secure call did not finish within its deadline of "
                               f"{deadline:.0f} s although all parties answer; pass a longer "
                               "deadline_s to tf_puma.load if the model is that slow")
        if "err" in result:
            raise result["err"]
        self._last_call_s = time.monotonic() - start
        return result["out"]


def load(model_dir: str, signature: str | None = None,
         deadline_s: float | None = None) -> SecureModel:
    """Loads a secure model; connect to the cluster (tf_puma.connect) before calling it.
    `deadline_s` bounds every call (default: see SecureModel)."""
    return SecureModel(model_dir, signature, deadline_s)
