"""Secure generation: prefill (time to the first token) and per-token time, rounds and bytes of
both signatures, peak memory per party, and whether the tokens equal plaintext greedy decoding.

Models: `gpt2-base` (GPT-2 base shape, random weights: 12 layers, 768 wide, vocabulary 50,257)
and `smollm2` (real weights; `--layers` keeps the first N of 30). The model owner's part (export
of the generate_step signature, `convert --generate`, the plaintext reference tokens by full
recomputation) runs in a child process; the client (three local parties) in this one.

    python benchmarks/generate.py --model gpt2-base --prompt-tokens 32 --new-tokens 16
    python benchmarks/generate.py --model smollm2 --layers 4 --prompt-tokens 8 --new-tokens 8
    python benchmarks/generate.py --model gpt2-base --prompt-tokens 32 --new-tokens 16 --reference
    python benchmarks/generate.py --model smollm2 --prompt-tokens 8 --new-tokens 32 --prompts 20

--prompts N generates from N prompts (smollm2: the first `--prompt-tokens` tokens of N different
movie-review sentences; gpt2-base: random ids) and counts those whose tokens all equal plaintext
greedy decoding; times are medians over the prompts (prefill) and over every next token.
--concurrent K runs K generations at once (client threads, one cache each) and reports tokens/s;
the times are then under load. On this 2-core machine it raises tokens/s little (decoding is
CPU-bound), which is what it is there to show.

--reference (gpt2-base only) also runs the reference implementation (SPU 0.9.5 with PUMA's
settings, `make spu-venv`) on the same shape right after: GPT-2 base, the prompt in, the next
token's logits out (PUMA's "32 -> 1"), which is our prefill.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tf_puma.apps import prepare_process  # noqa: E402

prepare_process()  # before TensorFlow loads: the client process `tf-puma run` would be

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (party_memory_target_mib, prepare_in_child, print_table,  # noqa: E402
                    reference_columns, secure_session, shares_mib, spu_reference, status_mib,
                    write_json)


def _model(name: str, layers: int | None):
    from tf_puma.apps import hf  # noqa: PLC0415
    if name == "smollm2":
        return hf.load_smollm2(layers)
    import tensorflow as tf  # noqa: PLC0415
    transformers = hf.use_transformers()
    tf.keras.utils.set_random_seed(0)
    cfg = transformers.GPT2Config(**({"n_layer": layers} if layers else {}))
    model = transformers.TFGPT2LMHeadModel(cfg)
    model(model.dummy_inputs)
    return model


def _prompts(name: str, tokens: int, count: int) -> list[list[int]]:
    """`count` prompts of `tokens` ids: smollm2's from the movie-review text (one prompt: the
    start of the text; several: the starts of different sentences that long), gpt2's random."""
    import numpy as np  # noqa: PLC0415
    if name != "smollm2":
        rng = np.random.default_rng(0)
        return [[int(t) for t in rng.integers(1000, 20000, tokens)] for _ in range(count)]
    from tf_puma.apps import hf, text_data  # noqa: PLC0415
    tok = hf.smollm2_tokenizer()
    reviews = [sentence for _, sentence in text_data.movie_reviews()]
    if count == 1:
        return [tok(" ".join(reviews[:50]))["input_ids"][:tokens]]
    prompts = []
    for sentence in reviews:
        ids = tok(sentence)["input_ids"]
        if len(ids) >= tokens and ids[:tokens] not in prompts:
            prompts.append(ids[:tokens])
        if len(prompts) == count:
            return prompts
    raise SystemExit(f"fewer than {count} review sentences have {tokens} tokens")


def prepare(work: str, name: str, layers: int, prompt_tokens: int, new_tokens: int,
            prompts: int) -> None:
    import numpy as np  # noqa: PLC0415

    from tf_puma.apps import hf  # noqa: PLC0415
    from tf_puma.rewrites import convert  # noqa: PLC0415
    model = _model(name, layers or None)
    plain = hf.export_generation(model, os.path.join(work, "plain"),
                                 window=prompt_tokens + new_tokens - 1)
    start = time.perf_counter()
    convert.convert_generation(plain, os.path.join(work, "secure"), prompt_tokens,
                               log=lambda line: None)
    convert_s = time.perf_counter() - start
    chosen = _prompts(name, prompt_tokens, prompts)
    references = []
    for prompt in chosen:  # plaintext greedy decoding by full recomputation (no cache)
        ids = list(prompt)
        for _ in range(new_tokens):
            logits = model(input_ids=np.asarray([ids], np.int32), training=False).logits
            ids.append(int(np.argmax(logits[0, -1])))
        references.append(ids[len(prompt):])
    with open(os.path.join(work, "prepared.json"), "w", encoding="utf-8") as fh:
        json.dump({"convert_s": convert_s, "prompts": chosen, "references": references}, fh)


