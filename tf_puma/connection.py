"""The client's connection to the cluster: one explicit object, handed to every model.

    conn = tf_puma.connect("cluster.json")   # this process becomes the cluster's client task
    model = tf_puma.load("OUT", connection=conn)   # (defaults to the process's connection)

TensorFlow keeps one cluster per process (its eager context), so a process has at most one
Connection; `connect` returns it and `current()` tells it. The connection

- checks every party answers in TensorFlow's own protocol before anything runs (a closed port,
  a stopped party or another program on the port is an error naming the party, never a hang);
- reconnects after a party restarted: TensorFlow's `update_server_def` asks each party whether
  it still knows this client's context and re-creates it on the ones that restarted; the models'
  functions are registered again on their next call (measured: 0.6 s);
- releases the models' functions on the parties before they stop or the process exits
  (`close`, also run at exit): otherwise TF's context removes them at interpreter teardown, after
  local parties are gone, and prints one `Failed to remove function remotely` error per party,
  and a long-lived party keeps every exited client's functions.
"""

from __future__ import annotations

import atexit
import gc
import threading
import time
import weakref
from typing import Any, Mapping, Protocol

from tf_puma.cluster import (CLIENT_JOB, Cluster, PartyUnavailable, await_parties,
                             check_parties, port_in_use, wait_reachable)


KEEP_ALIVE_S = 60  # a party drops a client's context this long after the client's last ping


class _Releasable(Protocol):
    def close(self) -> None: ...


class Connection:
    """This process as the client task of `cluster` (create it with `tf_puma.connect`)."""

    def __init__(self, cluster: Cluster, bind: str | None = None, tunnels: Any = None):
        self.cluster = cluster  # the addresses TensorFlow uses (loopback ones behind tunnels)
        self.bind = bind  # the host this client task's server listens on (None: the spec's)
        self.tunnels = tunnels  # tf_puma.tunnels.Tunnels of a TLS deployment, or None
        self._models: "weakref.WeakSet[_Releasable]" = weakref.WeakSet()
        self._lock = threading.Lock()
        self.reconnects = 0

    def __repr__(self) -> str:
        return f"Connection(client={self.cluster.client}, parties={list(self.cluster.parties)})"

    def check(self, timeout: float = 5.0) -> None:
        """Raises PartyUnavailable naming a party that does not answer within `timeout`."""
        try:
            check_parties(self.cluster, timeout=timeout)
        except PartyUnavailable as err:
            raise PartyUnavailable(f"{err}{self._tunnel_errors()}") from None

    def _tunnel_errors(self) -> str:
        """The TLS tunnels' recent errors (a refused certificate, say), to append to a
        PartyUnavailable: behind a tunnel, TensorFlow only sees a closed connection."""
        if self.tunnels is None:
            return ""
        from tf_puma import tunnels  # noqa: PLC0415

        return tunnels.recent_errors(self.tunnels.log())

    def _connect_tf(self) -> None:
        """tf.config.experimental_connect_to_cluster's work (no coordination service on gRPC,
        the context's config as the session default), with the parties told to drop this
        client's context KEEP_ALIVE_S after its last sign of life instead of TF's 600 s: the
        client's context pings every party while it lives, so a live client keeps it, and a
        party serving many short-lived clients frees each one's graphs a minute after it ends."""
        import copy  # noqa: PLC0415

        import tensorflow as tf  # noqa: PLC0415 (keep this module importable without TF work)
        from tensorflow.core.protobuf.tensorflow_server_pb2 import ServerDef  # noqa: PLC0415
        from tensorflow.python.eager import context  # noqa: PLC0415

        ctx = context.context()
        server_def = ServerDef(
            cluster=tf.train.ClusterSpec(self.cluster.as_dict()).as_cluster_def(),
            job_name=CLIENT_JOB, task_index=0, protocol="grpc",
            default_session_config=copy.deepcopy(ctx.config))
        if context.get_server_def() is None:
            if port_in_use(self.cluster.client):  # checked first: TF logs ERROR lines
                raise ConnectionError(
                    f"the client task's address {self.cluster.client} is in use: another "
                    "client of this cluster spec is running (one client per spec at a time) or "
                    "another program holds the port; stop it or give this client another "
                    "address in the spec")
            from tf_puma import listen  # noqa: PLC0415

            # TF's server binds every interface; a client of a local trial must not be
            # reachable (and drivable: it runs what a context asks) from the network.
            host = self.bind or listen.host_of(self.cluster.client)
            listen.limit_in_process(host)
            ctx.set_server_def(server_def, keep_alive_secs=KEEP_ALIVE_S)
            ctx.ensure_initialized()  # the server starts here, not at the first op
            listen.check_listening(host)
        else:  # reconnect: TF re-creates this client's context on parties that restarted
            ctx.update_server_def(server_def, keep_alive_secs=KEEP_ALIVE_S)

    def reconnect(self, timeout: float = 10.0) -> None:
        """After a party restarted: checks all three answer (PartyUnavailable if one does not),
        then lets TensorFlow re-create this client's context on the restarted ones. Calls made
        through the old context fail with AbortedError (`context_id`), never a wrong answer."""
        with self._lock:
            self.check(timeout=timeout)
            self._connect_tf()
            self.reconnects += 1

    def track(self, model: _Releasable) -> None:
        """Registers a model whose functions `close` releases."""
        self._models.add(model)

    def close(self, timeout: float = 10.0) -> None:
        """Releases every tracked model's functions on the parties (run it while they are still
        up: LocalCluster.stop and interpreter exit do). Gives up after `timeout` when a party
        does not answer (a stopped party must not hang the client's exit). The connection stays
        usable: models loaded afterwards register their functions again."""
        for model in list(self._models):
            model.close()

        def release() -> None:
            gc.collect()  # function handles held in reference cycles go now, while parties answer
            try:
                from tensorflow.python.eager import context  # noqa: PLC0415

                context.async_wait()  # the parties' RemoveFunction answers
            except Exception:  # noqa: BLE001 - a party already gone: nothing to release there
                pass

        worker = threading.Thread(target=release, name="tf-puma-release", daemon=True)
        worker.start()
        worker.join(timeout)


