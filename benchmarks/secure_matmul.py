"""Secure fixed-point matmul (with TruncPr) on three local party servers.

For each shape: wall time of one secure matmul (a chain of L dependent matmuls minus the
share/reveal baseline, divided by L), its rounds and bytes per party from the cost ledger, and
the ratio to one local ring GEMM of the same shape. Targets: <= 8x one ring GEMM; bytes = 1 ring
element per output per party for the product plus TruncPr's cost (8 elements per output in all).
Writes benchmarks/results/secure_matmul.json.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_puma  # noqa: E402
from benchmarks.common import best_time, print_table, write_json  # noqa: E402
from tf_puma import _ops, costs  # noqa: E402

SHAPES = [(128, 768, 768), (128, 768, 3072)]
CHAIN = 4


def secure_chain(length: int):
    @tf.function
    def run(x, w):
        sx, sw = tf_puma.share(x, name="x"), tf_puma.share(w, name="w")
        deps: list = []
        out = sx
        for _ in range(length):
            with tf.control_dependencies(deps):
                out = tf_puma.matmul(sx, sw)
            deps = [t for pair in out.pairs for t in pair]
        return tf_puma.reveal(out)

    return run


def main() -> None:
    ops = _ops.load()
    rng = np.random.default_rng(0)
    rows, results = [], []
    with tf_puma.LocalCluster() as spec:
        tf_puma.connect(spec)
        for m, k, n in SHAPES:
            x = tf.constant(rng.normal(size=(m, k)))
            w = tf.constant(rng.normal(size=(k, n)) * 0.05)
            baseline, chain = secure_chain(0), secure_chain(CHAIN)
            with costs.Ledger() as ledger:
                chain.get_concrete_function(x, w)
            err = float(np.max(np.abs(chain(x, w).numpy() - x.numpy() @ w.numpy())))
            t_base = best_time(lambda: baseline(x, w).numpy(), repeats=3)
            t_chain = best_time(lambda: chain(x, w).numpy(), repeats=3)
            t_matmul = (t_chain - t_base) / CHAIN
            a = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(m, k), dtype=np.int64))
            b = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(k, n), dtype=np.int64))
            gemm = tf.function(lambda: ops.puma_ring_mat_mul(a, b))
            t_gemm = best_time(lambda: gemm().numpy())
            row = ledger.ops["matmul"]
            per_party = {str(p): row.bytes_sent.get(p, 0) // CHAIN for p in range(3)}
            result = {"shape": f"[{m},{k}]x[{k},{n}]", "secure_ms": t_matmul * 1e3,
                      "ring_gemm_ms": t_gemm * 1e3, "ratio_to_gemm": t_matmul / t_gemm,
                      "rounds": row.rounds // CHAIN, "bytes_sent_per_party": per_party,
                      "ring_elements_per_output": sum(per_party.values()) / 8 / (m * n),
                      "max_abs_error": err}
            results.append(result)
            rows.append([result["shape"], result["secure_ms"], result["ring_gemm_ms"],
                         result["ratio_to_gemm"], result["rounds"],
                         " / ".join(f"{v / 2 ** 20:.2f}" for v in per_party.values()),
                         result["ring_elements_per_output"], err])
    print_table(["shape", "secure ms", "1 GEMM ms", "ratio", "rounds", "MiB sent P0/P1/P2",
                 "elements/output", "max abs err"], rows)
    write_json("secure_matmul", {"chain": CHAIN, "results": results})


if __name__ == "__main__":
    main()
