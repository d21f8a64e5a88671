"""Secure generation (`tf-puma convert --generate`, tf_puma.load_generator, `tf-puma generate`):
greedy tokens and logits as plaintext, the KV cache kept on the parties between calls, separate
generations that never mix, the window's limits, a party restart mid-generation (three local
parties; a small random LLaMA-style model)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tf_puma
from tf_puma import audit
from tf_puma.apps import hf
from tf_puma.cluster import CLIENT_JOB
from tf_puma.rewrites import convert
from tf_puma.rewrites.graph import ConversionError

WINDOW, BUCKET = 10, 4
QUIET = {"log": lambda line: None}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(keras model, plaintext generate_step dir, secure generation dir)."""
    transformers = hf.use_transformers()
    tf.keras.utils.set_random_seed(1)
    cfg = transformers.MistralConfig(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=1e4, sliding_window=None, initializer_range=0.1)
    model = transformers.TFMistralForCausalLM(cfg)
    model(model.dummy_inputs)
    root = tmp_path_factory.mktemp("generation")
    plain = hf.export_generation(model, str(root / "plain"), window=WINDOW, reveal_logits=True)
    secure = str(root / "secure")
    convert.convert_generation(plain, secure, prompt_tokens=BUCKET, **QUIET)
    return model, plain, secure


@pytest.fixture(scope="module")
def generator(llama, cluster, deploy):
    deploy(llama[2], "generation")
    return tf_puma.load_generator(llama[2])