_current: Connection | None = None
_current_spec: tuple[Cluster, str | None] | None = None  # what `connect` was given
_current_lock = threading.Lock()


def current() -> Connection | None:
    """The process's connection, or None before `connect`."""
    return _current


def connect(cluster: Cluster | Mapping[str, Any] | str, timeout: float = 30.0,
            bind: str | None = None, tls_dir: str | None = None) -> Connection:
    """Makes this process the cluster's client task so tf.function code can place ops on parties.

    Waits up to `timeout` for each party's port, then checks each answers as a TensorFlow server
    (check_parties), so a missing, stopped or foreign party is a clear error, not a hang.
    Connecting again to the same cluster returns the same Connection; TensorFlow allows one
    cluster per process. This process's TensorFlow server listens on the spec's client host
    only (`bind` names another IP; "0.0.0.0" keeps TensorFlow's every-interface listening, for a
    client behind NAT whose spec address is not its own). Grappler's meta-optimizer is switched
    off for the process: on secure graphs (tens of thousands of small ops) it triples the first
    call's time (41 s -> 13 s for MiniLM) and two of its rewrites mis-handle patterns secure
    graphs contain (docs/design-notes.md).

    `tls_dir` (a TLS deployment, tf_puma/tunnels.py): the client's TLS directory (ca.pem,
    cert.pem, key.pem); this process starts mutual-TLS tunnels to the parties and a public TLS
    port at its spec address (`bind` names its IP), and TensorFlow's server listens on loopback.
    The tunnels end with the thread that connected (Linux's parent-death signal follows the
    creating thread): connect from the main thread or one that lives as long as the process.
    """
    global _current, _current_spec
    if not isinstance(cluster, Cluster):
        cluster = Cluster.from_spec(cluster)
    with _current_lock:
        if _current is not None:
            if _current_spec == (cluster, tls_dir):
                return _current
            raise RuntimeError(f"this process is already connected to {_current_spec[0].as_dict()}"
                               "; use one process per cluster")
        spec = (cluster, tls_dir)
        tunnel = None
        if tls_dir is not None:
            from tf_puma import tunnels  # noqa: PLC0415

            tunnel = tunnels.Tunnels(cluster, "client", tls_dir, public_bind=bind).start()
            # Not stopped at exit: TensorFlow still talks to the parties while the interpreter
            # tears down (after atexit); stunnel ends with this process (PR_SET_PDEATHSIG).
            atexit.register(tunnel.remove_files)
            cluster, bind = tunnels.loopback_cluster(cluster), "127.0.0.1"
        try:
            connection = _connect_checked(cluster, timeout, bind, tunnel)
        except BaseException:
            if tunnel is not None:
                tunnel.stop()
            raise
        _current, _current_spec = connection, spec
        return connection


def _connect_checked(cluster: Cluster, timeout: float, bind: str | None,
                     tunnel: Any) -> Connection:
    """connect's work once the addresses TensorFlow uses are known."""
    deadline = time.monotonic() + timeout
    for i, address in enumerate(cluster.parties):
        try:
            wait_reachable(address, max(1.0, deadline - time.monotonic()))
        except ConnectionError as err:
            raise PartyUnavailable(f"party {i} is not reachable: {err}. Start it with "
                                   f"`tf-puma party --cluster SPEC --task {i}`") from None
    connection = Connection(cluster, bind, tunnel)
    try:
        await_parties(cluster, max(0.0, deadline - time.monotonic()), check_timeout=5.0)
    except PartyUnavailable as err:
        raise PartyUnavailable(f"{err}{connection._tunnel_errors()}") from None  # noqa: SLF001
    import tensorflow as tf  # noqa: PLC0415

    from tf_puma import _ops  # noqa: PLC0415

    _ops.load()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    connection._connect_tf()  # noqa: SLF001
    atexit.register(connection.close)  # runs before LocalCluster.stop (registered earlier)
    return connection
