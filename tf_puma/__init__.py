"""tf-puma: secure inference of pretrained transformers in TensorFlow (PUMA, 3-party RSS).

Typical client code:

    import tf_puma
    tf_puma.connect("cluster.json")
    model = tf_puma.load("minilm-secure")          # a secure SavedModel from `tf-puma convert`
    outputs = model(input_ids=ids, attention_mask=mask)

or protocols directly:

    @tf.function
    def secure_affine(x, w):
        return tf_puma.reveal(tf_puma.share(x) @ tf_puma.share(w))

The names below are imported on first use, so `import tf_puma.apps.cli` (and `tf-puma --help`)
does not load TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "costs": ("tf_puma.costs", None),
    "connection": ("tf_puma.connection", None),
    "Cluster": ("tf_puma.cluster", "Cluster"),
    "LocalCluster": ("tf_puma.cluster", "LocalCluster"),
    "connect": ("tf_puma.connection", "connect"),
    "Connection": ("tf_puma.connection", "Connection"),
    "PartyUnavailable": ("tf_puma.cluster", "PartyUnavailable"),
    "FixedPoint": ("tf_puma.fixedpoint", "FixedPoint"),
    "add": ("tf_puma.protocols.arithmetic", "add"),
    "add_public": ("tf_puma.protocols.arithmetic", "add_public"),
    "matmul": ("tf_puma.protocols.arithmetic", "matmul"),
    "mul": ("tf_puma.protocols.arithmetic", "mul"),
    "mul_public": ("tf_puma.protocols.arithmetic", "mul_public"),
    "neg": ("tf_puma.protocols.arithmetic", "neg"),
    "sub": ("tf_puma.protocols.arithmetic", "sub"),
    "trunc": ("tf_puma.protocols.arithmetic", "trunc"),
    "SecureModel": ("tf_puma.secure_model", "SecureModel"),
    "load": ("tf_puma.secure_model", "load"),
    "load_generator": ("tf_puma.generation", "load_generator"),
    "Shared": ("tf_puma.sharing", "Shared"),
    "reveal": ("tf_puma.sharing", "reveal"),
    "reveal_ring": ("tf_puma.sharing", "reveal_ring"),
    "share": ("tf_puma.sharing", "share"),
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_puma' has no attribute {name!r}")
    module_name, attr = _EXPORTS[name]
    module = importlib.import_module(module_name)
    if module_name == "tf_puma.sharing":
        importlib.import_module("tf_puma.protocols")  # Shared's operators come with them
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
