"""`make demo`: secure inference building blocks on three local party servers.

The model owner splits its weights W, b into one share bundle per party; three party servers start
on loopback, each with its own bundle; the client secret-shares its input x; the parties compute a
secure fixed-point affine layer y = x W + b (weights loaded party-side, never seen by the client),
reveal y to the client only, and the demo prints the error against plaintext TensorFlow, the wall
time and the per-protocol traffic table. (The full MiniLM job replaces this with issue 4.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_puma  # noqa: E402
from tf_puma import bundle, costs  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(128, 768)), tf.float32)       # client's activations
    w = tf.constant(rng.normal(size=(768, 768)) * 0.05, tf.float32)  # model owner's weights
    b = tf.constant(rng.normal(size=(768,)) * 0.1, tf.float32)

    @tf.function
    def secure_affine(x):
        w_shared = bundle.party_weight("dense/kernel", w.shape)
        b_shared = bundle.party_weight("dense/bias", b.shape)
        return tf_puma.reveal(tf_puma.share(x, name="x") @ w_shared + b_shared)

    shares_dir = tempfile.mkdtemp(prefix="tf-puma-shares-")
    bundle.write_bundles({"dense/kernel": w.numpy(), "dense/bias": b.numpy()}, shares_dir)
    print(f"model owner wrote one share bundle per party under {shares_dir}")
    print("starting three party servers on 127.0.0.1 ...")
    try:
        run_demo(secure_affine, x, w, b, shares_dir)
    finally:
        shutil.rmtree(shares_dir, ignore_errors=True)


def run_demo(secure_affine, x, w, b, shares_dir: str) -> None:
    with tf_puma.LocalCluster(shares_dir=shares_dir) as spec:
        tf_puma.connect(spec)
        print(f"cluster: {spec.to_json()}")
        with costs.Ledger() as ledger:
            start = time.perf_counter()
            secure_affine.get_concrete_function(x)
            trace_s = time.perf_counter() - start
        start = time.perf_counter()
        y = secure_affine(x).numpy()
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(5):
            y = secure_affine(x).numpy()
        call_s = (time.perf_counter() - start) / 5
        reference = (x @ w + b).numpy()
        err = np.abs(y - reference).max()
        print(f"\nsecure y = x W + b, x {x.shape}, W {w.shape}")
        print(f"max |secure - plaintext| = {err:.2e}   (bound 2e-3 for this size)")
        print(f"trace {trace_s:.2f} s, first call {first_s * 1e3:.0f} ms, "
              f"steady call {call_s * 1e3:.0f} ms\n")
        print(ledger.table())
        if err > 2e-3:
            raise SystemExit("secure result differs from plaintext beyond the bound")


if __name__ == "__main__":
    main()
