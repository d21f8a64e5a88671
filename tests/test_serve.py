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

from tf_puma import warmup
from tf_puma.apps.serving import batcher
from tf_puma.cluster import free_port
from tf_puma.rewrites import convert

BOUND = 2e-4  # measured ~2e-5: fixed point at 18 bits through a 4x3 matmul and GeLU


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    plain = _save_plain(root / "plain", seed=0)
    base = root / "models" / "tiny"
    convert.convert(plain, str(base / "1"), log=lambda line: None)
    proc, grpc_address, rest_address = _start_serve(base)
    plain_fn = tf.saved_model.load(plain).signatures["serving_default"]
    yield {"grpc": grpc_address, "rest": rest_address, "base": base, "plain_dir": plain,
           "plain": lambda x: {k: v.numpy() for k, v in plain_fn(x=tf.constant(x)).items()}}
    _stop(proc)


def _save_plain(path, seed: int) -> str:
    w = tf.Variable(np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32))
    module = tf.Module()
    module.w = w
    fn = tf.function(lambda x: {"y": tf.nn.gelu(x @ w), "s": tf.reduce_sum(x, axis=1)},
                     input_signature=[tf.TensorSpec([2, 4], tf.float32, name="x")])
    tf.saved_model.save(module, str(path), signatures={"serving_default": fn})
    return str(path)


def _plain_y(path: str, x: np.ndarray) -> np.ndarray:
    return tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"].numpy()


def _start_serve(base, *extra: str, cluster=None) -> tuple[subprocess.Popen, str, str]:
    """Starts `tf-puma serve` (with `--local` parties, or against `cluster`'s) on free ports;
    again on fresh ones if a port chosen free was taken before the server bound it (another
    test process's connection, say)."""
    for attempt in range(3):
        try:
            return _start_serve_once(base, *extra, cluster=cluster)
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class PortTaken(Exception):
    pass


def _start_serve_once(base, *extra: str, cluster=None) -> tuple[subprocess.Popen, str, str]:
    grpc_port, rest_port = free_port(), free_port()
    parties = ["--local"] if cluster is None else ["--cluster", cluster.to_json()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tf_puma.apps.cli", "serve",
         *(["--model_name", "tiny", "--model_base_path", str(base)] if base else []),
         "--port", str(grpc_port), "--rest_api_port", str(rest_port), *parties, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    ready = ""
    while time.monotonic() < deadline:
        ready = proc.stdout.readline()
        if ready.startswith("tf-puma serve ready") or not ready:
            break
    if not ready.startswith("tf-puma serve ready"):
        proc.kill()
        stderr = proc.stderr.read()
        if "is in use" in stderr:
            raise PortTaken(stderr[-500:])
        pytest.fail(f"serve did not start: {ready}{stderr[-3000:]}")
    return proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"


def _stop(proc: subprocess.Popen) -> None:
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


def test_convert_writes_tf_servings_warmup_record(served):
    requests = warmup.read(str(served["base"] / "1"))
    assert len(requests) == 1 and set(requests[0]) == {"x"}
    assert requests[0]["x"].shape == (2, 4) and not requests[0]["x"].any()


def test_cli_convert_writes_a_version_directory_and_serve_checks_its_flags(served, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tf_puma.apps.cli", *args],
                              capture_output=True, text=True, timeout=180)

    done = cli("convert", served["plain_dir"], str(tmp_path / "m"), "--version", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "m")) == ["3"]
    assert len(warmup.read(str(tmp_path / "m" / "3"))) == 1
    done = cli("serve", "--local")
    assert done.returncode != 0 and "--model_base_path" in done.stderr
    done = cli("serve", "--model_name", "m", "--model_base_path", str(tmp_path / "nothing"),
               "--local")
    assert done.returncode == 1 and "does not exist" in done.stderr, done.stderr[-2000:]
    bad = tmp_path / "bad.config"
    bad.write_text('model_config_list { config { name: "m" base_path: "m" '
                   'model_platform: "pytorch" } }')
    done = cli("serve", "--model_config_file", str(bad), "--local")
    assert done.returncode == 1 and "pytorch" in done.stderr, done.stderr[-2000:]


