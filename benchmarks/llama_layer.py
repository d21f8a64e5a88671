"""One LLaMA-7B decoder layer, converted and run securely on this machine (issue 14, item 3).

The layer is transformers' own `TFMistralDecoderLayer` at LLaMA-7B's shapes (hidden 4096,
intermediate 11008, 32 heads of 128 with as many KV heads, RMSNorm eps 1e-6, SwiGLU, rotary base
1e4; no sliding window) with random weights (initializer range 0.02: time, rounds and bytes do
not depend on the values). The plaintext SavedModel takes the hidden states [1, T, 4096] (the
embedding's output) and returns the layer's output; the causal mask and positions are built in the
graph exactly as `TFMistralMainLayer` builds them. 202M parameters: 0.8 GB of float32 for the
owner, 3.2 GB of shares for each party.

For each token count T (8 and 128 by default): export and `convert` in a child process (as the
model owner would), three local parties holding their bundles, this process as the client:
load, first call, steady calls; time, rounds, bytes per party, peak memory per party and its
shares, and the max abs error against plaintext TF. The 32-layer figure is the steady call times
32 (embedding lookup and LM head not included); PUMA reports 200 s for LLaMA-7B, 8 tokens in and
one out, on three 32-vCPU machines (arXiv 2307.12533, table 5). Writes
benchmarks/results/llama_layer.json.

    python benchmarks/llama_layer.py                    # 8 and 128 tokens
    python benchmarks/llama_layer.py --tokens 8
    python benchmarks/llama_layer.py --hidden 256 --intermediate 688 --heads 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (party_memory_target_mib, prepare_in_child, print_table,  # noqa: E402
                    row_in_child, secure_session, shares_mib, status_mib, write_json)

LAYERS_7B = 32
PAPER_7B_S = 200.0  # PUMA, LLaMA-7B, 8 tokens in, 1 out, 3 x 32 vCPUs (their table 5)
STEADY_CALLS = 2


def _export(out: str, tokens: int, hidden: int, intermediate: int, heads: int) -> str:
    """The decoder layer as a SavedModel: serving_default(hidden_states [1, T, hidden] float32)
    -> {"hidden_states": the layer's output}."""
    from tf_puma.apps import hf  # noqa: PLC0415
    transformers = hf.use_transformers()
    import tensorflow as tf  # noqa: PLC0415
    from transformers.models.mistral import modeling_tf_mistral as mistral  # noqa: PLC0415

    tf.keras.utils.set_random_seed(0)
    cfg = transformers.MistralConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, rope_theta=1e4, rms_norm_eps=1e-6, sliding_window=None,
        hidden_act="silu", initializer_range=0.02)
    layer = mistral.TFMistralDecoderLayer(cfg, 0, name="layer")
    spec = [tf.TensorSpec([1, tokens, hidden], tf.float32, name="hidden_states")]

    def forward(hidden_states):
        # As TFMistralMainLayer.call: positions 0..T-1, the causal mask over all-ones attention.
        positions = tf.reshape(tf.range(tokens, dtype=tf.int64), (1, tokens))
        mask = mistral.TFMistralMainLayer._prepare_decoder_attention_mask(
            None, tf.ones((1, tokens), tf.bool), (1, tokens), hidden_states, 0)
        return layer(hidden_states, attention_mask=mask, position_ids=positions)[0]

    forward(tf.zeros([1, tokens, hidden]))  # builds the weights

    @tf.function(input_signature=spec)
    def serve(hidden_states):
        return {"hidden_states": forward(hidden_states)}

    module = tf.Module()
    module.layer = layer
    tf.saved_model.save(module, out, signatures={"serving_default": serve})
    return out


def _prepare(work: str, tokens: int, hidden: int, intermediate: int, heads: int) -> None:
    """The model owner's side, in its own process: export and the plaintext reference here, then
    `tf-puma convert` as a process of its own (its wall time and peak RSS are the convert's).
    Writes work/prepared.json and work/reference.npz; removes the plaintext SavedModel."""
    import resource  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    plain_dir = os.path.join(work, "plain")
    start = time.perf_counter()
    _export(plain_dir, tokens, hidden, intermediate, heads)
    export_s = time.perf_counter() - start
    # A LLaMA residual stream entering an early layer; RMSNorm rescales it first anyway.
    x = np.random.default_rng(0).normal(size=(1, tokens, hidden)).astype(np.float32)
    plain_fn = tf.saved_model.load(plain_dir).signatures["serving_default"]
    plain_fn(hidden_states=tf.constant(x))
    start = time.perf_counter()
    y = plain_fn(hidden_states=tf.constant(x))["hidden_states"].numpy()
    plain_s = time.perf_counter() - start
    np.savez(os.path.join(work, "reference.npz"), x=x, y=y)
    cli = os.path.join(os.path.dirname(sys.executable), "tf-puma")
    start = time.perf_counter()
    done = subprocess.run([cli, "convert", plain_dir, os.path.join(work, "secure")],
                          capture_output=True, text=True)
    convert_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"tf-puma convert failed:\n{done.stderr[-3000:]}")
    convert_peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    shutil.rmtree(plain_dir)
    with open(os.path.join(work, "prepared.json"), "w", encoding="utf-8") as fh:
        json.dump({"export_s": export_s, "convert_s": convert_s, "plaintext_s": plain_s,
                   "convert_peak_mib": convert_peak_mib}, fh)


