"""A party: one TensorFlow server in job `puma` with the tf-puma kernels loaded.

`tf-puma party --cluster SPEC --task I` serves until killed.
"""

from __future__ import annotations

import os

from tf_puma.cluster import NUM_PARTIES, PARTY_JOB, Cluster, exit_with_parent


class PortInUse(RuntimeError):
    """The party's port is taken."""


M_ARENA_MAX = -8  # glibc mallopt parameter
HEAP_ARENAS = 2
TRIM_EVERY_S = 10.0


_heap_bounded = False


def bound_heap() -> None:
    """Keeps a long-lived party's heap near what it uses. Each client session registers and
    runs its graphs on the party's threads; glibc gives busy threads their own arenas (up to 8
    per core) and keeps freed pages in them, so a party grew ~100 MiB per finished session
    (1-layer MiniLM, measured). Two arenas and a periodic malloc_trim (which also returns free
    pages inside arenas) return it once the party is idle for a few seconds; under back-to-back
sessions it still grows (benchmarks/faults.py measures both). Linux/glibc only; a
    no-op elsewhere."""
    import ctypes  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    global _heap_bounded
    if _heap_bounded:
        return
    _heap_bounded = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, HEAP_ARENAS)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return

    def trimmer() -> None:
        while True:
            time.sleep(TRIM_EVERY_S)
            trim(0)

    threading.Thread(target=trimmer, name="tf-puma-heap-trim", daemon=True).start()


def serve(cluster: Cluster, task: int, shares: str | None = None,
          bind_host: str | None = None, intra_op_threads: int = 0) -> None:
    """Starts party `task`'s server and blocks. `shares` is the party's share root: one bundle
    directory (OUT/shares/partyI) or a directory of them (one per model), read on first use.
    `bind_host`: the host the server must listen on (tf_puma/listen.py has set it up; checked
    here once the server runs); None leaves TensorFlow's every-interface bind.
    `intra_op_threads`: threads one kernel may use (0: TensorFlow's default, every core); parties
    sharing a host run faster with their cores divided between them."""
    if not 0 <= task < NUM_PARTIES:
        raise ValueError(f"--task must be 0, 1 or 2, got {task}")
    from tf_puma.cluster import port_in_use  # noqa: PLC0415

    # Checked first: before TensorFlow's import (a taken port fails in 0.2 s, not 3 s, and a
    # LocalCluster retrying on fresh ports stops the other two parties before they load it),
    # and TensorFlow would log two ERROR lines.
    if port_in_use(cluster.parties[task]):
        raise PortInUse(f"party {task} cannot listen on {cluster.parties[task]}: the port is in "
                        "use (is this party already running, or another program on it?)")
    bound_heap()
    if shares is not None:
        from tf_puma import bundle  # noqa: PLC0415

        bundle.check_share_root(shares, task)  # refuses another party's bundle before serving
    exit_with_parent()
    import tensorflow as tf  # noqa: PLC0415

    from tf_puma import _ops  # noqa: PLC0415

    if intra_op_threads:
        # Read by TensorFlow when the server makes its devices' thread pools (the server's
        # ConfigProto.intra_op_parallelism_threads does not reach the pools its kernels use).
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(intra_op_threads)
    ops = _ops.load()
    if shares is not None:  # the kernels' share root, explicitly (no environment variable)
        ops.puma_set_share_root(root=os.path.abspath(shares), party=task)
    try:
        server = tf.distribute.Server(tf.train.ClusterSpec(cluster.as_dict()),
                                      job_name=PARTY_JOB, task_index=task, protocol="grpc",
                                      start=True)
    except tf.errors.UnknownError as err:
        address = cluster.parties[task]
        if port_in_use(address):
            raise PortInUse(f"party {task} cannot listen on {address}: the port is in use "
                            "(is this party already running, or another program on it?)"
                            ) from None
        raise PortInUse(f"party {task} cannot start its server on {address}: {err}") from None
    if bind_host is not None:
        from tf_puma import listen  # noqa: PLC0415

        listen.check_listening(bind_host)
    print(f"tf-puma party ready: task {task} at {cluster.parties[task]} ({server.target}), "
          f"listening on {bind_host or 'every interface'}", flush=True)
    server.join()
