"""One BERT encoder layer, written directly with the protocol library, on three local servers.

MiniLM-L6 shapes (hidden 384, 12 heads, FFN 1536) at sequence lengths 32 and 128, and BERT-base
(768, 12 heads, 3072) at 128: wall time of one secure layer (steady state), rounds, bytes per
party, max abs error against float64, and the plaintext TF time. Multiply by the layer count for
a whole-model estimate before the SavedModel rewriter exists. Weights are random and shared by
this process for the benchmark (in the product the parties load their own weight shares).
Writes benchmarks/results/encoder_layer.json.
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_puma  # noqa: E402
from benchmarks.common import IO_PROTOCOLS, best_time, print_table, write_json  # noqa: E402
from tf_puma import costs  # noqa: E402
from tf_puma.protocols import approx, nn, tensor  # noqa: E402

CONFIGS = [("MiniLM-L6 layer", 32, 384, 12, 1536), ("MiniLM-L6 layer", 128, 384, 12, 1536),
           ("BERT-base layer", 128, 768, 12, 3072)]
NAMES = ["wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "g1", "b1", "w1", "c1", "w2", "c2",
         "g2", "b2"]


def make_weights(rng, hidden: int, ffn: int) -> dict[str, np.ndarray]:
    def w(*shape):
        return rng.normal(size=shape) * 0.04

    return {"wq": w(hidden, hidden), "bq": w(hidden), "wk": w(hidden, hidden), "bk": w(hidden),
            "wv": w(hidden, hidden), "bv": w(hidden), "wo": w(hidden, hidden), "bo": w(hidden),
            "g1": 1 + w(hidden), "b1": w(hidden), "w1": w(hidden, ffn), "c1": w(ffn),
            "w2": w(ffn, hidden), "c2": w(hidden), "g2": 1 + w(hidden), "b2": w(hidden)}


def layer(x, p, heads: int, secure: bool):
    """The encoder layer on Shared values (secure) or float tensors (plaintext)."""
    seq, hidden = x.shape
    dh = hidden // heads
    if secure:
        def split(t):
            return tensor.transpose(tensor.reshape(t, [seq, heads, dh]), [1, 0, 2])
        q, k, v = (split(x @ p[w] + p[b]) for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        scores = tf_puma.mul_public(tf_puma.matmul(q, k, transpose_b=True), 1 / math.sqrt(dh))
        ctx = tensor.reshape(tensor.transpose(nn.softmax(scores) @ v, [1, 0, 2]), [seq, hidden])
        h = nn.layer_norm(x + (ctx @ p["wo"] + p["bo"]), p["g1"], p["b1"], eps=1e-12)
        f = approx.gelu(h @ p["w1"] + p["c1"]) @ p["w2"] + p["c2"]
        return nn.layer_norm(h + f, p["g2"], p["b2"], eps=1e-12)

    def split(t):
        return tf.transpose(tf.reshape(t, [seq, heads, dh]), [1, 0, 2])

    def ln(t, g, b):
        mean, var = tf.nn.moments(t, axes=[-1], keepdims=True)
        return (t - mean) * tf.math.rsqrt(var + 1e-12) * g + b

    q, k, v = (split(x @ p[w] + p[b]) for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
    probs = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / math.sqrt(dh))
    ctx = tf.reshape(tf.transpose(probs @ v, [1, 0, 2]), [seq, hidden])
    h = ln(x + (ctx @ p["wo"] + p["bo"]), p["g1"], p["b1"])
    f = tf.nn.gelu(h @ p["w1"] + p["c1"]) @ p["w2"] + p["c2"]
    return ln(h + f, p["g2"], p["b2"])


def main() -> None:
    rng = np.random.default_rng(0)
    rows, results = [], []
    with tf_puma.LocalCluster() as spec:
        tf_puma.connect(spec)
        for name, seq, hidden, heads, ffn in CONFIGS:
            weights = {k: tf.constant(v) for k, v in make_weights(rng, hidden, ffn).items()}
            x = tf.constant(rng.normal(size=(seq, hidden)))

            @tf.function
            def secure_fn(x, *ws, heads=heads):
                p = {k: tf_puma.share(w, name=k) for k, w in zip(NAMES, ws)}
                return tf_puma.reveal(layer(tf_puma.share(x, name="x"), p, heads, True),
                                      tf.float64)

            @tf.function
            def share_only(x, *ws):
                shared = [tf_puma.share(w, name=k) for k, w in zip(NAMES, ws)]
                return tf_puma.reveal(tf_puma.share(x, name="x")), [
                    tf_puma.reveal(tensor.reduce_sum(s, 0)) if s.shape.rank > 1 else
                    tf_puma.reveal(s) for s in shared]

            plain_fn = tf.function(lambda x, *ws: layer(x, dict(zip(NAMES, ws)), heads, False))
            args = [x, *[weights[k] for k in NAMES]]
            start = time.perf_counter()
            with costs.Ledger() as ledger:
                secure_fn.get_concrete_function(*args)
            trace_s = time.perf_counter() - start
            start = time.perf_counter()
            out = secure_fn(*args).numpy()
            first_s = time.perf_counter() - start
            err = float(np.max(np.abs(out - plain_fn(*args).numpy())))
            t_secure = best_time(lambda: secure_fn(*args).numpy(), repeats=2) - best_time(
                lambda: share_only(*args), repeats=2)
            t_plain = best_time(lambda: plain_fn(*args).numpy())
            by_sender = ledger.bytes_by_sender(exclude=IO_PROTOCOLS)
            sent = {p: by_sender.get(p, 0) for p in range(3)}
            result = {"model": name, "seq": seq, "secure_s": t_secure, "plaintext_ms":
                      t_plain * 1e3, "rounds": ledger.critical_rounds - 2,
                      "bytes_per_party": sent, "max_abs_error": err, "trace_s": trace_s,
                      "first_call_s": first_s}
            results.append(result)
            rows.append([name, seq, t_secure, t_plain * 1e3, result["rounds"],
                         " / ".join(f"{sent[p] / 2 ** 20:.0f}" for p in range(3)),
                         f"{err:.1e}", trace_s, first_s])
            print(f"{name} seq {seq}: done", flush=True)
    print_table(["layer", "seq", "secure s", "plain ms", "rounds", "MiB sent P0/P1/P2",
                 "max abs err", "trace s", "1st call s"], rows)
    write_json("encoder_layer", {"results": results})


if __name__ == "__main__":
    main()
