"""The served models: name -> loaded versions, and the mapping from what can go wrong in a
request to TF Serving's status codes (gRPC names; rest_api maps them to HTTP)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

import numpy as np

from tf_puma import manifest as manifest_lib
from tf_puma import secure_model
from tf_puma.cluster import Cluster, PartyUnavailable
from tf_puma.apps.serving.metrics import Metrics
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

    def __init__(self, target: str, cluster: Cluster, batching: Any = None):
        """`batching`: batcher.BatchingParameters to pack concurrent requests, or None."""
        self.target, self.cluster = target, cluster
        self.batching = batching
        self._models: dict[str, dict[int, Servable]] = {}
        self._batchers: dict[int, Any] = {}  # id(servable) -> Batcher
        self._in_flight: dict[int, int] = {}  # id(servable) -> requests being answered
        self._retired: set[int] = set()  # replaced versions, closed when none are in flight
        self._loading: dict[str, set[int]] = {}  # name -> versions being loaded and warmed
        self._lock = threading.Lock()
        self.metrics = Metrics()

    def load(self, name: str, version: int, path: str) -> Servable:
        """Loads and warms a version (TF Serving's warm-up records, else
        warmup.neutral_inputs: the parties register the graph before a request meets it), then serves it instead of the earlier
        one, which is closed once its last request is answered (TF Serving's default policy:
        the latest version)."""
        from tf_puma import warmup  # noqa: PLC0415

        with self._lock:
            self._loading.setdefault(name, set()).add(version)
        try:
            servable = Servable(name, version, path, self.target, self.cluster)
            for inputs in warmup.read(path) or [warmup.neutral_inputs(servable.manifest)]:
                servable.predict(inputs)
        finally:
            with self._lock:
                self._loading[name].discard(version)
        if self.batching is not None:
            from tf_puma.apps.serving.batcher import Batcher  # noqa: PLC0415

            self._batchers[id(servable)] = Batcher(servable, self.batching)
        with self._lock:
            old = list(self._models.get(name, {}).values())
            self._models[name] = {version: servable}
            for retired in old:
                self._retired.add(id(retired))
                if not self._in_flight.get(id(retired)):
                    retired.close()
        return servable

    def close(self) -> None:
        for servable in self.all():
            servable.close()

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
            if version in self._loading.get(name, ()):
                raise RequestError("UNAVAILABLE", f"model {name!r} version {version} is still "
                                   "loading (state LOADING: its graph is being registered on "
                                   "the parties and warmed); retry in a few seconds")
            if version not in versions:
                raise RequestError("NOT_FOUND", f"Servable not found for request: model "
                                   f"{name!r} version {version} (serving {sorted(versions)})")
            return versions[version]

    def versions(self, name: str, version: int | None = None) -> list[tuple[int, str]]:
        """(version, state) as ModelService.GetModelStatus reports them: the served version
        AVAILABLE, a newer one being loaded and warmed LOADING."""
        with self._lock:
            loading = sorted(self._loading.get(name, ()))
            if version is not None and version in loading:
                return [(version, "LOADING")]
        servable = self.find(name, version)
        with self._lock:
            known = sorted(self._models[name]) if version is None else [servable.version]
        states = [(v, "AVAILABLE") for v in known]
        if version is None:
            states += [(v, "LOADING") for v in loading if v not in known]
        return sorted(states, key=lambda state: -state[0])

    def predict(self, servable: Servable, inputs: Mapping[str, Any], signature: str | None,
                output_filter: list[str] | None) -> dict[str, np.ndarray]:
        batcher = self._batchers.get(id(servable))
        start = time.monotonic()
        code = "OK"
        with self._lock:
            self._in_flight[id(servable)] = self._in_flight.get(id(servable), 0) + 1
        try:
            if batcher is not None:
                return batcher.predict(inputs, signature, output_filter)
            return servable.predict(inputs, signature, output_filter)
        except (ServingError, secure_model.InputError) as err:
            code = "INVALID_ARGUMENT"
            raise RequestError(code, str(err)) from None
        except PartyUnavailable as err:
            code = "UNAVAILABLE"
            raise RequestError(code, str(err)) from None
        except TimeoutError as err:
            code = "DEADLINE_EXCEEDED"
            raise RequestError(code, str(err)) from None
        except RequestError as err:
            code = err.code
            raise
        finally:
            self.metrics.observe(servable.name, code, time.monotonic() - start)
            with self._lock:
                self._in_flight[id(servable)] -= 1
                if id(servable) in self._retired and not self._in_flight[id(servable)]:
                    servable.close()

    def all(self) -> list[Servable]:
        with self._lock:
            return [s for versions in self._models.values() for s in versions.values()]
