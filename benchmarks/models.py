"""Whole models, secure vs plaintext: MiniLM-L6 (real weights) at 32 and 128 tokens and a
BERT-base-shaped model (random weights) at 128 tokens, batch 1.

For each: export the plaintext SavedModel, `tf-puma convert`, start three local parties with
their bundles, load, call (first and steady), and report the convert with its trace, save and
bundle-writing steps (the manifest's convert_steps), wall time, rounds, bytes per party,
peak memory per party and of the client (VmHWM) and plaintext TF time. Export and the
plaintext reference run in one process, the conversion in a fresh one (as `tf-puma convert`
runs; timed from the call, without the interpreter's start), the secure client in another that
only connects, loads and calls.

    python benchmarks/models.py                 # all three
    python benchmarks/models.py minilm-32       # one
    python benchmarks/models.py --reference minilm-32   # and SPU on the same shape, same run
    python benchmarks/models.py --party-threads 2 minilm-128   # parties' --intra-op-threads
                                                  # (default: LocalCluster's, a third of the cores)
    python benchmarks/models.py --trunc-rounds 3 minilm-128    # convert --trunc-rounds 3
                                                  # (default: auto, as tf-puma convert)

With --reference, the reference implementation (SPU 0.9.5 with PUMA's settings, `make spu-venv`)
runs the same shape right after ours (random weights of the same architecture: time and traffic
do not depend on the values; its error is against its own exact plaintext).
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
from common import (prepare_in_child, print_table, reference_columns,  # noqa: E402
                    party_memory_target_mib, row_in_child, secure_session, shares_mib,
                    spu_reference, status_mib, write_json)

CONFIGS = {"minilm-32": ("minilm", 32), "minilm-128": ("minilm", 128),
           "bert-base-128": ("bert-base", 128)}
# The reference implementation's model and shape flags (benchmarks/spu_reference.py).
REFERENCE = {"minilm-32": ("bert", 32, {}), "minilm-128": ("bert", 128, {}),
             "bert-base-128": ("bert", 128, {"hidden": 768, "layers": 12, "heads": 12,
                                             "inter": 3072})}
STEADY_CALLS = 3


def _export(kind: str, seq_len: int, out: str) -> str:
    from tf_puma.apps import hf  # noqa: PLC0415
    if kind == "minilm":
        return hf.export_minilm(out, batch=1, seq_len=seq_len)
    import tensorflow as tf  # noqa: PLC0415
    transformers = hf.use_transformers()
    tf.keras.utils.set_random_seed(0)
    model = transformers.TFBertModel(transformers.BertConfig())  # bert-base-uncased shapes
    model(model.dummy_inputs)
    spec = [tf.TensorSpec([1, seq_len], tf.int32, name="input_ids"),
            tf.TensorSpec([1, seq_len], tf.int32, name="attention_mask")]

    @tf.function(input_signature=spec)
    def serve(input_ids, attention_mask):
        return {"last_hidden_state": model(input_ids=input_ids, attention_mask=attention_mask,
                                           training=False).last_hidden_state}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, out, signatures={"serving_default": serve})
    return out


def run_one(name: str, party_threads: int = 0, trunc_rounds: str = "auto") -> dict:
    """One model in this process: returns its row as a dict (work files are removed)."""
    work = tempfile.mkdtemp(prefix=f"tf-puma-bench-{name}-")
    try:
        return _measure(name, work, party_threads, trunc_rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare(name: str, work: str, trunc_rounds: str) -> None:
    """Export, convert (in a process of its own, as `tf-puma convert` runs) and run plaintext
    TF; writes work/prepared.json and work/reference.npz."""
    import subprocess  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    kind, seq_len = CONFIGS[name]
    plain_dir = _export(kind, seq_len, os.path.join(work, "plain"))
    # Converting in the exporting process took ~1.3 s more for MiniLM-128 (its freeze, classify
    # and trace slower among transformers' and Keras' objects): not what a user's convert costs.
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--convert", plain_dir,
                           os.path.join(work, "secure"), str(trunc_rounds)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"convert failed:\n{done.stderr[-3000:]}")
    convert_s = float(done.stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(1000, 20000, (1, seq_len)).astype(np.int32),
              "attention_mask": np.ones((1, seq_len), np.int32)}
    plain_fn = tf.saved_model.load(plain_dir).signatures["serving_default"]
    feed = {k: tf.constant(v) for k, v in inputs.items()}
    plain_fn(**feed)
    start = time.perf_counter()
    reference = {k: v.numpy() for k, v in plain_fn(**feed).items()}
    plain_s = time.perf_counter() - start
    np.savez(os.path.join(work, "reference.npz"), **inputs,
             last_hidden_state=reference["last_hidden_state"])
    with open(os.path.join(work, "prepared.json"), "w", encoding="utf-8") as fh:
        json.dump({"convert_s": convert_s, "plaintext_s": plain_s}, fh)


def _measure(name: str, work: str, party_threads: int = 0, trunc_rounds: str = "auto") -> dict:
    """The secure run, in a process that only connects, loads and calls (like a client)."""
    import numpy as np  # noqa: PLC0415

    from tf_puma import secure_model  # noqa: PLC0415

    prepared = prepare_in_child(__file__, [name, work, str(trunc_rounds)], work)
    saved = np.load(os.path.join(work, "reference.npz"))
    inputs = {k: saved[k] for k in ("input_ids", "attention_mask")}
    secure_dir = os.path.join(work, "secure")
    manifest = secure_model.read_manifest(secure_dir)
    party_args = ["--intra-op-threads", str(party_threads)] if party_threads else []
    with secure_session(secure_dir, lambda m: m(**inputs), party_args=party_args) as (
            local, model, load_s, first_s):
        walls = []
        for _ in range(STEADY_CALLS):
            start = time.perf_counter()
            out = {k: v.numpy() for k, v in model(**inputs).items()}
            walls.append(time.perf_counter() - start)
        peak = [status_mib(local.server_pid(i), "VmHWM") for i in range(3)]
    client_peak = status_mib(os.getpid(), "VmHWM")
    seq_len = CONFIGS[name][1]
    err = float(np.abs(out["last_hidden_state"] - saved["last_hidden_state"]).max())
    sent = manifest.total.bytes_by_sender
    parties_gib = [sent.get(str(i), 0) / 2 ** 30 for i in range(3)]
    return {"model": name, "tokens": seq_len, "party_threads": party_threads or "default",
            "trunc_rounds": manifest.trunc_rounds,
            "convert_s": prepared["convert_s"],
            "convert_steps_s": manifest.convert_steps,
            "secure_graph_ops": manifest.secure_graph_ops, "load_s": load_s,
            "first_call_s": first_s, "wall_s": min(walls), "plaintext_s": prepared["plaintext_s"],
            "rounds": manifest.total.rounds, "party_gib": parties_gib,
            "total_gib": sum(parties_gib), "client_mib": sent.get("client", 0) / 2 ** 20,
            "peak_party_mib": peak, "shares_party_mib": shares_mib(secure_dir),
            "peak_client_mib": client_peak, "max_abs_err": err}


def with_reference(row: dict) -> dict:
    """Adds SPU's steady call, traffic, send actions and error on the same shape, run now."""
    model, seq, options = REFERENCE[row["model"]]
    return {**row, **reference_columns(spu_reference(model, seq, repeat=2, **options),
                                       row["wall_s"])}


