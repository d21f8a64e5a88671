"""`make demo`: secure sentence embeddings with the real all-MiniLM-L6-v2.

1. The model owner exports MiniLM (transformers' TFBertModel + mean pooling) to a SavedModel and
   runs `tf-puma convert`: a secure SavedModel without weights, plus one share bundle per party.
2. Three party servers start on loopback, each with only its own bundle.
3. The client tokenizes a handful of sentences and calls the secure model; the parties never see
   the sentences or the weights, the client never sees the weights.
4. The demo prints the cosine-similarity matrix next to plaintext TensorFlow's, the errors, the
   times and the traffic, and stops the servers.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from tf_puma.apps import prepare_process

SEQ_LEN = 32
SENTENCES = [
    "A gripping thriller with superb performances from the whole cast.",
    "The actors are wonderful and the suspense never lets up.",
    "The plot is a confusing mess that goes nowhere.",
    "A dull, pointless story with a terrible ending.",
    "The stock market fell sharply after the bank raised interest rates.",
]


def _cosine(e: np.ndarray) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    return e @ e.T


def _matrix(title: str, m: np.ndarray) -> str:
    rows = [title, "      " + "".join(f"{f's{j}':>8}" for j in range(len(m)))]
    rows += [f"  s{i}  " + "".join(f"{v:>8.4f}" for v in row) for i, row in enumerate(m)]
    return "\n".join(rows)


def _plaintext(model_dir: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                       float]:
    """The plaintext model's outputs and time, its TF functions released before the parties
    start (functions alive when local parties stop would be removed from them too late)."""
    import tensorflow as tf  # noqa: PLC0415

    plain_fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    start = time.perf_counter()
    out = {k: v.numpy() for k, v in plain_fn(**{k: tf.constant(v) for k, v in inputs.items()}
                                              ).items()}
    seconds = time.perf_counter() - start
    del plain_fn
    gc.collect()
    return out, seconds


def main(argv: list[str] | None = None) -> None:
    import argparse  # noqa: PLC0415

    prepare_process()  # before TensorFlow loads (imported below)
    import tf_puma  # noqa: PLC0415
    from tf_puma import secure_model  # noqa: PLC0415
    from tf_puma.apps import hf  # noqa: PLC0415
    from tf_puma.rewrites import convert  # noqa: PLC0415

    hf.use_transformers().logging.set_verbosity_error()  # no loading chatter in the demo

    parser = argparse.ArgumentParser(prog="python -m tf_puma.apps.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=None,
                        help="keep only MiniLM's first N encoder layers (default: all 6)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="tf-puma-demo-")
    try:
        print(f"== model owner: export all-MiniLM-L6-v2 and convert it (work dir {work})")
        plain_dir = hf.export_minilm(os.path.join(work, "minilm"), batch=len(SENTENCES),
                                     seq_len=SEQ_LEN, layers=args.layers)
        secure_dir = os.path.join(work, "minilm-secure")
        start = time.perf_counter()
        manifest = convert.convert(plain_dir, secure_dir)
        print(f"convert: {time.perf_counter() - start:.1f} s\n")

        inputs = hf.tokenize(SENTENCES, SEQ_LEN)
        reference, plain_s = _plaintext(plain_dir, inputs)

        print("== three parties start, each with its own share bundle; the client connects")
        with tf_puma.LocalCluster(shares_dir=os.path.join(secure_dir, "shares")) as spec:
            tf_puma.connect(spec)
            start = time.perf_counter()
            model = secure_model.load(secure_dir)
            load_s = time.perf_counter() - start
            start = time.perf_counter()
            out = {k: v.numpy() for k, v in model(**inputs).items()}
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            out = {k: v.numpy() for k, v in model(**inputs).items()}
            call_s = time.perf_counter() - start
        print("parties stopped\n")

        for i, s in enumerate(SENTENCES):
            print(f"  s{i}: {s}")
        sim_secure, sim_plain = _cosine(out["sentence_embedding"]), _cosine(
            reference["sentence_embedding"])
        print()
        print(_matrix("cosine similarity, secure:", sim_secure))
        print(_matrix("cosine similarity, plaintext TensorFlow:", sim_plain))
        hidden_err = np.abs(out["last_hidden_state"] - reference["last_hidden_state"]).max()
        sim_err = np.abs(sim_secure - sim_plain).max()
        same_rank = all(list(np.argsort(-sim_secure[i])) == list(np.argsort(-sim_plain[i]))
                        for i in range(len(SENTENCES)))
        sent = manifest.total.bytes_by_sender
        print(f"\nmax |secure - plaintext|: last hidden state {hidden_err:.2e}, "
              f"similarity {sim_err:.2e}; rankings identical: {same_rank}")
        print(f"times: load {load_s:.1f} s, first call {first_s:.1f} s, call {call_s:.2f} s "
              f"({len(SENTENCES)} x {SEQ_LEN} tokens; plaintext TF {plain_s * 1e3:.0f} ms)")
        print(f"traffic per call: {manifest.total.rounds} rounds; sent "
              + ", ".join(f"P{i} {sent.get(str(i), 0) / 2 ** 20:.1f} MiB" for i in range(3))
              + f", client {sent.get('client', 0) / 2 ** 20:.1f} MiB")
        if hidden_err > 0.02 or not same_rank:
            sys.exit("secure result differs from plaintext beyond the bound (0.02)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
