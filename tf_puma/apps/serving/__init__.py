"""`tf-puma serve`: TF Serving's PredictionService (gRPC) and REST API in front of secure models.

| module      | what                                                                   |
|-------------|------------------------------------------------------------------------|
| `servable`  | one model version in a TF1 session on the client task (TF Serving's path) |
| `models`    | the served models by name/version; request faults -> status codes       |
| `grpc_api`  | PredictionService Predict/GetModelMetadata, ModelService GetModelStatus |
| `rest_api`  | /v1/models/NAME[:predict|/metadata] as TF Serving documents it          |
| `tls`       | --ssl_config_file: TF Serving's SSLConfig, TLS on the gRPC port          |

This process is the cluster's client task: it starts that task's TensorFlow server and loads each
model into a Session whose target is it, as TF Serving does with `session_target`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from concurrent import futures

READY_PREFIX = "tf-puma serve ready"


def read_model_config(path: str) -> list[tuple[str, str]]:
    """(name, base_path) of each model in a ModelServerConfig text proto (--model_config_file)."""
    from google.protobuf import text_format  # noqa: PLC0415
    from tensorflow_serving.config import model_server_config_pb2  # noqa: PLC0415

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: not a ModelServerConfig text proto ({err})") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: needs a model_config_list {{ config {{ name: ... "
                         "base_path: ... }} }}")
    models = []
    for entry in config.model_config_list.config:
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {entry.name!r} has platform "
                             f"{entry.model_platform!r}; tf-puma serves 'tensorflow' models")
        if not entry.name or not entry.base_path:
            raise ValueError(f"{path}: every config needs a name and a base_path")
        base = entry.base_path if os.path.isabs(entry.base_path) else os.path.join(
            os.path.dirname(os.path.abspath(path)), entry.base_path)
        models.append((entry.name, base))
    if len({name for name, _ in models}) != len(models):
        raise ValueError(f"{path}: model names must be unique")
    return models


class LocalShares:
    """--local with several models or versions: one share root per party whose subdirectories
    link to each served version's shares/partyI (a party finds bundles there by id, on first
    use, so versions added later are found too)."""

    def __init__(self) -> None:
        import tempfile  # noqa: PLC0415

        self.root = tempfile.mkdtemp(prefix="tf-puma-serve-shares-")
        for i in range(3):
            os.makedirs(os.path.join(self.root, f"party{i}"))

    def add(self, name: str, version: int, model_dir: str) -> None:
        for i in range(3):
            link = os.path.join(self.root, f"party{i}", f"{name}-{version}")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(model_dir, "shares", f"party{i}")), link)

    def remove(self) -> None:
        import shutil  # noqa: PLC0415

        shutil.rmtree(self.root, ignore_errors=True)


def serve(models: list[tuple[str, str]], port: int, rest_api_port: int,
          cluster_spec: str | None, local: bool, host: str, batching: object = None,
          poll_seconds: float = 1.0, ssl_config: object = None, tls_dir: str | None = None,
          tunnel_bind: str | None = None) -> None:
    """Serves `models` ((name, base path) pairs) until SIGTERM/SIGINT; a new version directory
    under a base path is loaded, warmed and swapped in every `poll_seconds` (0: never).
    `ssl_config` (tls.SSLConfig) puts TLS on the gRPC port for the server's clients; `tls_dir`
    (the client task's TLS directory) puts mutual-TLS tunnels between this client task and the
    parties (tf_puma/tunnels.py; `tunnel_bind`: the IP of its public port, default `host`)."""
    import grpc  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_puma  # noqa: PLC0415
    from tf_puma import _ops  # noqa: PLC0415
    from tf_puma.apps.serving import grpc_api, rest_api  # noqa: PLC0415
    from tf_puma.apps.serving.models import ModelRegistry, version_dirs  # noqa: PLC0415
    from tf_puma.cluster import CLIENT_JOB, check_parties, wait_reachable  # noqa: PLC0415

    newest = {name: max(version_dirs(base).items()) for name, base in models}
    # Everything started is stopped, in reverse order, however serve ends (signal, a port in
    # use, a party that does not answer, a model that fails to load).
    with contextlib.ExitStack() as started:
        shares = LocalShares() if local else None
        if shares is not None:
            started.callback(shares.remove)
            for name, (version, path) in newest.items():
                shares.add(name, version, path)
            cluster_runner = tf_puma.LocalCluster(shares_dir=shares.root)
            cluster = cluster_runner.start()
            started.callback(cluster_runner.stop)
        else:
            cluster = tf_puma.Cluster.from_spec(cluster_spec)
        if tls_dir is not None:
            from tf_puma import tunnels  # noqa: PLC0415

            tunnel = tunnels.Tunnels(cluster, "client", tls_dir, public_bind=tunnel_bind or host)
            tunnel.start()
            started.callback(tunnel.stop)
            cluster = tunnels.loopback_cluster(cluster)
        for address in cluster.parties:
            wait_reachable(address, 30.0)
        check_parties(cluster, timeout=10.0)
        _ops.load()
        client_server = tf.distribute.Server(tf.train.ClusterSpec(cluster.as_dict()),
                                             job_name=CLIENT_JOB, task_index=0,
                                             protocol="grpc", start=True)
        registry = ModelRegistry(client_server.target, cluster, batching)
        started.callback(registry.close)
        for name, (version, path) in newest.items():
            registry.load(name, version, path)
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                                  options=[("grpc.max_receive_message_length", 64 * 2 ** 20)])
        grpc_api.add_services(grpc_server, registry)
        try:
            if ssl_config is None:
                grpc_server.add_insecure_port(f"{host}:{port}")
            else:
                from tf_puma.apps.serving import tls  # noqa: PLC0415

                grpc_server.add_secure_port(f"{host}:{port}", tls.server_credentials(ssl_config))
        except RuntimeError:  # grpc's "Failed to bind to address"
            raise OSError(f"cannot listen on {host}:{port} for gRPC: the port is in use "
                          "(another server, or pass another --port)") from None
        grpc_server.start()
        started.callback(lambda: grpc_server.stop(grace=5).wait())
        if rest_api_port:
            try:
                http_server = rest_api.make_server(host, rest_api_port, registry)
            except OSError as err:
                raise OSError(f"cannot listen on {host}:{rest_api_port} for REST: the port is in "
                              "use (another server, or pass another --rest_api_port): "
                              f"{err}") from None
            threading.Thread(target=http_server.serve_forever, name="tf-puma-rest",
                             daemon=True).start()
            started.callback(http_server.shutdown)
        stop = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            del frame
            stop.set()

        def poll() -> None:
            while not stop.wait(poll_seconds):
                for name, base in models:
                    try:
                        version, path = max(version_dirs(base).items())
                    except (OSError, ValueError):
                        continue  # a base path being rewritten: next time
                    if version > registry.find(name).version:
                        if shares is not None:
                            shares.add(name, version, path)
                        try:
                            registry.load(name, version, path)
                            print(f"tf-puma serve: model {name!r} version {version} loaded, "
                                  "warmed and serving", flush=True)
                        except Exception as err:  # noqa: BLE001 - keep serving the old version
                            print(f"tf-puma serve: model {name!r} version {version} failed to "
                                  f"load ({err}); still serving the earlier version",
                                  file=sys.stderr, flush=True)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if poll_seconds > 0:
            threading.Thread(target=poll, name="tf-puma-version-poll", daemon=True).start()
        served = ", ".join(f"{name!r} version {version}" for name, (version, _) in newest.items())
        print(f"{READY_PREFIX}: {served}; gRPC{' (TLS)' if ssl_config else ''} at {host}:{port}"
              + (f", REST at {host}:{rest_api_port}" if rest_api_port else ""), flush=True)
        stop.wait()
    sys.stdout.flush()
