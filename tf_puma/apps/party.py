"""A party: one TensorFlow server in job `puma` with the tf-puma kernels loaded.

`tf-puma party --cluster SPEC --task I` serves until killed.
"""

from __future__ import annotations

import os

from tf_puma.cluster import NUM_PARTIES, PARTY_JOB, Cluster, exit_with_parent


def serve(cluster: Cluster, task: int, shares: str | None = None) -> None:
    """Starts party `task`'s server and blocks. `shares` is the party's share root: one bundle
    directory (OUT/shares/partyI) or a directory of them (one per model), read on first use."""
    if not 0 <= task < NUM_PARTIES:
        raise ValueError(f"--task must be 0, 1 or 2, got {task}")
    if shares is not None:
        from tf_puma import bundle  # noqa: PLC0415

        bundle.check_share_root(shares, task)  # refuses another party's bundle before serving
    exit_with_parent()
    import tensorflow as tf  # noqa: PLC0415

    from tf_puma import _ops  # noqa: PLC0415

    ops = _ops.load()
    if shares is not None:  # the kernels' share root, explicitly (no environment variable)
        ops.puma_set_share_root(root=os.path.abspath(shares), party=task)
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster.as_dict()), job_name=PARTY_JOB,
                                  task_index=task, protocol="grpc", start=True)
    print(f"tf-puma party ready: task {task} at {cluster.parties[task]} ({server.target})",
          flush=True)
    server.join()
