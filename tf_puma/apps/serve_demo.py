"""`make serve-demo`: the real all-MiniLM-L6-v2 served with TF Serving's API.

1. The model owner exports MiniLM and converts it into TF Serving's layout (MODEL/1/).
2. `tf-puma serve --local` starts three local parties and answers TF Serving's gRPC and REST
   APIs.
3. A client POSTs the demo sentences to /v1/models/minilm:predict (REST, as curl would) and asks
   the same through gRPC's PredictionServiceStub; the demo prints the similarity matrix from the
   REST answer, both answers' distance to plaintext TensorFlow, and stops the server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from tf_puma.apps import prepare_process


def main(argv: list[str] | None = None) -> None:
    import argparse  # noqa: PLC0415

    prepare_process()
    import grpc  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa

    from tf_puma.apps import hf  # noqa: PLC0415
    from tf_puma.apps.demo import SENTENCES, SEQ_LEN, _cosine, _matrix, _plaintext  # noqa
    from tf_puma.cluster import free_port  # noqa: PLC0415
    from tf_puma.rewrites import convert  # noqa: PLC0415

    hf.use_transformers().logging.set_verbosity_error()
    parser = argparse.ArgumentParser(prog="python -m tf_puma.apps.serve_demo",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=None,
                        help="keep only MiniLM's first N encoder layers (default: all 6)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="tf-puma-serve-demo-")
    server = None
    try:
        print(f"== model owner: export MiniLM, convert it to {work}/minilm/1")
        plain = hf.export_minilm(os.path.join(work, "plain"), batch=len(SENTENCES),
                                 seq_len=SEQ_LEN, layers=args.layers)
        base = os.path.join(work, "minilm")
        convert.convert(plain, os.path.join(base, "1"), log=lambda line: None)
        inputs = hf.tokenize(SENTENCES, SEQ_LEN)
        reference, _ = _plaintext(plain, inputs)

        grpc_port, rest_port = free_port(), free_port()
        command = ["tf-puma", "serve", "--model_name", "minilm", "--model_base_path", base,
                   "--port", str(grpc_port), "--rest_api_port", str(rest_port), "--local"]
        print("== " + " ".join(command))
        start = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "tf_puma.apps.cli", *command[1:]],
                                  stdout=subprocess.PIPE, text=True)
        ready = server.stdout.readline().strip()
        if not ready.startswith("tf-puma serve ready"):
            sys.exit(f"the server did not start: {ready}")
        print(f"{ready} ({time.perf_counter() - start:.1f} s: parties, load, warm-up)\n")

        rows = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(len(SENTENCES))]
        url = f"http://127.0.0.1:{rest_port}/v1/models/minilm:predict"
        print(f"== REST: curl -d '{{\"instances\": [{{\"input_ids\": [...], "
              f"\"attention_mask\": [...]}}, ...]}}' {url}")
        start = time.perf_counter()
        request = urllib.request.Request(url, data=json.dumps({"instances": rows}).encode())
        with urllib.request.urlopen(request, timeout=600) as response:
            body = json.loads(response.read())
        rest_s = time.perf_counter() - start
        rest = np.array([p["sentence_embedding"] for p in body["predictions"]])

        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = "minilm"
        for name, value in inputs.items():
            predict.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        start = time.perf_counter()
        answer = stub.Predict(predict, timeout=600)
        grpc_s = time.perf_counter() - start
        via_grpc = tf.make_ndarray(answer.outputs["sentence_embedding"])

        for i, sentence in enumerate(SENTENCES):
            print(f"  s{i}: {sentence}")
        print()
        print(_matrix("cosine similarity from the REST answer:", _cosine(rest)))
        want = reference["sentence_embedding"]
        rest_err = float(np.abs(rest - want).max())
        grpc_err = float(np.abs(via_grpc - want).max())
        print(f"\nmax |served - plaintext| sentence embedding: REST {rest_err:.2e} "
              f"({rest_s:.2f} s), gRPC {grpc_err:.2e} ({grpc_s:.2f} s)")
        if max(rest_err, grpc_err) > 0.02:
            sys.exit("the served answer differs from plaintext beyond the bound (0.02)")
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
            print("server stopped")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