def greedy_reference(model, prompt: list[int], new: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens by recomputing the whole sequence each step (no cache) and each step's
    next-token logits."""
    ids, logits = list(prompt), []
    for _ in range(new):
        out = model(input_ids=np.asarray([ids], np.int32), training=False).logits.numpy()
        logits.append(out[0, -1])
        ids.append(int(out[0, -1].argmax()))
    return ids[len(prompt):], logits


def _with_logits(generator, prompt, new):
    seen = []
    tokens = generator.generate(prompt, new, on_token=lambda t: seen.append(
        generator.last_logits.copy()))
    return tokens, seen


def test_greedy_generation_matches_plaintext(llama, generator):
    """Prompts of 1, 3 and 4 (the bucket) tokens, up to the window's limit of new tokens; the
    cache crosses calls as shares on the parties."""
    model = llama[0]
    assert generator.max_new_tokens == WINDOW - BUCKET + 1
    for prompt, new in (([17], 3), ([5, 250, 42], 5), ([9, 8, 7, 6], generator.max_new_tokens)):
        tokens, logits = _with_logits(generator, prompt, new)
        want, want_logits = greedy_reference(model, prompt, new)
        assert tokens == want, (prompt, tokens, want)
        err = max(float(np.abs(a - b).max()) for a, b in zip(logits, want_logits))
        assert err <= 1.5e-2, err  # measured 5e-3 (the forward pass's error, token by token)


def test_concurrent_generations_do_not_mix(llama, generator):
    prompts = [[3, 1, 4, 1], [2, 7, 1, 8], [299, 0]]
    results: dict[int, list[int]] = {}

    def run(i):
        results[i] = generator.generate(prompts[i], 4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i, prompt in enumerate(prompts):
        assert results[i] == greedy_reference(llama[0], prompt, 4)[0], i


def test_every_prg_output_is_drawn_once_per_step(llama):
    assert audit.audit_saved_model(llama[2]) == []


# Run first by design, and used at once: fresh keys, weight shares, the expansion of the input
# shares (the client's ops, and the parties' PumaPrgUniform of the client's keys).
INPUT_SHARING = ("PumaNewKey", "PumaLoadShare", "PumaPrgUniform")


def _on_client(node) -> bool:
    return f"/job:{CLIENT_JOB}/" in node.device


def _steps_ready_at_call_start(model_dir: str) -> dict[str, list[str]]:
    """Per function of a SavedModel: its Puma protocol steps that need none of the function's
    arguments (only keys, weight shares, constants), which TensorFlow runs as soon as a call
    starts and whose outputs stay in memory until used. (tf.function orders the key draws,
    stateful ops, after the input checks; they still come at the start.)"""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as fh:
        saved.ParseFromString(fh.read())
    ready = {}
    for function in saved.meta_graphs[0].graph_def.library.function:
        nodes = {n.name: n for n in function.node_def}
        args = {a.name for a in function.signature.input_arg}
        memo: dict[str, bool] = {}

        def needs_no_argument(ref: str) -> bool:
            name = ref.lstrip("^").split(":")[0]
            if name not in memo:
                memo[name] = False  # (no cycles in a function body; guards the recursion)
                memo[name] = name not in args and name in nodes and (
                    nodes[name].op == "PumaNewKey"  # ordered after the input checks: at start
                    or all(needs_no_argument(i) for i in nodes[name].input))
            return memo[name]

        ready[function.signature.name] = sorted(
            n.name for n in function.node_def if n.op.startswith("Puma")
            and n.op not in INPUT_SHARING and not _on_client(n) and needs_no_argument(n.name))
    return ready


def test_no_protocol_step_runs_before_its_input_exists(llama):
    """TruncPr's dealer needs only keys; left alone, every truncation of a prefill was dealt at
    the call's start and held (3n each) until used: SmolLM2's 4 layers at 128 tokens peaked
    at 3.5 GB per party, 2.7 GB with each deal waiting for the dealer's share of its input."""
    ready = _steps_ready_at_call_start(llama[2])
    assert not any(ready.values()), {name: ops[:5] for name, ops in ready.items() if ops}


def test_limits_and_wrong_models_are_named(llama, generator, tmp_path):
    with pytest.raises(ValueError, match="1 to 4"):
        generator.generate([1, 2, 3, 4, 5], 2)
    with pytest.raises(ValueError, match=r"max_new_tokens must be 1\.\.7"):
        generator.generate([1], 8)
    with pytest.raises(ValueError, match="not a generation model"):
        secure = str(tmp_path / "forward")
        convert.convert(hf.export_gpt2(str(tmp_path / "gpt2"), batch=1, seq_len=4, n_layer=1),
                        secure, **QUIET)
        tf_puma.load_generator(secure)
    with pytest.raises(ConversionError, match="no 'generate_step' signature"):
        convert.convert_generation(str(tmp_path / "gpt2"), str(tmp_path / "x"), 4, **QUIET)


def test_greedy_model_reveals_no_logits(tmp_path, cluster, deploy):
    """Exported without reveal_logits, the client gets the token ids only; sampling (which
    needs logits) is refused."""
    transformers = hf.use_transformers()
    tf.keras.utils.set_random_seed(2)
    model = transformers.TFMistralForCausalLM(transformers.MistralConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
        sliding_window=None))
    model(model.dummy_inputs)
    plain = hf.export_generation(model, str(tmp_path / "plain"), window=4)
    secure = str(tmp_path / "secure")
    manifest = convert.convert_generation(plain, secure, prompt_tokens=2, **QUIET)
    assert set(manifest.outputs) == {"next_token"}
    deploy(secure, "greedy-only")
    gen = tf_puma.load_generator(secure)
    assert gen.generate([4, 5], 3) == greedy_reference(model, [4, 5], 3)[0]
    with pytest.raises(ValueError, match="does not reveal"):
        gen.generate([4], 2, temperature=0.7)
    from tensorflow.python.eager import context  # noqa: PLC0415

    zeros = gen._empty_cache.get_concrete_function().name  # noqa: SLF001 - traced by generate
    assert context.context().has_function(zeros)
    gen.close()  # releases it too, while the parties answer (not at exit, with ERROR lines)
    gc.collect()
    assert not context.context().has_function(zeros)


def test_gpt2_generation_matches_plaintext(tmp_path, cluster, deploy):
    """GPT-2's cache is one stacked [2, 1, heads, window, head_dim] tensor per layer and its
    masks are -1e4 (not the dtype minimum): the same export, conversion and generator."""
    transformers = hf.use_transformers()
    tf.keras.utils.set_random_seed(6)
    model = transformers.TFGPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=200, n_positions=64, n_embd=64, n_layer=1, n_head=4, initializer_range=0.3))
    model(model.dummy_inputs)
    plain = hf.export_generation(model, str(tmp_path / "plain"), window=8)
    secure = str(tmp_path / "secure")
    manifest = convert.convert_generation(plain, secure, prompt_tokens=3, **QUIET)
    assert manifest.generation["state"]["past_0_0"]["shape"] == [2, 1, 4, 8, 16]
    deploy(secure, "gpt2-generation")
    gen = tf_puma.load_generator(secure)
    prompt = [5, 17, 42]
    want = greedy_reference(model, prompt, 6)[0]
    assert len(set(want)) > 2  # not a degenerate repetition
    assert gen.generate(prompt, 6) == want