def measure(work: str, args) -> dict:
    import tf_puma  # noqa: PLC0415
    from tf_puma import secure_model  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    prepared = prepare_in_child(__file__, [work, args.model, str(args.layers or 0),
                                           str(args.prompt_tokens), str(args.new_tokens),
                                           str(args.prompts)], work)
    secure = os.path.join(work, "secure")
    manifest = secure_model.read_manifest(secure)
    prefill = manifest.generation["signatures"]["prefill"]
    # the first generation registers both signatures on the parties
    first_prompt = prepared["prompts"][0]
    with secure_session(secure, lambda gen: gen.generate(first_prompt, 2),
                        load=tf_puma.load_generator) as (local, gen, load_s, first_s):
        count = len(prepared["prompts"])
        generated, prefill_s, token_s = [None] * count, [0.0] * count, [[] for _ in range(count)]

        def run(i: int) -> None:
            stamps = []
            start = time.perf_counter()
            generated[i] = gen.generate(prepared["prompts"][i], args.new_tokens,
                                        on_token=lambda t: stamps.append(time.perf_counter()))
            prefill_s[i] = stamps[0] - start
            token_s[i] = list(np.diff(stamps))
            same = generated[i] == prepared["references"][i]
            print(f"prompt {i + 1}/{count}: prefill {prefill_s[i]:.2f} s, "
                  f"{np.median(token_s[i]) if token_s[i] else 0:.2f} s per token, "
                  f"{'equal to' if same else 'DIFFERS from'} plaintext", flush=True)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
            for done in [pool.submit(run, i) for i in range(count)]:
                done.result()
        wall_s = time.perf_counter() - start
        token_s = [t for per_prompt in token_s for t in per_prompt]
        peak = [status_mib(local.server_pid(i), "VmHWM") for i in range(3)]
    equal = [g == r for g, r in zip(generated, prepared["references"])]
    agree = sum(a == b for g, r in zip(generated, prepared["references"]) for a, b in zip(g, r))

    def gib(sent: dict) -> float:
        return sum(v for k, v in sent.items() if k != "client") / 2 ** 30

    return {"model": args.model, "layers": args.layers, "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens, "prompts": len(equal),
            "prompts_equal_plaintext": sum(equal), "tokens_agreeing": agree,
            "tokens_equal_plaintext": all(equal), "concurrent": args.concurrent,
            "wall_s": wall_s, "tokens_per_s": count * args.new_tokens / wall_s,
            "prefill_s": float(np.median(prefill_s)),
            "per_token_s": float(np.median(token_s)) if token_s else None,
            "prefill_rounds": prefill["critical_path_rounds"],
            "decode_rounds": manifest.total.rounds,
            "prefill_gib": gib(prefill["bytes_by_sender"]),
            "decode_gib": gib(manifest.total.bytes_by_sender), "peak_party_mib": peak,
            "shares_party_mib": shares_mib(secure),
            "peak_client_mib": status_mib(os.getpid(), "VmHWM"),
            "convert_s": prepared["convert_s"], "load_s": load_s,
            "first_generation_s": first_s, "tokens": generated,
            "reference": prepared["references"]}


def main(argv: list[str]) -> None:
    if len(argv) == 8 and argv[1] == "--prepare":
        prepare(argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6]), int(argv[7]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpt2-base", "smollm2"], default="gpt2-base")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=1,
                        help="generate from this many prompts and count exact matches")
    parser.add_argument("--concurrent", type=int, default=1,
                        help="generations at once (client threads; each keeps its own cache): "
                             "times are then per generation under load, see tokens/s")
    parser.add_argument("--reference", action="store_true",
                        help="also run SPU on the same shape (gpt2-base)")
    args = parser.parse_args(argv[1:])
    if args.reference and args.model != "gpt2-base":
        parser.error("--reference runs GPT-2 base shapes only (the reference script has no LLaMA)")
    work = tempfile.mkdtemp(prefix="tf-puma-bench-generate-")
    try:
        row = measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.reference:
        row.update(reference_columns(spu_reference("gpt2", args.prompt_tokens,
                                                   layers=args.layers, repeat=2),
                                     row["prefill_s"]))
        print_table(["shape", "our prefill s", "reference s", "speedup", "our prefill GiB",
                     "reference GiB", "our rounds", "reference sends", "reference err"],
                    [[f"{args.prompt_tokens} -> 1", row["prefill_s"], row["reference_s"],
                      row["speedup"], row["prefill_gib"], row["reference_gib"],
                      row["prefill_rounds"], row["reference_sends"],
                      f"{row['reference_err']:.1e}"]])
    print_table(["model", "layers", "prompt", "new", "tokens = plaintext", "at once",
                 "tokens/s", "prefill s", "s per token", "prefill rounds", "decode rounds",
                 "prefill GiB", "decode GiB",
                 "peak MiB/party", "shares MiB/party", "1.5 shares + 1 GiB",
                 "peak MiB client", "convert s", "load s"],
                [[row["model"], row["layers"] or "all", row["prompt_tokens"], row["new_tokens"],
                  f"{row['prompts_equal_plaintext']}/{row['prompts']} prompts, "
                  f"{row['tokens_agreeing']}/{row['prompts'] * row['new_tokens']} tokens",
                  row["concurrent"], row["tokens_per_s"], row["prefill_s"], row["per_token_s"],
                  row["prefill_rounds"], row["decode_rounds"], row["prefill_gib"],
                  row["decode_gib"], max(row["peak_party_mib"]), max(row["shares_party_mib"]),
                  party_memory_target_mib(max(row["shares_party_mib"])),
                  row["peak_client_mib"], row["convert_s"],
                  row["load_s"]]])
    write_json(f"generate-{row['model']}-{row['layers'] or 'all'}-{row['prompt_tokens']}-"
               f"{row['new_tokens']}-x{row['prompts']}"
               + (f"-c{row['concurrent']}" if row["concurrent"] > 1 else ""), row)


if __name__ == "__main__":
    main(sys.argv)
