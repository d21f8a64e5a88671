"""Ring GEMM kernel (PumaRingMatMul, Z_2^64) against TensorFlow's int64 and float32 matmul.

Prints G multiply-adds per second (M*N*K / time) on this machine's CPU thread pool and writes
benchmarks/results/ring_gemm.json. Target: >= 3x TF's int64 matmul. Each vectorised path this
CPU runs (PumaRingGemmPaths: vpmullq "avx512", the AMX-INT8 byte-limb tiles "amx") is timed on
its own, then "auto" (what the share products take: AMX from an inner dimension of 64).
`--threads 1` runs every op on one thread, as a local party does (LocalCluster gives each of
the three a third of the cores).

Second table: a party's share of a product at decoding shapes (one row by a weight,
PumaMatMulShare: z = x_own @ (y_own + y_next) + x_next @ y_own + a zero share), which reads the
weights' two shares in place (m <= 8 rows), against the same sum with TensorFlow's int64 matmul;
GB/s counts the two weight shares read once.

Third table: the one-hot embedding's product mod 2^32 (ring_bits=32: 32-bit words on the
AVX-512 path, four byte limbs on AMX) against the same product in Z_2^64, each path.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import best_time, print_table, write_json  # noqa: E402
from tf_puma import _ops  # noqa: E402

# A MiniLM head's attention products (K = 32 and 128) and dense layers, BERT-base's dense
# layers at 128 tokens, then MiniLM's one-hot embedding product (K = the vocabulary: the GEMM
# takes the inner dimension 1,024 at a time)
SHAPES = [(128, 32, 128), (128, 128, 32), (128, 384, 384), (128, 384, 1536), (128, 768, 768),
          (128, 768, 3072), (128, 3072, 768), (128, 30522, 384)]
# (rows, k, n, weight stored transposed): SmolLM2's MLP, its head and one-hot embedding, GPT-2's
# tied head (the token table, transposed), 8 prompt rows
THIN_SHAPES = [(1, 576, 1536, False), (1, 576, 49152, False), (1, 49152, 576, False),
               (1, 768, 50257, True), (8, 576, 1536, False)]


def thin_products(ops, rng) -> list[dict]:
    keys = [tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=2, dtype=np.int64))
            for _ in range(2)]
    results = []
    for m, k, n, tb in THIN_SHAPES:
        x = [tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(m, k), dtype=np.int64))
             for _ in range(2)]
        y = [tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(n, k) if tb else (k, n),
                                      dtype=np.int64)) for _ in range(2)]
        share = tf.function(lambda: ops.puma_mat_mul_share(x[0], x[1], y[0], y[1], keys[0],
                                                           keys[1], stream=1, transpose_b=tb))
        tf_int = tf.function(lambda: tf.linalg.matmul(x[0], y[0] + y[1], transpose_b=tb)
                             + tf.linalg.matmul(x[1], y[0], transpose_b=tb))
        t_share = best_time(lambda: share().numpy())
        t_int = best_time(lambda: tf_int().numpy())
        results.append({"shape": f"[{m},{k}]x[{k},{n}]" + ("^T" if tb else ""),
                        "share_ms": t_share * 1e3, "tf_int64_ms": t_int * 1e3,
                        "weights_gb_s": 2 * k * n * 8 / t_share / 1e9,
                        "speedup_vs_tf_int64": t_int / t_share})
    return results


EMBEDDING_SHAPES = [(128, 30522, 384)]  # MiniLM's one-hot rows by its token table


def narrow_products(ops, rng, paths: list[str]) -> list[dict]:
    """Each path's embedding-shaped product mod 2^32 and mod 2^64 (checked equal mod 2^32)."""
    results = []
    for m, k, n in EMBEDDING_SHAPES:
        a = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(m, k), dtype=np.int64))
        b = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(k, n), dtype=np.int64))
        for path in [*paths, "auto"]:
            row = {"shape": f"[{m},{k}]x[{k},{n}]", "path": path}
            for bits in (64, 32):
                ring = tf.function(lambda bits=bits: ops.puma_ring_mat_mul(
                    a, b, kernel=path, ring_bits=bits))
                row[f"mod_2^{bits}"] = ring().numpy()
                row[f"ms_{bits}"] = best_time(lambda: ring().numpy()) * 1e3
            np.testing.assert_array_equal(row.pop("mod_2^32"),
                                          row.pop("mod_2^64") & 0xFFFFFFFF)
            row["speedup"] = row["ms_64"] / row["ms_32"]
            results.append(row)
    return results


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow's intra-op threads (0: its default, every core)")
    args = parser.parse_args(argv[1:])
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    ops = _ops.load()
    rng = np.random.default_rng(0)
    paths = [p.decode() for p in ops.puma_ring_gemm_paths().numpy() if p != b"portable"]
    rows, results = [], []
    for m, k, n in SHAPES:
        a64 = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(m, k), dtype=np.int64))
        b64 = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=(k, n), dtype=np.int64))
        a32, b32 = tf.cast(a64, tf.float32), tf.cast(b64, tf.float32)
        tf_int = tf.function(lambda: tf.linalg.matmul(a64, b64))
        tf_f32 = tf.function(lambda: tf.linalg.matmul(a32, b32))
        expected = tf_int().numpy()
        macs = m * n * k
        row = {"shape": f"[{m},{k}]x[{k},{n}]"}
        for path in [*paths, "auto"]:
            ring = tf.function(lambda: ops.puma_ring_mat_mul(a64, b64, kernel=path))
            np.testing.assert_array_equal(ring().numpy(), expected)  # same ring result
            t_ring = best_time(lambda: ring().numpy())
            row[f"ring_{path}_gmacs"] = macs / t_ring / 1e9
            row[f"ring_{path}_ms"] = t_ring * 1e3
        t_int = best_time(lambda: tf_int().numpy())
        t_f32 = best_time(lambda: tf_f32().numpy())
        row.update({"tf_int64_gmacs": macs / t_int / 1e9, "tf_float32_gmacs": macs / t_f32 / 1e9,
                    "speedup_vs_tf_int64": t_int / (row["ring_auto_ms"] / 1e3)})
        results.append(row)
        rows.append([row["shape"], row["ring_auto_ms"],
                     *[row[f"ring_{path}_gmacs"] for path in [*paths, "auto"]],
                     row["tf_int64_gmacs"], row["tf_float32_gmacs"], row["speedup_vs_tf_int64"]])
    threads = args.threads or os.cpu_count()
    print(f"threads: {threads}; ring GEMM paths: {', '.join(paths)}")
    print_table(["shape", "auto ms", *[f"{p} GMAC/s" for p in [*paths, "auto"]],
                 "TF int64 GMAC/s", "TF f32 GMAC/s", "auto / TF int64"], rows)
    thin = thin_products(ops, rng)
    print_table(["share product (decoding)", "ms", "TF int64 ms", "weights GB/s",
                 "TF int64 / ours"],
                [[r["shape"], r["share_ms"], r["tf_int64_ms"], r["weights_gb_s"],
                  r["speedup_vs_tf_int64"]] for r in thin])
    narrow = narrow_products(ops, rng, paths)
    print_table(["product mod 2^32 (embedding)", "path", "ms mod 2^64", "ms mod 2^32",
                 "2^64 / 2^32"],
                [[r["shape"], r["path"], r["ms_64"], r["ms_32"], r["speedup"]] for r in narrow])
    write_json(f"ring_gemm_{args.threads}_threads" if args.threads else "ring_gemm",
               {"unit": "G multiply-adds per second", "threads": threads,
                "paths": paths, "results": results, "decoding_share_products": thin,
                "products_mod_2_32": narrow})


if __name__ == "__main__":
    main(sys.argv)
