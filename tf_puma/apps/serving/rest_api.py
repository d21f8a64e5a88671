"""TF Serving's REST API over served secure models, as TF Serving documents it:

    POST /v1/models/NAME[/versions/V]:predict   {"instances": [...]} (rows) or {"inputs": ...}
    GET  /v1/models/NAME[/versions/V]           version status
    GET  /v1/models/NAME[/versions/V]/metadata  signature
    GET  /monitoring/prometheus/metrics         Prometheus metrics (metrics.py)

Errors are {"error": "..."} with the HTTP code of the gRPC status TF Serving maps it to.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from tf_puma.apps.serving import metrics
from tf_puma.apps.serving.models import ModelRegistry, RequestError

MAX_BODY_BYTES = 64 * 2 ** 20
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501, "RESOURCE_EXHAUSTED": 413,
               "INTERNAL": 500}
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?:(?P<verb>:[a-z]+)|(?P<metadata>/metadata))?/?$")


def _rows_to_columns(instances: Any, names: list[str]) -> dict[str, Any]:
    """Row format: a list of values (one input) or of {input: value} objects."""
    if not isinstance(instances, list) or not instances:
        raise RequestError("INVALID_ARGUMENT", "'instances' must be a non-empty list of rows")
    if all(isinstance(row, dict) for row in instances):
        keys = set(instances[0])
        if any(set(row) != keys for row in instances):
            raise RequestError("INVALID_ARGUMENT", "every row in 'instances' must name the same "
                               f"inputs (the model takes {names})")
        return {k: [row[k] for row in instances] for k in keys}
    if len(names) != 1:
        raise RequestError("INVALID_ARGUMENT", f"the model takes several inputs {names}: give "
                           "each row as an object {\"name\": value, ...}")
    return {names[0]: instances}


def _json_value(value: np.ndarray) -> Any:
    return value.tolist()


class _Handler(BaseHTTPRequestHandler):
    registry: ModelRegistry  # set by make_server
    server_version = "tf-puma-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: RequestError) -> None:
        self._send(HTTP_STATUS.get(err.code, 500), {"error": str(err)})

    def _route(self) -> tuple[str, int | None, str | None, bool]:
        match = _PATH.match(self.path.split("?", 1)[0])
        if not match:
            raise RequestError("NOT_FOUND", f"no such endpoint {self.path!r}; use "
                               "/v1/models/NAME[/versions/V][:predict|/metadata]")
        version = int(match["version"]) if match["version"] else None
        return match["name"], version, match["verb"], bool(match["metadata"])

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] == metrics.PATH:
            data = self.registry.metrics.render(self.registry).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        try:
            name, version, verb, metadata = self._route()
            if verb:
                raise RequestError("INVALID_ARGUMENT", f"{verb} needs POST")
            if metadata:
                servable = self.registry.find(name, version)
                signature = servable.signature_defs[servable.manifest.signature]
                self._send(200, {"model_spec": {"name": name, "signature_name": "",
                                                "version": str(servable.version)},
                                 "metadata": {"signature_def": {"signature_def": {
                                     servable.manifest.signature: _signature_json(signature)}}}})
                return
            self._send(200, {"model_version_status": [
                {"version": str(v), "state": state,
                 "status": {"error_code": "OK", "error_message": ""}}
                for v, state in self.registry.versions(name, version)]})
        except RequestError as err:
            self._error(err)

    def do_POST(self) -> None:  # noqa: N802
        try:
            name, version, verb, metadata = self._route()
            if verb != ":predict" or metadata:
                raise RequestError("UNIMPLEMENTED" if verb in (":classify", ":regress")
                                   else "NOT_FOUND",
                                   f"{self.path}: tf-puma serve answers :predict only")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                for _ in range(0, length, 2 ** 20):  # read it, so the client gets the answer
                    self.rfile.read(min(2 ** 20, length))
                    length -= 2 ** 20
                raise RequestError("RESOURCE_EXHAUSTED", f"request body of {length} bytes is over "
                                   f"the {MAX_BODY_BYTES} byte limit")
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RequestError("INVALID_ARGUMENT", f"the body is not JSON ({err})") from None
            if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
                raise RequestError("INVALID_ARGUMENT", "the body must be a JSON object with "
                                   "exactly one of 'instances' (rows) and 'inputs' (columns)")
            servable = self.registry.find(name, version)
            names = sorted(servable.manifest.inputs)
            row_format = "instances" in body
            if row_format:
                inputs = _rows_to_columns(body["instances"], names)
            elif isinstance(body["inputs"], dict):
                inputs = body["inputs"]
            elif len(names) == 1:
                inputs = {names[0]: body["inputs"]}
            else:
                raise RequestError("INVALID_ARGUMENT", f"'inputs' must map the input names {names}"
                                   " to values")
            outputs = self.registry.predict(servable, inputs, body.get("signature_name"), None)
        except RequestError as err:
            self._error(err)
            return
        single = len(outputs) == 1
        if row_format:
            rows = len(next(iter(outputs.values())))
            if single:
                predictions = _json_value(next(iter(outputs.values())))
            else:
                predictions = [{k: _json_value(v[i]) for k, v in outputs.items()}
                               for i in range(rows)]
            self._send(200, {"predictions": predictions})
        else:
            self._send(200, {"outputs": _json_value(next(iter(outputs.values()))) if single
                             else {k: _json_value(v) for k, v in outputs.items()}})


def _signature_json(signature: Any) -> dict:
    from google.protobuf import json_format  # noqa: PLC0415

    return json_format.MessageToDict(signature)


def make_server(host: str, port: int, registry: ModelRegistry) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"registry": registry})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
