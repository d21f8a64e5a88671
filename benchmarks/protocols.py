"""Cost table of the protocol library on three local party servers.

For each protocol on a representative shape: wall time (secure call minus the share/reveal-only
baseline), rounds on the critical path, bytes sent per party and per element, and the max abs
error against float64. Rows run with 2-round truncations unless named 3-round (tf-puma
convert's default, "auto", takes 3 rounds for values of 65,536 elements or more: these shapes).
Reference per-element costs (ABY3/SPU, k = 64): mul 1 round and k bits;
MSB log2 k + 2 rounds and about 4k + 32 bits. Writes benchmarks/results/protocols.json.
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_puma  # noqa: E402
from benchmarks.common import IO_PROTOCOLS, best_time, print_table, write_json  # noqa: E402
from tf_puma import config, costs  # noqa: E402
from tf_puma.protocols import approx, compare, nn  # noqa: E402

erf = np.vectorize(math.erf)
rng = np.random.default_rng(0)


def softmax_ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def layer_norm_ref(x):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def _with_trunc_rounds(rounds: int, protocol):
    """protocol traced with `rounds`-round truncations (tf-puma convert --trunc-rounds)."""
    def traced(a):
        with config.use(config.Config(trunc_rounds=rounds)):
            return protocol(a)
    return traced


def _three_round(protocol):
    return _with_trunc_rounds(3, protocol)


def _outside_zone(x: np.ndarray, t: float) -> np.ndarray:
    """x with values in [t, t + 2^-8) moved 2^-8 up (out of a coarse test's either-way zone)."""
    return np.where((x >= t) & (x < t + 2.0 ** -8), x + 2.0 ** -8, x)


CASES = [
    ("mul (fxp)", (128, 768), lambda a: a * a, lambda x: x * x, lambda s: rng.normal(size=s)),
    ("less (msb+b2a)", (128, 768), lambda a: compare.less(a, 0.5), lambda x: (x < 0.5) * 1.0,
     lambda s: rng.normal(size=s)),
    # the coarse window (compare.coarse) may call a value within 2^-8 above t either way:
    # the sample leaves that zone out, so the error column checks the rest exactly
    ("less coarse", (128, 768), lambda a: compare.less(a, 0.5, compare.coarse(18)),
     lambda x: (x < 0.5) * 1.0, lambda s: _outside_zone(rng.normal(size=s), 0.5)),
    ("relu", (128, 768), compare.relu, lambda x: np.maximum(x, 0), lambda s: rng.normal(size=s)),
    ("exp", (12, 128, 128), approx.exp, np.exp, lambda s: -rng.uniform(0, 14, size=s)),
    *[(f"exp puma n={n}", (12, 128, 128), lambda a, n=n: approx.exp(a, method="puma", n=n),
       np.exp, lambda s: -rng.uniform(0, 14, size=s)) for n in (5, 6, 7, 8)],
    ("gelu", (128, 1536), approx.gelu, lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))),
     lambda s: rng.normal(size=s) * 3),
    ("silu", (128, 1536), approx.silu, lambda x: x / (1 + np.exp(-x)),
     lambda s: rng.normal(size=s) * 3),
    ("reciprocal [1,128]", (12, 128, 1), lambda a: approx.reciprocal(a, 1.0, 128.0),
     lambda x: 1 / x, lambda s: rng.uniform(1, 128, size=s)),
    ("softmax", (12, 128, 128), nn.softmax, softmax_ref,
     lambda s: rng.uniform(-10, 10, size=s)),
    ("layer_norm", (128, 384), nn.layer_norm, layer_norm_ref,
     lambda s: rng.normal(size=s) * 3 + 1),
    ("mul (fxp), 3-round", (128, 768), _three_round(lambda a: a * a), lambda x: x * x,
     lambda s: rng.normal(size=s)),
    ("gelu, 3-round", (128, 1536), _three_round(approx.gelu),
     lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))), lambda s: rng.normal(size=s) * 3),
    ("softmax, 3-round", (12, 128, 128), _three_round(nn.softmax), softmax_ref,
     lambda s: rng.uniform(-10, 10, size=s)),
]


def main() -> None:
    rows, results = [], []
    with tf_puma.LocalCluster() as spec:
        tf_puma.connect(spec)
        for name, shape, protocol, reference, sample in CASES:
            protocol = _with_trunc_rounds(2, protocol)  # a 3-round row's own setting wins
            x = tf.constant(sample(shape))
            secure = tf.function(lambda a, p=protocol: tf_puma.reveal(p(tf_puma.share(a)),
                                                                      tf.float64))
            baseline = tf.function(lambda a: tf_puma.reveal(tf_puma.share(a), tf.float64))
            with costs.Ledger() as ledger:
                secure.get_concrete_function(x)
            err = float(np.max(np.abs(secure(x).numpy() - reference(x.numpy()))))
            t = best_time(lambda: secure(x).numpy(), repeats=3) - best_time(
                lambda: baseline(x).numpy(), repeats=3)
            by_sender = ledger.bytes_by_sender(exclude=IO_PROTOCOLS)
            sent = {p: by_sender.get(p, 0) for p in range(3)}
            numel = int(np.prod(shape))
            rounds = ledger.critical_rounds - 2
            result = {"protocol": name, "shape": list(shape), "ms": t * 1e3, "rounds": rounds,
                      "bytes_per_party": sent,
                      "bits_per_element_per_party": 8 * max(sent.values()) / numel,
                      "max_abs_error": err}
            results.append(result)
            rows.append([name, "x".join(map(str, shape)), t * 1e3, rounds,
                         " / ".join(f"{sent[p] / 2 ** 20:.1f}" for p in range(3)),
                         result["bits_per_element_per_party"], f"{err:.1e}"])
            print(f"{name}: done", flush=True)
    print_table(["protocol", "shape", "ms", "rounds", "MiB sent P0/P1/P2",
                 "bits/elem (max party)", "max abs err"], rows)
    write_json("protocols", {"results": results})


if __name__ == "__main__":
    main()