def _convert(plain_dir: str, secure_dir: str, trunc_rounds: str) -> None:
    """`tf-puma convert`'s conversion, timed without the interpreter's start and imports;
    prints its seconds."""
    from tf_puma import config  # noqa: PLC0415
    from tf_puma.rewrites import convert  # noqa: PLC0415

    start = time.perf_counter()
    with config.use(config.Config(trunc_rounds=config.parse_trunc_rounds(trunc_rounds))):
        convert.convert(plain_dir, secure_dir, log=lambda line: None)
    print(time.perf_counter() - start)


def main(argv: list[str]) -> None:
    if len(argv) == 5 and argv[1] == "--convert":
        _convert(argv[2], argv[3], argv[4])
        return
    if len(argv) == 5 and argv[1] == "--prepare":
        _prepare(argv[2], argv[3], argv[4])
        return
    if len(argv) == 5 and argv[1] == "--one":
        print(json.dumps(run_one(argv[2], int(argv[3]), argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"of {sorted(CONFIGS)} (default: all)")
    parser.add_argument("--reference", action="store_true", help="and SPU, same shape and run")
    parser.add_argument("--party-threads", type=int, default=0,
                        help="the parties' --intra-op-threads (0: LocalCluster's)")
    parser.add_argument("--trunc-rounds", choices=("2", "3", "auto"), default="auto",
                        help="convert --trunc-rounds")
    args = parser.parse_args(argv[1:])
    rows = []
    for name in args.models or list(CONFIGS):
        if name not in CONFIGS:
            raise SystemExit(f"unknown model {name!r}; choose from {sorted(CONFIGS)}")
        row = row_in_child(__file__, [name, str(args.party_threads), str(args.trunc_rounds)],
                           name)
        rows.append(with_reference(row) if args.reference else row)
    report(rows)


def report(rows: list[dict]) -> None:
    """The table on stdout and benchmarks/results/models.json."""
    print_table(["model", "tokens", "party threads", "trunc rounds", "wall s", "ref s", "rounds",
                 "ref sends",
                 "GiB (3 parties)", "ref GiB", "client MiB", "peak MiB/party", "shares MiB/party",
                 "1.5 shares + 1 GiB", "peak MiB client", "plain ms", "err", "ref err",
                 "convert s", "trace s", "save s", "bundles s", "load s", "1st call s", "ops"],
                [[r["model"], r["tokens"], r.get("party_threads", "default"),
                  r.get("trunc_rounds", 2), r["wall_s"],
                  r.get("reference_s", "-"), r["rounds"],
                  r.get("reference_sends", "-"), r["total_gib"], r.get("reference_gib", "-"),
                  r["client_mib"], max(r["peak_party_mib"]), max(r["shares_party_mib"]),
                  party_memory_target_mib(max(r["shares_party_mib"])), r["peak_client_mib"],
                  r["plaintext_s"] * 1e3, f"{r['max_abs_err']:.1e}",
                  f"{r['reference_err']:.1e}" if "reference_err" in r else "-",
                  r["convert_s"], r["convert_steps_s"]["trace"], r["convert_steps_s"]["save"],
                  r["convert_steps_s"]["bundles"], r["load_s"], r["first_call_s"],
                  r["secure_graph_ops"]]
                 for r in rows])
    write_json("models", {"rows": rows, "steady_calls": STEADY_CALLS})


if __name__ == "__main__":
    main(sys.argv)