def test_metrics_page_counts_requests_and_checks_parties(served):
    _rest(served, "/v1/models/tiny:predict", {"instances": _x(2).tolist()})
    _rest(served, "/v1/models/tiny:predict", {"instances": [[1.0, 2.0]]})
    with urllib.request.urlopen(served["rest"] + "/monitoring/prometheus/metrics",
                                timeout=30) as response:
        page = response.read().decode()
    assert 'tf_puma_serving_requests_total{model="tiny",code="OK"}' in page
    assert 'tf_puma_serving_requests_total{model="tiny",code="INVALID_ARGUMENT"}' in page
    assert 'tf_puma_serving_request_latency_seconds_bucket{model="tiny",le="+Inf"}' in page
    assert all(f'tf_puma_party_up{{party="{i}"}} 1' in page for i in range(3)), page
    assert 'tf_puma_serving_rounds_per_call{model="tiny",version="1"}' in page


def test_batching_packs_concurrent_requests_into_one_secure_call(served, tmp_path):
    import concurrent.futures  # noqa: PLC0415

    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 500000 }\n")
    proc, _, rest = _start_serve(served["base"], "--enable_batching",
                                 "--batching_parameters_file", str(params))
    try:
        rows = [_x(1, seed=s) for s in (5, 6)]
        plain = served["plain"](np.concatenate(rows))["y"]

        def ask(row):
            return _rest({"rest": rest}, "/v1/models/tiny:predict", {"instances": row.tolist()})

        def calls() -> int:
            with urllib.request.urlopen(rest + "/monitoring/prometheus/metrics") as response:
                line = next(l for l in response.read().decode().splitlines()
                            if l.startswith("tf_puma_serving_secure_calls_total"))
            return int(line.split()[-1])

        before = calls()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, rows))
        for (code, body), want in zip(answers, plain):
            assert code == 200, body
            assert np.abs(np.array(body["predictions"][0]["y"]) - want).max() < BOUND
        assert calls() - before == 1  # both requests answered by one secure call
        code, body = ask(np.full((1, 4), np.inf))  # a bad request fails alone
        assert code == 400 and "infinity" in body["error"]
    finally:
        _stop(proc)


def test_batching_parameters_parse_as_tf_serving_writes_them():
    params = batcher.parse_parameters(
        "# comment\nmax_batch_size { value: 8 }\nbatch_timeout_micros { value: 100 }\n"
        "num_batch_threads { value: 4 }\nmax_enqueued_batches { value: 10 }\n"
        "allowed_batch_sizes: 4\n")
    assert (params.max_batch_size, params.batch_timeout_micros,
            params.max_enqueued_batches) == (8, 100, 10)
    with pytest.raises(ValueError, match="unknown batching parameter 'max_batch'"):
        batcher.parse_parameters("max_batch { value: 8 }")
    with pytest.raises(ValueError, match="cannot parse"):
        batcher.parse_parameters("max_batch_size: eight")