def run_one(tokens: int, hidden: int, intermediate: int, heads: int) -> dict:
    """One token count: prepare in a child, then the secure run in this process (the client)."""
    import numpy as np  # noqa: PLC0415

    from tf_puma import secure_model  # noqa: PLC0415

    work = tempfile.mkdtemp(prefix=f"tf-puma-bench-llama-{tokens}-")
    try:
        prepared = prepare_in_child(__file__, [work, str(tokens), str(hidden), str(intermediate),
                                               str(heads)], work)
        saved = np.load(os.path.join(work, "reference.npz"))
        secure_dir = os.path.join(work, "secure")
        manifest = secure_model.read_manifest(secure_dir)
        call = {"hidden_states": saved["x"]}
        with secure_session(secure_dir, lambda m: m(**call)) as (local, model, load_s, first_s):
            walls = []
            for _ in range(STEADY_CALLS):
                start = time.perf_counter()
                out = model(**call)["hidden_states"].numpy()
                walls.append(time.perf_counter() - start)
            peak = [status_mib(local.server_pid(i), "VmHWM") for i in range(3)]
        sent = manifest.total.bytes_by_sender
        return {"tokens": tokens, "hidden": hidden, "intermediate": intermediate, "heads": heads,
                **prepared, "convert_steps_s": manifest.convert_steps,
                "secure_graph_ops": manifest.secure_graph_ops, "load_s": load_s,
                "first_call_s": first_s, "wall_s": min(walls), "rounds": manifest.total.rounds,
                "party_gib": [sent.get(str(i), 0) / 2 ** 30 for i in range(3)],
                "client_mib": sent.get("client", 0) / 2 ** 20, "peak_party_mib": peak,
                "shares_party_mib": shares_mib(secure_dir),
                "peak_client_mib": status_mib(os.getpid(), "VmHWM"),
                "max_abs_err": float(np.abs(out - saved["y"]).max()),
                "max_abs_out": float(np.abs(saved["y"]).max())}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict]) -> None:
    """The table on stdout and benchmarks/results/llama_layer.json."""
    print_table(["tokens", "wall s", f"x{LAYERS_7B} layers s", "rounds", "GiB/party",
                 "peak MiB/party", "shares MiB/party", "1.5 shares + 1 GiB", "client peak MiB",
                 "plain ms", "err", "convert s", "trace s", "bundles s", "convert peak MiB",
                 "load s", "1st call s", "ops"],
                [[r["tokens"], r["wall_s"], r["wall_s"] * LAYERS_7B, r["rounds"],
                  " / ".join(f"{g:.2f}" for g in r["party_gib"]), max(r["peak_party_mib"]),
                  max(r["shares_party_mib"]),
                  party_memory_target_mib(max(r["shares_party_mib"])), r["peak_client_mib"],
                  r["plaintext_s"] * 1e3, f"{r['max_abs_err']:.1e}", r["convert_s"],
                  r["convert_steps_s"]["trace"], r["convert_steps_s"]["bundles"],
                  r["convert_peak_mib"], r["load_s"], r["first_call_s"], r["secure_graph_ops"]]
                 for r in rows])
    eight = [r for r in rows if r["tokens"] == 8]
    if eight:
        print(f"\nLLaMA-7B, 8 tokens in -> 1 out, {LAYERS_7B} layers x this layer (no embedding, "
              f"no head): {eight[0]['wall_s'] * LAYERS_7B:.0f} s on this 2-core machine; PUMA's "
              f"paper: {PAPER_7B_S:.0f} s on 3 x 32 vCPUs")
    write_json("llama_layer", {"rows": rows, "steady_calls": STEADY_CALLS,
                               "layers_7b": LAYERS_7B, "paper_7b_s": PAPER_7B_S})


def main(argv: list[str]) -> None:
    if len(argv) == 7 and argv[1] == "--prepare":
        _prepare(argv[2], *(int(a) for a in argv[3:]))
        return
    if len(argv) == 6 and argv[1] == "--one":
        print(json.dumps(run_one(*(int(a) for a in argv[2:]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8, 128])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    args = parser.parse_args(argv[1:])
    rows = []
    for tokens in args.tokens:
        rows.append(row_in_child(__file__, [str(tokens), str(args.hidden),
                                            str(args.intermediate), str(args.heads)],
                                 f"{tokens} tokens"))
        print(f"{tokens} tokens: done", flush=True)
    report(rows)


if __name__ == "__main__":
    main(sys.argv)
