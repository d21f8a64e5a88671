"""What a frozen-graph tensor becomes in the secure graph, by kind (see `rewrites.graph.Kind`):
a numpy array (CONST), a `Weight` (shared, party-loaded), a `ClientValue` (plaintext on the
client, PUBLIC or CLIENT) or a `Shared`."""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np
import tensorflow as tf

from tf_puma.sharing import Shared


@dataclasses.dataclass(frozen=True)
class Weight:
    """A model-owner value: its shares live in the parties' bundles under `name`."""
    name: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ClientValue:
    """A plaintext tensor on the client's device; `public` ones may be shown to the parties."""
    tensor: tf.Tensor
    public: bool = False


Value = Union[np.ndarray, Weight, ClientValue, Shared]


def static_shape(value: Value) -> tuple[int, ...]:
    if isinstance(value, np.ndarray):
        return value.shape
    if isinstance(value, Weight):
        return value.shape
    if isinstance(value, ClientValue):
        return tuple(value.tensor.shape.as_list())
    return tuple(value.shape.as_list())
