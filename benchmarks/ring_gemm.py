"""Ring GEMM kernel (PumaRingMatMul, Z_2^64) against TensorFlow's int64 and float32 matmul.

Prints G multiply-adds per second (M*N*K / time) on this machine's CPU thread pool and writes
benchmarks/results/ring_gemm.json. Target: >= 3x TF's int64 matmul.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import best_time, print_table, write_json  # noqa: E402
from tf_puma import _ops  # noqa: E402

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768)]


def main() -> None:
    ops = _ops.load()
    rng = np.random.default_rng(0)
    rows, results = [], []
    for m, k, n in SHAPES:
        a64 = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(m, k), dtype=np.int64))
        b64 = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(k, n), dtype=np.int64))
        a32, b32 = tf.cast(a64, tf.float32), tf.cast(b64, tf.float32)
        ring = tf.function(lambda: ops.puma_ring_mat_mul(a64, b64))
        tf_int = tf.function(lambda: tf.linalg.matmul(a64, b64))
        tf_f32 = tf.function(lambda: tf.linalg.matmul(a32, b32))
        np.testing.assert_array_equal(ring().numpy(), tf_int().numpy())  # same ring result
        macs = m * n * k
        t_ring = best_time(lambda: ring().numpy())
        t_int = best_time(lambda: tf_int().numpy())
        t_f32 = best_time(lambda: tf_f32().numpy())
        row = {"shape": f"[{m},{k}]x[{k},{n}]", "ring_gmacs": macs / t_ring / 1e9,
               "tf_int64_gmacs": macs / t_int / 1e9, "tf_float32_gmacs": macs / t_f32 / 1e9,
               "ring_ms": t_ring * 1e3, "speedup_vs_tf_int64": t_int / t_ring}
        results.append(row)
        rows.append([row["shape"], row["ring_ms"], row["ring_gmacs"], row["tf_int64_gmacs"],
                     row["tf_float32_gmacs"], row["speedup_vs_tf_int64"]])
    print(f"threads: {os.cpu_count()}")
    print_table(["shape", "ring ms", "ring GMAC/s", "TF int64 GMAC/s", "TF f32 GMAC/s",
                 "ring / TF int64"], rows)
    write_json("ring_gemm", {"unit": "G multiply-adds per second", "results": results})


if __name__ == "__main__":
    main()
