"""A party: one TensorFlow server in job `puma` with the tf-puma kernels loaded.

`tf-puma party --cluster SPEC --task I` serves until killed.
"""

from __future__ import annotations

from tf_puma.cluster import NUM_PARTIES, PARTY_JOB, Cluster


def serve(cluster: Cluster, task: int) -> None:
    """Starts party `task`'s server and blocks."""
    if not 0 <= task < NUM_PARTIES:
        raise ValueError(f"--task must be 0, 1 or 2, got {task}")
    import tensorflow as tf  # noqa: PLC0415

    from tf_puma import _ops  # noqa: PLC0415

    _ops.load()
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster.as_dict()), job_name=PARTY_JOB,
                                  task_index=task, protocol="grpc", start=True)
    print(f"tf-puma party ready: task {task} at {cluster.parties[task]} ({server.target})",
          flush=True)
    server.join()