def test_several_models_from_a_config_file_and_a_new_version_swapped_in(served, tmp_path):
    """--model_config_file serves two models; converting version 2 of one while it serves gets
    it loaded, warmed and answering (requests meanwhile keep their answers from version 1)."""
    other_plain = _save_plain(tmp_path / "other_plain", seed=3)
    other_base = tmp_path / "other"
    convert.convert(other_plain, str(other_base / "1"), log=lambda line: None)
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "tiny" base_path: "{served['base']}" model_platform: "tensorflow" }}
      config {{ name: "other" base_path: "other" }}
    }}""")
    proc, _, rest = _start_serve(None, "--model_config_file", str(config),
                                 "--file_system_poll_wait_seconds", "0.5")
    try:
        x = _x(2, seed=9)
        for name, plain in (("tiny", served["plain"](x)["y"]), ("other", _plain_y(other_plain, x))):
            code, body = _rest({"rest": rest}, f"/v1/models/{name}:predict",
                               {"inputs": {"x": x.tolist()}})
            assert code == 200 and np.abs(np.array(body["outputs"]["y"]) - plain).max() < BOUND
        new_plain = _save_plain(tmp_path / "other_plain2", seed=4)
        convert.convert(new_plain, str(other_base / "2"), log=lambda line: None)
        want_v1, want_v2 = _plain_y(other_plain, x), _plain_y(new_plain, x)
        deadline = time.monotonic() + 120
        version = "1"
        while version != "2" and time.monotonic() < deadline:
            code, body = _rest({"rest": rest}, "/v1/models/other:predict",
                               {"inputs": {"x": x.tolist()}})
            assert code == 200, body
            y = np.array(body["outputs"]["y"])
            if np.abs(y - want_v2).max() < BOUND:
                version = "2"
            else:  # still version 1, answering as before
                assert np.abs(y - want_v1).max() < BOUND
                time.sleep(0.5)
        assert version == "2"
        code, body = _rest({"rest": rest}, "/v1/models/other")
        assert [v["version"] for v in body["model_version_status"]] == ["2"]
    finally:
        _stop(proc)


class _SlowServable:
    """Stands in for serving.servable.Servable: its warm-up waits until `warmed` is set."""

    warmed = None

    def __init__(self, name, version, path, target, cluster):
        del path, target, cluster
        self.name, self.version, self.manifest, self.closed = name, version, None, False

    def predict(self, inputs, signature=None, output_filter=None):
        del signature, output_filter
        if inputs == {"warm": True}:
            assert _SlowServable.warmed.wait(30), "the test never released the warm-up"
        return {"version": np.array(self.version)}

    def close(self):
        self.closed = True


def test_a_version_being_loaded_is_loading_and_the_served_one_keeps_answering(monkeypatch):
    """GetModelStatus lists a version that is being loaded and warmed as LOADING (TF Serving's
    state) beside the one still AVAILABLE; asking for it by number meanwhile is UNAVAILABLE
    saying it is loading, not NOT_FOUND; once warmed it is AVAILABLE and the old one closed."""
    import threading  # noqa: PLC0415

    from tf_puma.apps.serving import models  # noqa: PLC0415

    monkeypatch.setattr(models, "Servable", _SlowServable)
    monkeypatch.setattr(warmup, "read", lambda path: [{"warm": True}])
    _SlowServable.warmed = threading.Event()
    registry = models.ModelRegistry("grpc://unused", cluster=None)
    _SlowServable.warmed.set()
    first = registry.load("m", 1, "/v1")
    _SlowServable.warmed.clear()
    loader = threading.Thread(target=registry.load, args=("m", 2, "/v2"))
    loader.start()
    deadline = time.monotonic() + 10
    while registry.versions("m") == [(1, "AVAILABLE")] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.versions("m") == [(2, "LOADING"), (1, "AVAILABLE")]
    assert registry.versions("m", 2) == [(2, "LOADING")]
    assert registry.find("m") is first and not first.closed  # still answering
    with pytest.raises(models.RequestError, match="version 2 is still loading") as err:
        registry.find("m", 2)
    assert err.value.code == "UNAVAILABLE"
    with pytest.raises(models.RequestError, match="version 3") as err:
        registry.find("m", 3)
    assert err.value.code == "NOT_FOUND"
    _SlowServable.warmed.set()
    loader.join(10)
    assert registry.versions("m") == [(2, "AVAILABLE")] and first.closed
    assert registry.find("m", 2).version == 2


def _certificates(root) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and a
    client certificate from another CA (openssl; PEM texts by name)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    (root / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for ca in ("ca", "other_ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out",
            f"{ca}.pem", "-days", "2", "-subj", f"/CN=tf-puma test {ca}")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "other_ca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return {path.name: path.read_text() for path in root.iterdir()
            if path.suffix in (".pem", ".key")}


def test_ssl_config_file_puts_tls_with_client_verification_on_the_grpc_port(served, tmp_path):
    """--ssl_config_file as tensorflow_model_server reads it (SSLConfig text proto, PEM texts):
    a client holding a certificate from custom_ca is answered as before; no TLS, no client
    certificate or one from another CA never reaches the model."""
    from tf_puma.apps.serving import tls  # noqa: PLC0415

    pem = _certificates(tmp_path)
    config = tmp_path / "ssl.config"
    config.write_text(f"server_key: {json.dumps(pem['server.key'])}\n"
                      f"server_cert: {json.dumps(pem['server.pem'])}\n"
                      f"custom_ca: {json.dumps(pem['ca.pem'])}\nclient_verify: true\n")
    assert tls.read_ssl_config(str(config)).client_verify
    proc, address, _ = _start_serve(served["base"], "--ssl_config_file", str(config),
                                    "--rest_api_port", "0")
    x = _x(2, seed=5)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))

    def predict(credentials):
        channel = (grpc.insecure_channel(address) if credentials is None
                   else grpc.secure_channel(address, credentials))
        with channel:
            return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=60)

    try:
        good = predict(grpc.ssl_channel_credentials(pem["ca.pem"].encode(),
                                                    pem["client.key"].encode(),
                                                    pem["client.pem"].encode()))
        got = tf.make_ndarray(good.outputs["y"])
        assert np.abs(got - served["plain"](x)["y"]).max() < BOUND
        for credentials in (None, grpc.ssl_channel_credentials(pem["ca.pem"].encode()),
                            grpc.ssl_channel_credentials(pem["ca.pem"].encode(),
                                                         pem["stranger.key"].encode(),
                                                         pem["stranger.pem"].encode())):
            with pytest.raises(grpc.RpcError) as err:
                predict(credentials)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    finally:
        _stop(proc)


def test_ssl_config_errors_name_the_field_before_anything_starts(tmp_path):
    from tf_puma.apps.serving import tls  # noqa: PLC0415

    cases = [('server_key: "server.key"\nserver_cert: "-----BEGIN CERTIFICATE-----"',
              "server_key must hold the PEM text itself"),
             ('server_key: "-----BEGIN PRIVATE KEY-----"\nserver_cert: "server.pem"',
              "server_cert must hold the PEM text itself"),
             ('server_key: "-----BEGIN PRIVATE KEY-----"\n'
              'server_cert: "-----BEGIN CERTIFICATE-----"\nclient_verify: true',
              "client_verify needs custom_ca"),
             ("server_keys: 1", "not an SSLConfig text proto")]
    for text, message in cases:
        path = tmp_path / "ssl.config"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            tls.read_ssl_config(str(path))
    proc = subprocess.run([sys.executable, "-m", "tf_puma.apps.cli", "serve", "--model_name",
                           "m", "--model_base_path", str(tmp_path), "--local",
                           "--ssl_config_file", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "not an SSLConfig text proto" in proc.stderr, proc.stderr


@pytest.mark.slow  # parties killed and restarted under a running server
def test_a_killed_party_gets_unavailable_naming_it_and_the_server_recovers(served):
    import tf_puma  # noqa: PLC0415

    local = tf_puma.LocalCluster(shares_dir=str(served["base"] / "1" / "shares"))
    spec = local.start()
    proc = None
    try:
        proc, grpc_address, rest_address = _start_serve(served["base"], cluster=spec)
        rest = {"rest": rest_address}
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(grpc_address))
        x = _x(2, seed=11)
        plain = served["plain"](x)["y"]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        assert np.abs(tf.make_ndarray(stub.Predict(request, timeout=60).outputs["y"])
                      - plain).max() < BOUND
        local.kill_party(1)
        start = time.monotonic()
        code, body = _rest(rest, "/v1/models/tiny:predict", {"instances": x.tolist()})
        assert code == 503 and "party 1 at 127.0.0.1:" in body["error"], body
        assert time.monotonic() - start < 10
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "party 1 at 127.0.0.1:" in raised.value.details()
        local.restart_party(1)
        got = tf.make_ndarray(stub.Predict(request, timeout=120).outputs["y"])
        assert np.abs(got - plain).max() < BOUND  # recovered by itself: a new session
        code, body = _rest(rest, "/v1/models/tiny:predict", {"instances": x.tolist()})
        assert code == 200 and np.abs(np.array([r["y"] for r in body["predictions"]])
                                      - plain).max() < BOUND
    finally:
        if proc is not None:
            _stop(proc)
        local.stop()


@pytest.mark.slow  # the real MiniLM (1 encoder layer) converted and served
def test_serving_the_real_minilm_through_tf_servings_clients(tmp_path, capsys):
    """The issue's check: `tf-puma serve --local` on converted MiniLM, queried through
    PredictionServiceStub and REST; both equal each other and plaintext TensorFlow within the
    model bound (tests/test_models.py: 2e-3, measured 9.1e-4 with six layers)."""
    from tf_puma.apps import hf, text_data  # noqa: PLC0415

    hf.use_transformers().logging.set_verbosity_error()
    plain = hf.export_minilm(str(tmp_path / "plain"), batch=2, seq_len=16, layers=1)
    base = tmp_path / "minilm"
    convert.convert(plain, str(base / "1"), log=lambda line: None)
    inputs = hf.tokenize([text_data.movie_reviews()[i][1] for i in (3, 7)], 16)
    fn = tf.saved_model.load(plain).signatures["serving_default"]
    want = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    # fresh ports again if another test process took one between free_port() and the bind
    proc, grpc_address, rest_address = _start_serve(None, "--model_name", "minilm",
                                                    "--model_base_path", str(base))
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(grpc_address))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "minilm"
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = stub.Predict(request, timeout=300)
        got = {k: tf.make_ndarray(response.outputs[k]) for k in want}
        for name in want:
            assert np.abs(got[name] - want[name]).max() <= 2e-3, name
        rows = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(2)]
        code, body = _rest({"rest": rest_address}, "/v1/models/minilm:predict",
                           {"instances": rows})
        assert code == 200, body
        rest = np.array([r["sentence_embedding"] for r in body["predictions"]])
        assert np.abs(rest - want["sentence_embedding"]).max() <= 2e-3
        # Same secure model, same inputs: the two APIs differ only by fixed-point noise.
        assert np.abs(rest - got["sentence_embedding"]).max() <= 1e-3
        # The README's client snippet, as written (the default port swapped for this one's).
        from tests.test_readme import serving_snippet  # noqa: PLC0415

        grpc_port = grpc_address.rsplit(":", 1)[1]
        snippet = serving_snippet().replace("localhost:8500", f"localhost:{grpc_port}")
        namespace = {"ids": inputs["input_ids"], "mask": inputs["attention_mask"]}
        exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our README
        printed = capsys.readouterr().out
        assert printed.startswith("[[") and set(namespace["request"].inputs) == set(inputs)
    finally:
        _stop(proc)


def test_a_taken_api_port_is_a_one_line_error(served, tmp_path):
    """gRPC's own bind failure was a traceback; what serve started is stopped and removed (the
    local share root, in serve's TMPDIR, was left behind)."""
    import socket  # noqa: PLC0415

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tf_puma.apps.cli", "serve", "--model_name", "tiny",
             "--model_base_path", str(served["base"]), "--port", str(port), "--rest_api_port",
             "0", "--local"], capture_output=True, text=True, timeout=240,
            env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port} for gRPC: the port is in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in scratch.iterdir() if "serve-shares" in p.name] == []
