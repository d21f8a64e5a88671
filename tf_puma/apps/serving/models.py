"""The served models: name -> loaded versions, and the mapping from what can go wrong in a
request to TF Serving's status codes (gRPC names; rest_api maps them to HTTP)."""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

import numpy as np

from tf_puma import manifest as manifest_lib
from tf_puma import secure_model
from tf_puma.cluster import Cluster, PartyUnavailable
from tf_puma.apps.serving.servable import Servable, ServingError


class RequestError(Exception):
    """A request that fails with gRPC status `code` (a grpc.StatusCode name)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def version_dirs(base_path: str) -> dict[int, str]:
    """TF Serving's layout: numeric version directories under the base path; a secure model
    directory given directly is version 1."""
    if os.path.isfile(manifest_lib.path(base_path)):
        return {1: base_path}
    if not os.path.isdir(base_path):
        raise FileNotFoundError(f"--model_base_path {base_path} does not exist")
    found = {int(d): os.path.join(base_path, d) for d in os.listdir(base_path)
             if d.isdigit() and os.path.isfile(manifest_lib.path(os.path.join(base_path, d)))}
    if not found:
        raise FileNotFoundError(f"{base_path} holds no secure model: neither {manifest_lib.FILE} "
                                "nor numeric version directories (1/, 2/ ...) holding one")
    return found


class ModelRegistry:
    """Loaded servables by model name and version (the newest version of each is served)."""

    def __init__(self, target: str, cluster: Cluster):
        self.target, self.cluster = target, cluster
        self._models: dict[str, dict[int, Servable]] = {}
        self._lock = threading.Lock()

    def load(self, name: str, base_path: str) -> Servable:
        versions = version_dirs(base_path)
        newest = max(versions)
        servable = Servable(name, newest, versions[newest], self.target, self.cluster)
        with self._lock:
            self._models.setdefault(name, {})[newest] = servable
        return servable

    def find(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            versions = self._models.get(name)
            if not versions:
                raise RequestError("NOT_FOUND", f"Servable not found for request: model {name!r} "
                                   f"(serving {sorted(self._models)})")
            if label is not None:
                raise RequestError("INVALID_ARGUMENT", f"version labels are not configured "
                                   f"(got label {label!r}); ask by version number")
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                raise RequestError("NOT_FOUND", f"Servable not found for request: model "
                                   f"{name!r} version {version} (serving {sorted(versions)})")
            return versions[version]

    def versions(self, name: str, version: int | None = None) -> list[tuple[int, str]]:
        servable = self.find(name, version)
        with self._lock:
            known = sorted(self._models[name]) if version is None else [servable.version]
        return [(v, "AVAILABLE") for v in known]

    def predict(self, servable: Servable, inputs: Mapping[str, Any], signature: str | None,
                output_filter: list[str] | None) -> dict[str, np.ndarray]:
        try:
            return servable.predict(inputs, signature, output_filter)
        except (ServingError, secure_model.InputError) as err:
            raise RequestError("INVALID_ARGUMENT", str(err)) from None
        except PartyUnavailable as err:
            raise RequestError("UNAVAILABLE", str(err)) from None
        except TimeoutError as err:
            raise RequestError("DEADLINE_EXCEEDED", str(err)) from None

    def all(self) -> list[Servable]:
        with self._lock:
            return [s for versions in self._models.values() for s in versions.values()]
