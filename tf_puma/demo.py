"""`make demo`: secure inference building blocks on three local party servers.

Starts three party servers on loopback, secret-shares a client input and a model owner's weight
matrix, computes a secure fixed-point affine layer y = x W + b on the shares, reveals y to the
client only, and prints the error against plaintext TensorFlow, the wall time and the per-protocol
traffic table. (The full MiniLM job replaces this once the SavedModel rewriter lands.)
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_puma  # noqa: E402
from tf_puma import costs  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(128, 768)), tf.float32)       # client's activations
    w = tf.constant(rng.normal(size=(768, 768)) * 0.05, tf.float32)  # model owner's weights
    b = tf.constant(rng.normal(size=(768,)) * 0.1, tf.float32)

    @tf.function
    def secure_affine(x, w, b):
        return tf_puma.reveal(tf_puma.share(x, name="x") @ tf_puma.share(w, name="w")
                              + tf_puma.share(b, name="b"))

    print("starting three party servers on 127.0.0.1 ...")
    with tf_puma.LocalCluster() as spec:
        tf_puma.connect(spec)
        print(f"cluster: {spec.to_json()}")
        with costs.Ledger() as ledger:
            start = time.perf_counter()
            secure_affine.get_concrete_function(x, w, b)
            trace_s = time.perf_counter() - start
        start = time.perf_counter()
        y = secure_affine(x, w, b).numpy()
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(5):
            y = secure_affine(x, w, b).numpy()
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
