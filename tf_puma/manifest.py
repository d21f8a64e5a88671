"""The secure model's manifest, OUT_DIR/tf_puma.json: one schema for convert, load, run and serve.

It tells a client what it needs before anything runs (input names, dtypes, shapes; the fixed
point the graph was built for; the bundle the parties must hold) and what a call costs (rounds on
the critical path, bytes per sender, per layer and per protocol). It carries no value or
fingerprint of the weights: the bundle id is random, and the source's hash stays with the owner.

Versions: 2 adds party and fixed-point headers to the bundles (bundles of version 1 are refused
by the parties), so a version-1 manifest is refused here with the same advice: convert again.
3: the MSB rounds run bit-sliced (PumaMsbFinish takes a `like` input, PumaMsbStep lost
`portable`), so a graph converted before does not match the kernels; its bundles still would.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

FILE = "tf_puma.json"
FORMAT = "tf-puma-secure-savedmodel"
VERSION = 3


class ManifestError(ValueError):
    """A directory is not a secure model this version of tf-puma can run."""


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    public: bool = False  # inputs only: sent to the parties in the clear (--public-input)

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "public": self.public}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TensorEntry":
        return cls(str(data["dtype"]), tuple(int(d) for d in data["shape"]),
                   bool(data.get("public", False)))


@dataclasses.dataclass(frozen=True)
class Cost:
    """Rounds and bytes sent by each sender ("0", "1", "2", "client")."""
    rounds: int
    bytes_by_sender: dict[str, int]

    def to_json(self) -> dict:
        return {"rounds": self.rounds, "bytes_by_sender": dict(self.bytes_by_sender)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Cost":
        return cls(int(data["rounds"]), {str(k): int(v) for k, v in
                                         data["bytes_by_sender"].items()})


@dataclasses.dataclass(frozen=True)
class Manifest:
    signature: str
    inputs: dict[str, TensorEntry]
    outputs: dict[str, TensorEntry]
    frac_bits: int
    bundle_id: str
    weight_tensors: int
    weight_values: int
    secure_graph_ops: int
    convert_seconds: float
    total: Cost  # rounds: the critical path
    layers: dict[str, Cost]  # rounds: sum over the layer's protocol calls
    protocols: dict[str, dict]  # per protocol: calls, rounds, bytes (costs.Ledger.as_json)
    ring_bits: int = 64
    # seconds per conversion step: load_and_freeze, classify, trace, save, bundles_wait (their
    # sum and the manifest's own writing make convert_seconds), and bundles: the bundle
    # writer's own time, which runs alongside trace and save
    convert_steps: dict[str, float] = dataclasses.field(default_factory=dict)
    # a generation model (`tf-puma convert --generate`): this manifest describes its `decode`
    # signature; `generation` holds the window, the prompt bucket, the state (KV cache) pairs
    # and shapes, and the `prefill` signature's manifest
    generation: Optional[dict] = None
    # rounds of each truncation in the graph (tf_puma.config.Config.trunc_rounds: 2, 3 for the
    # low-traffic variant, or "auto": 3 for values of at least three_rounds_from elements)
    trunc_rounds: int | str = 2
    three_rounds_from: int | None = None

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "ring_bits": self.ring_bits,
            "frac_bits": self.frac_bits, "trunc_rounds": self.trunc_rounds,
            "three_rounds_from": self.three_rounds_from,
            "bundle_id": self.bundle_id,
            "signature": self.signature,
            "inputs": {k: v.to_json() for k, v in self.inputs.items()},
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            "weights": {"tensors": self.weight_tensors, "values": self.weight_values},
            "secure_graph_ops": self.secure_graph_ops,
            "convert_seconds": self.convert_seconds,
            "convert_steps": dict(self.convert_steps),
            "critical_path_rounds": self.total.rounds,
            "bytes_by_sender": dict(self.total.bytes_by_sender),
            "layers": {k: v.to_json() for k, v in self.layers.items()},
            "protocols": self.protocols,
            **({"generation": self.generation} if self.generation is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "the manifest") -> "Manifest":
        if not isinstance(data, Mapping) or not str(data.get("format", "")).startswith(FORMAT):
            raise ManifestError(f"{where} is not a tf-puma secure model manifest")
        version = data.get("version", 1)
        if version != VERSION:
            raise ManifestError(f"{where} was written by {'an older' if version < VERSION else 'a newer'}"
                                f" tf-puma (manifest version {version}, this one reads "
                                f"{VERSION}): convert the model again with this version")
        try:
            return cls(
                signature=str(data["signature"]),
                inputs={k: TensorEntry.from_json(v) for k, v in data["inputs"].items()},
                outputs={k: TensorEntry.from_json(v) for k, v in data["outputs"].items()},
                frac_bits=int(data["frac_bits"]), bundle_id=str(data["bundle_id"]),
                weight_tensors=int(data["weights"]["tensors"]),
                weight_values=int(data["weights"]["values"]),
                secure_graph_ops=int(data["secure_graph_ops"]),
                convert_seconds=float(data["convert_seconds"]),
                total=Cost(int(data["critical_path_rounds"]),
                           {str(k): int(v) for k, v in data["bytes_by_sender"].items()}),
                layers={k: Cost.from_json(v) for k, v in data["layers"].items()},
                protocols=dict(data["protocols"]), ring_bits=int(data["ring_bits"]),
                convert_steps={str(k): float(v)
                               for k, v in data.get("convert_steps", {}).items()},
                generation=(dict(data["generation"]) if data.get("generation") is not None
                            else None),
                trunc_rounds=_trunc_rounds(data.get("trunc_rounds", 2)),
                three_rounds_from=(None if data.get("three_rounds_from") is None
                                   else int(data["three_rounds_from"])))
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{where} is malformed ({type(err).__name__}: {err}); convert "
                                "the model again") from err


def state_share_name(key: str, party: int, slot: int) -> str:
    """The secure signature's name for share `slot` of party `party` of a state tensor (a KV
    cache entry that stays on the parties between calls)."""
    return f"{key}__p{party}s{slot}"


def path(model_dir: str) -> str:
    return os.path.join(model_dir, FILE)


def read(model_dir: str) -> Manifest:
    """The manifest of a secure model directory; ManifestError says what is wrong."""
    file = path(model_dir)
    if not os.path.isfile(file):
        raise ManifestError(f"{model_dir} is not a tf-puma secure model (no {FILE}); create one "
                            "with `tf-puma convert IN_SAVEDMODEL OUT_DIR`")
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{file} is not valid JSON ({err}); convert the model again") from err
    return Manifest.from_json(data, file)


def write(model_dir: str, manifest: Manifest) -> None:
    with open(path(model_dir), "w", encoding="utf-8") as fh:
        json.dump(manifest.to_json(), fh, indent=2)


def is_secure_model(model_dir: Optional[str]) -> bool:
    """True if the directory holds a tf-puma manifest (of any version)."""
    return bool(model_dir) and os.path.isfile(path(model_dir))


def _trunc_rounds(value) -> int | str:
    """A manifest's trunc_rounds: 2, 3 or "auto"."""
    if value == "auto":
        return value
    if int(value) not in (2, 3):
        raise ValueError(f"trunc_rounds {value!r} is not 2, 3 or 'auto'")
    return int(value)
