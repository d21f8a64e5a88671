"""`tf-puma serve`: TF Serving's PredictionService (gRPC) and REST API in front of secure models.

| module      | what                                                                   |
|-------------|------------------------------------------------------------------------|
| `servable`  | one model version in a TF1 session on the client task (TF Serving's path) |
| `models`    | the served models by name/version; request faults -> status codes       |
| `grpc_api`  | PredictionService Predict/GetModelMetadata, ModelService GetModelStatus |
| `rest_api`  | /v1/models/NAME[:predict|/metadata] as TF Serving documents it          |

This process is the cluster's client task: it starts that task's TensorFlow server and loads each
model into a Session whose target is it, as TF Serving does with `session_target`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures

READY_PREFIX = "tf-puma serve ready"


def serve(model_name: str, model_base_path: str, port: int, rest_api_port: int,
          cluster_spec: str | None, local: bool, host: str) -> None:
    """Serves until SIGTERM/SIGINT."""
    import grpc  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_puma  # noqa: PLC0415
    from tf_puma import _ops  # noqa: PLC0415
    from tf_puma.apps.serving import grpc_api, rest_api  # noqa: PLC0415
    from tf_puma.apps.serving.models import ModelRegistry, version_dirs  # noqa: PLC0415
    from tf_puma.cluster import CLIENT_JOB, check_parties, wait_reachable  # noqa: PLC0415

    versions = version_dirs(model_base_path)
    newest = versions[max(versions)]
    cluster_runner = (tf_puma.LocalCluster(shares_dir=os.path.join(newest, "shares"))
                      if local else None)
    cluster = cluster_runner.start() if cluster_runner else tf_puma.Cluster.from_spec(cluster_spec)
    for address in cluster.parties:
        wait_reachable(address, 30.0)
    check_parties(cluster, timeout=10.0)
    _ops.load()
    client_server = tf.distribute.Server(tf.train.ClusterSpec(cluster.as_dict()),
                                         job_name=CLIENT_JOB, task_index=0, protocol="grpc",
                                         start=True)
    registry = ModelRegistry(client_server.target, cluster)
    servable = registry.load(model_name, model_base_path)
    warm = {name: np.zeros(entry.shape, tf.as_dtype(entry.dtype).as_numpy_dtype)
            for name, entry in servable.manifest.inputs.items()}
    servable.predict(warm)  # the parties register the graph before the first request
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                              options=[("grpc.max_receive_message_length", 64 * 2 ** 20)])
    grpc_api.add_services(grpc_server, registry)
    grpc_server.add_insecure_port(f"{host}:{port}")
    grpc_server.start()
    http_server = None
    if rest_api_port:
        http_server = rest_api.make_server(host, rest_api_port, registry)
        threading.Thread(target=http_server.serve_forever, name="tf-puma-rest",
                         daemon=True).start()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        del frame
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"{READY_PREFIX}: model {model_name!r} version {servable.version} "
          f"({servable.manifest.secure_graph_ops:,} graph ops); gRPC at {host}:{port}"
          + (f", REST at {host}:{rest_api_port}" if rest_api_port else ""), flush=True)
    stop.wait()
    grpc_server.stop(grace=5).wait()
    if http_server is not None:
        http_server.shutdown()
    for loaded in registry.all():
        loaded.close()
    if cluster_runner is not None:
        cluster_runner.stop()
    sys.stdout.flush()
