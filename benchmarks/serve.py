"""`tf-puma serve` under load and faults, through TF Serving's own clients. Prints three tables,
writes benchmarks/results/serve.json.

    python benchmarks/serve.py [--layers 1] [--requests 1000] [--seconds 20]

Model: the real all-MiniLM-L6-v2 cut to `--layers` encoder layers, converted for 4 rows x 32
tokens; each request is one review sentence (1 row, padded by the server), answered through
gRPC PredictionServiceStub and compared with plaintext TensorFlow (a wrong answer is one off by
more than 0.01; the secure error is ~2e-3).

1. Load: throughput and p50/p99 latency at concurrency 1, 4 and 16 for `--seconds` each, with
   batching off and on (--enable_batching: up to 4 concurrent rows in one secure call).
2. Faults: `--requests` sequential requests; at the middle party 1 is killed, and restarted
   after 5 failed requests. Counts wrong answers (must be 0), failed requests (each must be
   UNAVAILABLE naming party 1 within 10 s), recovery time, and the server's RSS growth.
3. Malformed requests (gRPC and REST): each must get TF Serving's code naming the problem, the
   server must not crash, and a good request right after each must be answered.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tf_puma.apps import prepare_process  # noqa: E402

prepare_process()

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

import tf_puma  # noqa: E402
from benchmarks.common import print_table, status_mib, write_json  # noqa: E402
from tf_puma.apps import hf, text_data  # noqa: E402
from tf_puma.cluster import free_port  # noqa: E402
from tf_puma.rewrites import convert  # noqa: E402

BATCH, SEQ = 4, 32
WRONG = 0.01
OUTPUT = "sentence_embedding"


class Server:
    """`tf-puma serve` in a subprocess on the converted model."""

    def __init__(self, base: str, *args: str):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tf_puma.apps.cli", "serve", "--model_name", "minilm",
             "--model_base_path", base, "--port", str(self.grpc_port), "--rest_api_port",
             str(self.rest_port), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("tf-puma serve ready"):
            raise RuntimeError(f"serve did not start: {line}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}"))

    def predict(self, inputs: dict, timeout: float = 120) -> np.ndarray:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "minilm"
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        return tf.make_ndarray(self.stub.Predict(request, timeout=timeout).outputs[OUTPUT])

    def rest(self, path: str, body: bytes | None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", data=body,
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(server: Server, rows: list[dict], reference: np.ndarray, concurrency: int,
         seconds: float) -> dict:
    latencies: list[float] = []
    worst = 0.0
    end = time.monotonic() + seconds

    def client(k: int) -> None:
        nonlocal worst
        i = k
        while time.monotonic() < end:
            start = time.monotonic()
            got = server.predict(rows[i % len(rows)])
            latencies.append(time.monotonic() - start)
            worst = max(worst, float(np.abs(got[0] - reference[i % len(rows)]).max()))
            i += concurrency

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.monotonic() - start
    return {"concurrency": concurrency, "requests": len(latencies),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_s": round(float(np.percentile(latencies, 50)), 3),
            "p99_s": round(float(np.percentile(latencies, 99)), 3), "max_abs_error": worst}


def faults(base: str, rows: list[dict], reference: np.ndarray, requests: int) -> dict:
    local = tf_puma.LocalCluster(shares_dir=os.path.join(base, "1", "shares"))
    spec = local.start()
    server = Server(base, "--cluster", spec.to_json())
    server.predict(rows[0])
    first_rss = status_mib(server.proc.pid, "VmRSS")
    ok = wrong = failed = misnamed = 0
    error_s: list[float] = []
    down = 0
    killed = restarted_at = recovered_s = None
    for i in range(requests):
        if i == requests // 2:
            local.kill_party(1)
            killed = True
        if killed and restarted_at is None and down >= 5:
            local.restart_party(1)
            restarted_at = time.monotonic()
        start = time.monotonic()
        try:
            got = server.predict(rows[i % len(rows)])
        except grpc.RpcError as err:
            failed += 1
            down += 1
            error_s.append(time.monotonic() - start)
            if err.code() != grpc.StatusCode.UNAVAILABLE or "party 1 " not in err.details():
                misnamed += 1
            continue
        if float(np.abs(got[0] - reference[i % len(rows)]).max()) > WRONG:
            wrong += 1
        else:
            ok += 1
        if restarted_at is not None and recovered_s is None:
            recovered_s = time.monotonic() - restarted_at
    last_rss = status_mib(server.proc.pid, "VmRSS")
    server.stop()
    local.stop()
    return {"requests": requests, "answered": ok + wrong, "wrong_answers": wrong,
            "failed": failed, "failed_not_unavailable_naming_party": misnamed,
            "max_seconds_to_error": round(max(error_s), 2) if error_s else None,
            "recovery_seconds_after_restart": round(recovered_s, 2) if recovered_s else None,
            "server_rss_mib_first_last": [round(first_rss), round(last_rss)],
            "server_rss_growth_percent": round(100 * (last_rss - first_rss) / first_rss, 1)}


def malformed(server: Server, good: dict) -> dict:
    """Bad requests over gRPC and REST; each must get the expected code, then a good request
    must still be answered."""
    ids, mask = good["input_ids"], good["attention_mask"]

    def grpc_case(name="minilm", inputs=None, version=None, signature=""):
        def run() -> str:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.model_spec.signature_name = signature
            if version is not None:
                request.model_spec.version.value = version
            for key, value in (inputs if inputs is not None else good).items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            try:
                server.stub.Predict(request, timeout=60)
                return "OK"
            except grpc.RpcError as err:
                return err.code().name
        return run

    def rest_case(path, body):
        def run() -> str:
            code, _ = server.rest(path, body if isinstance(body, bytes) or body is None
                                  else json.dumps(body).encode())
            return str(code)
        return run

    good_row = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    cases = [
        ("unknown model", grpc_case(name="bert"), "NOT_FOUND"),
        ("unknown version", grpc_case(version=9), "NOT_FOUND"),
        ("unknown signature", grpc_case(signature="classify"), "INVALID_ARGUMENT"),
        ("missing input", grpc_case(inputs={"input_ids": ids}), "INVALID_ARGUMENT"),
        ("extra input", grpc_case(inputs={**good, "token_type_ids": ids}), "INVALID_ARGUMENT"),
        ("float ids", grpc_case(inputs={**good, "input_ids": ids.astype(np.float32) + 0.5}),
         "INVALID_ARGUMENT"),
        ("wrong length", grpc_case(inputs={"input_ids": ids[:, :16],
                                           "attention_mask": mask[:, :16]}), "INVALID_ARGUMENT"),
        ("too many rows x rank", grpc_case(inputs={"input_ids": ids[None],
                                                   "attention_mask": mask[None]}),
         "INVALID_ARGUMENT"),
        ("row counts differ", grpc_case(inputs={"input_ids": np.repeat(ids, 2, 0),
                                                "attention_mask": mask}), "INVALID_ARGUMENT"),
        ("no rows", grpc_case(inputs={"input_ids": ids[:0], "attention_mask": mask[:0]}),
         "INVALID_ARGUMENT"),
        ("id -1", grpc_case(inputs={**good, "input_ids": np.full_like(ids, -1)}),
         "INVALID_ARGUMENT"),
        ("id = vocab", grpc_case(inputs={**good, "input_ids": np.full_like(ids, 30522)}),
         "INVALID_ARGUMENT"),
        ("id beyond int32", grpc_case(inputs={**good, "input_ids": ids.astype(np.int64)
                                              + 2 ** 33}), "INVALID_ARGUMENT"),
        ("string ids", grpc_case(inputs={**good, "input_ids": np.array([["a"] * SEQ])}),
         "INVALID_ARGUMENT"),
        ("rest unknown model", rest_case("/v1/models/bert:predict", {"instances": [good_row]}),
         "404"),
        ("rest unknown version", rest_case("/v1/models/minilm/versions/4:predict",
                                           {"instances": [good_row]}), "404"),
        ("rest bad json", rest_case("/v1/models/minilm:predict", b"{instances: ["), "400"),
        ("rest not an object", rest_case("/v1/models/minilm:predict", [1, 2]), "400"),
        ("rest both formats", rest_case("/v1/models/minilm:predict",
                                        {"instances": [good_row], "inputs": good_row}), "400"),
        ("rest neither format", rest_case("/v1/models/minilm:predict", {"rows": []}), "400"),
        ("rest empty instances", rest_case("/v1/models/minilm:predict", {"instances": []}),
         "400"),
        ("rest ragged", rest_case("/v1/models/minilm:predict", {"instances": [
            {"input_ids": [1, 2], "attention_mask": [1]}]}), "400"),
        ("rest nested too deep", rest_case("/v1/models/minilm:predict", {"instances": [
            {"input_ids": [[ids.tolist()]], "attention_mask": [[mask.tolist()]]}]}), "400"),
        ("rest rows name different inputs", rest_case("/v1/models/minilm:predict", {
            "instances": [good_row, {"input_ids": ids[0].tolist()}]}), "400"),
        ("rest values not numbers", rest_case("/v1/models/minilm:predict", {"instances": [
            {"input_ids": ["x"] * SEQ, "attention_mask": mask[0].tolist()}]}), "400"),
        ("rest NaN mask", rest_case("/v1/models/minilm:predict",
                                    b'{"inputs": {"input_ids": ' + json.dumps(ids.tolist())
                                    .encode() + b', "attention_mask": [[NaN' + b', 1' * (SEQ - 1)
                                    + b']]}}'), "400"),
        ("rest inf ids", rest_case("/v1/models/minilm:predict",
                                   b'{"inputs": {"input_ids": [[Infinity' + b', 1' * (SEQ - 1)
                                   + b']], "attention_mask": ' + json.dumps(mask.tolist())
                                   .encode() + b'}}'), "400"),
        ("rest huge id", rest_case("/v1/models/minilm:predict", {"inputs": {
            "input_ids": [[10 ** 30] * SEQ], "attention_mask": mask.tolist()}}), "400"),
        ("rest classify", rest_case("/v1/models/minilm:classify", {"instances": [good_row]}),
         "501"),
        ("rest unknown endpoint", rest_case("/v2/whatever", {"x": 1}), "404"),
        ("rest predict by GET", rest_case("/v1/models/minilm:predict", None), "400"),
        ("rest oversized body", rest_case("/v1/models/minilm:predict",
                                          b" " * (65 * 2 ** 20)), "413"),
    ]
    for rows in (2, 3):  # rows beyond one: fine (padded); these are good requests
        cases.append((f"{rows} rows (good)", grpc_case(inputs={
            "input_ids": np.repeat(ids, rows, 0), "attention_mask": np.repeat(mask, rows, 0)}),
            "OK"))
    # Variants of each wrong id and length, to reach the 50 cases.
    for bad in (-2, -1000, 30523, 2 ** 31 - 1):
        cases.append((f"id {bad}", grpc_case(inputs={**good, "input_ids":
                                                      np.full_like(ids, bad)}),
                      "INVALID_ARGUMENT"))
        cases.append((f"rest id {bad}", rest_case("/v1/models/minilm:predict", {"inputs": {
            "input_ids": np.full_like(ids, bad).tolist(), "attention_mask": mask.tolist()}}),
            "400"))
    for length in (1, 31, 33, 64):
        cases.append((f"length {length}", grpc_case(inputs={
            "input_ids": np.ones((1, length), np.int32),
            "attention_mask": np.ones((1, length), np.int32)}), "INVALID_ARGUMENT"))
        cases.append((f"rest length {length}", rest_case("/v1/models/minilm:predict", {
            "instances": [{"input_ids": [1] * length, "attention_mask": [1] * length}]}), "400"))
    results = []
    for name, run, want in cases:
        got = run()
        alive = server.proc.poll() is None
        answered = alive and server.predict(good).shape == (1, 384)
        results.append({"case": name, "expected": want, "got": got, "then_answered": answered})
    return {"cases": len(results), "as_expected": sum(r["got"] == r["expected"]
                                                       for r in results),
            "crashes": sum(not r["then_answered"] for r in results), "detail": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    hf.use_transformers().logging.set_verbosity_error()
    work = tempfile.mkdtemp(prefix="tf-puma-serve-bench-")
    plain = hf.export_minilm(os.path.join(work, "plain"), batch=BATCH, seq_len=SEQ,
                             layers=args.layers)
    base = os.path.join(work, "minilm")
    convert.convert(plain, os.path.join(base, "1"), log=lambda line: None)
    sentences = [text_data.movie_reviews()[i][1] for i in range(0, 64, 4)]
    rows = [hf.tokenize([s], SEQ) for s in sentences]
    fn = tf.saved_model.load(plain).signatures["serving_default"]
    reference = []
    for i in range(0, len(rows), BATCH):
        batch = {k: np.concatenate([r[k] for r in rows[i:i + BATCH]]) for k in rows[0]}
        reference.append(fn(**{k: tf.constant(v) for k, v in batch.items()})[OUTPUT].numpy())
    reference = np.concatenate(reference)

    load_rows = []
    for batching in (False, True):
        server = Server(base, "--local", *(["--enable_batching"] if batching else []))
        for concurrency in (1, 4, 16):
            result = load(server, rows, reference, concurrency, args.seconds)
            load_rows.append({"batching": batching, **result})
        server.stop()
    print(f"\nload: MiniLM ({args.layers} layer(s)), 1-row requests over gRPC, "
          f"{args.seconds:.0f} s per setting")
    print_table(["batching", "concurrency", "requests/s", "p50 s", "p99 s", "max abs err"],
                [["on" if r["batching"] else "off", r["concurrency"], r["requests_per_s"],
                  r["p50_s"], r["p99_s"], f"{r['max_abs_error']:.1e}"] for r in load_rows])

    fault = faults(base, rows, reference, args.requests)
    print(f"\n{args.requests} sequential requests, party 1 killed at the middle and restarted "
          "after 5 failed requests")
    print_table(["answered", "wrong", "failed", "not UNAVAILABLE naming it", "max s to error",
                 "recovery s", "server RSS growth %"],
                [[fault["answered"], fault["wrong_answers"], fault["failed"],
                  fault["failed_not_unavailable_naming_party"], fault["max_seconds_to_error"],
                  fault["recovery_seconds_after_restart"], fault["server_rss_growth_percent"]]])

    server = Server(base, "--local")
    bad = malformed(server, rows[0])
    server.stop()
    print(f"\nmalformed requests: {bad['cases']} cases, {bad['as_expected']} answered with the "
          f"expected code, {bad['crashes']} left the server unable to answer")
    for row in bad["detail"]:
        if row["got"] != row["expected"]:
            print(f"  {row['case']}: expected {row['expected']}, got {row['got']}")
    write_json("serve", {"model": f"all-MiniLM-L6-v2, {args.layers} layer(s), {BATCH} x {SEQ}",
                         "load": load_rows, "faults": fault, "malformed": bad})


if __name__ == "__main__":
    main()
