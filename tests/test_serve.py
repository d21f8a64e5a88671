"""`tf-puma serve --local` answered through TF Serving's own clients: PredictionServiceStub
(grpcio + tensorflow-serving-api) and REST JSON; answers equal tf_puma.load on the same
inputs and plaintext TensorFlow within the fixed-point bound; bad requests get TF Serving's
codes naming what is wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tf_puma.cluster import free_port
from tf_puma.rewrites import convert

BOUND = 2e-4  # measured ~2e-5: fixed point at 18 bits through a 4x3 matmul and GeLU


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    w = tf.Variable(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    module = tf.Module()
    module.w = w
    fn = tf.function(lambda x: {"y": tf.nn.gelu(x @ w), "s": tf.reduce_sum(x, axis=1)},
                     input_signature=[tf.TensorSpec([2, 4], tf.float32, name="x")])
    plain = str(root / "plain")
    tf.saved_model.save(module, plain, signatures={"serving_default": fn})
    base = root / "models" / "tiny"
    convert.convert(plain, str(base / "1"), log=lambda line: None)
    grpc_port, rest_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tf_puma.apps.cli", "serve", "--model_name", "tiny",
         "--model_base_path", str(base), "--port", str(grpc_port), "--rest_api_port",
         str(rest_port), "--local"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    ready = ""
    while time.monotonic() < deadline:
        ready = proc.stdout.readline()
        if ready.startswith("tf-puma serve ready") or not ready:
            break
    if not ready.startswith("tf-puma serve ready"):
        proc.kill()
        pytest.fail(f"serve did not start: {ready}{proc.stderr.read()[-3000:]}")
    plain_fn = tf.saved_model.load(plain).signatures["serving_default"]
    yield {"grpc": f"127.0.0.1:{grpc_port}", "rest": f"http://127.0.0.1:{rest_port}",
           "plain": lambda x: {k: v.numpy() for k, v in plain_fn(x=tf.constant(x)).items()}}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _x(rows: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-3, 3, size=(rows, 4)).astype(np.float32)


def _rest(served, path: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode())
    request = urllib.request.Request(served["rest"] + path, data=data,
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_grpc_predict_metadata_and_status_with_tf_servings_stub(served):
    channel = grpc.insecure_channel(served["grpc"])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = _x(2)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    response = stub.Predict(request, timeout=120)
    plain = served["plain"](x)
    for name in ("y", "s"):
        got = tf.make_ndarray(response.outputs[name])
        assert got.shape == plain[name].shape
        assert np.abs(got - plain[name]).max() < BOUND, name
    assert response.model_spec.version.value == 1

    one_row = predict_pb2.PredictRequest()  # fewer rows than the converted batch: padded
    one_row.model_spec.name = "tiny"
    one_row.inputs["x"].CopyFrom(tf.make_tensor_proto(x[:1]))
    one_row.output_filter.append("y")
    got = stub.Predict(one_row, timeout=120)
    assert list(got.outputs) == ["y"]
    assert np.abs(tf.make_ndarray(got.outputs["y"]) - plain["y"][:1]).max() < BOUND

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "tiny"
    metadata.metadata_field.append("signature_def")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(metadata, timeout=30).metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def["serving_default"].inputs) == {"x"}

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "tiny"
    versions = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        status, timeout=30).model_version_status
    assert [(v.version, v.state) for v in versions] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_grpc_errors_name_what_is_wrong(served):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(served["grpc"]))

    def predict(name="tiny", inputs=None, version=None, signature=""):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for key, value in (inputs if inputs is not None else {"x": _x(2)}).items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=60)
        return raised.value.code(), raised.value.details()

    assert predict(name="nope")[0] == grpc.StatusCode.NOT_FOUND
    assert predict(version=7)[0] == grpc.StatusCode.NOT_FOUND
    code, details = predict(signature="other")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "other" in details
    code, details = predict(inputs={"z": _x(2)})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'z'" in details
    code, details = predict(inputs={"x": np.ones((2, 5), np.float32)})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in details
    code, details = predict(inputs={"x": np.full((2, 4), np.nan, np.float32)})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in details
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(predict_pb2.PredictRequest(), timeout=30)  # no model name
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as raised:
        stub.Classify(classification_pb2.ClassificationRequest(), timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED and "Predict" in \
        raised.value.details()
    good = predict_pb2.PredictRequest()  # the server still answers
    good.model_spec.name = "tiny"
    good.inputs["x"].CopyFrom(tf.make_tensor_proto(_x(2)))
    assert stub.Predict(good, timeout=60).outputs["y"].tensor_shape.dim[0].size == 2


def test_rest_predict_rows_and_columns_status_metadata_and_errors(served):
    x = _x(3, seed=2)  # 3 rows over a batch of 2: two secure calls, the second padded
    plain = np.concatenate([served["plain"](x[:2])["y"],
                            served["plain"](np.concatenate([x[2:], x[:1]]))["y"][:1]])
    code, body = _rest(served, "/v1/models/tiny:predict", {"instances": x.tolist()})
    assert code == 200, body
    rows = body["predictions"]
    assert len(rows) == 3 and set(rows[0]) == {"y", "s"}
    assert np.abs(np.array([r["y"] for r in rows]) - plain).max() < BOUND
    code, body = _rest(served, "/v1/models/tiny/versions/1:predict",
                       {"inputs": {"x": x[:2].tolist()}})
    assert code == 200 and np.abs(np.array(body["outputs"]["y"]) - plain[:2]).max() < BOUND
    code, body = _rest(served, "/v1/models/tiny")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    code, body = _rest(served, "/v1/models/tiny/metadata")
    assert code == 200 and "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    for path, request, want in [
            ("/v1/models/nope:predict", {"instances": x.tolist()}, 404),
            ("/v1/models/tiny/versions/3:predict", {"instances": x.tolist()}, 404),
            ("/v1/models/tiny:predict", b"{not json", 400),
            ("/v1/models/tiny:predict", {"instances": [[1, 2], [3]]}, 400),
            ("/v1/models/tiny:predict", {"instances": [{"z": [1, 2, 3, 4]}]}, 400),
            ("/v1/models/tiny:predict", {"inputs": {"x": [["a"] * 4]}}, 400),
            ("/v1/models/tiny:predict", {}, 400),
            ("/v1/models/tiny:classify", {"instances": x.tolist()}, 501)]:
        code, body = _rest(served, path, request)
        assert code == want and body.get("error"), (path, request, code, body)
    code, body = _rest(served, "/v1/models/tiny:predict", {"instances": x[:1].tolist()})
    assert code == 200 and len(body["predictions"]) == 1