def _tiny(kind: str):
    transformers = hf.use_transformers()
    tf.keras.utils.set_random_seed(7)
    if kind == "gpt2":
        model = transformers.TFGPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=97, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    else:
        model = transformers.TFMistralForCausalLM(transformers.MistralConfig(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
            sliding_window=None))
    model(model.dummy_inputs)
    return model


@pytest.mark.parametrize("kind", ["gpt2", "mistral"])
def test_exported_step_applies_the_head_at_last_index_only(kind, tmp_path):
    """Plaintext generate_step: the logits at last_index of a prompt equal the whole model's
    (1e-5: float32 sums in another order), and no tensor of the step holds a row of logits per
    prompt position (the head runs after the gather)."""
    model = _tiny(kind)
    window, prompt = 6, [3, 11, 40, 7, 96]
    step = tf.saved_model.load(hf.export_generation(model, str(tmp_path / "plain"), window,
                                                   reveal_logits=True))
    fn = step.signatures[hf.GENERATE_SIGNATURE]
    feeds = {"input_ids": tf.constant([prompt], tf.int32),
             "position_ids": tf.constant([list(range(len(prompt)))], tf.int32),
             "attention_mask": tf.constant([[0] * window + [1] * len(prompt)], tf.int32)}
    for name, spec in fn.structured_input_signature[1].items():
        if name.startswith("past_"):
            feeds[name] = tf.zeros(spec.shape, tf.float32)
    for last in (len(prompt) - 1, 2):
        got = fn(**feeds, last_index=tf.constant([last], tf.int32))["logits"].numpy()[0]
        want = model(input_ids=np.asarray([prompt[:last + 1]], np.int32),
                     training=False).logits.numpy()[0, -1]
        np.testing.assert_allclose(got, want, atol=1e-5)
    traced = tf.function(lambda ids: hf._logits_at(model, tf.constant([2]), input_ids=ids,
                                                   training=False)[1])
    graph = traced.get_concrete_function(tf.TensorSpec([1, len(prompt)], tf.int32)).graph
    per_position = [op.name for op in graph.get_operations() for t in op.outputs
                    if t.shape.rank == 3 and t.shape[-1] == 97 and t.shape[1] != 1]
    assert not per_position, per_position


@pytest.mark.slow  # a party killed mid-generation, in a fresh client process
def test_a_party_restart_mid_generation_is_named_and_the_next_generation_works(llama):
    secure = llama[2]
    script = f"""
import numpy as np, tf_puma
local = tf_puma.LocalCluster(shares_dir={os.path.join(secure, 'shares')!r})
tf_puma.connect(local.start())
gen = tf_puma.load_generator({secure!r})
first = gen.generate([5, 250, 42], 5)
def kill_after_two(token, seen=[]):
    seen.append(token)
    if len(seen) == 2:
        local.kill_party(1)
try:
    gen.generate([5, 250, 42], 5, on_token=kill_after_two)
    print("NO ERROR", flush=True)
except tf_puma.PartyUnavailable as err:
    print("DOWN", str(err).replace(chr(10), " ")[:400], flush=True)
local.restart_party(1)
print("AGAIN", gen.generate([5, 250, 42], 5) == first, flush=True)
local.stop()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout + proc.stderr[-3000:]
    assert lines[0].startswith("DOWN") and "party 1" in lines[0], lines[0]
    assert "KV cache" in lines[0] and "after 2 new tokens" in lines[0], lines[0]
    assert lines[1] == "AGAIN True", lines[1]


def test_cli_generate_prints_the_tokens(llama):
    proc = subprocess.run(
        [sys.executable, "-m", "tf_puma.apps.cli", "generate", "--model", llama[2],
         "--prompt-ids", "5,250,42", "--max-new-tokens", "3", "--local"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = greedy_reference(llama[0], [5, 250, 42], 3)[0]
    assert proc.stdout.split() == [str(t) for t in want]
    assert "generate summary: 3 tokens" in proc.stderr
