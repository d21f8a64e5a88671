"""The README's Python snippets run as written (against a local cluster and a small converted
model standing in for minilm-secure), so every name it shows exists."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tf_puma.rewrites import convert

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", open(README, encoding="utf-8").read(), re.S)


def serving_snippet() -> str:
    """The TF Serving client snippet (run by tests/test_serve.py against served MiniLM)."""
    return next(s for s in python_snippets() if "PredictionServiceStub" in s)


def generation_snippets() -> list[str]:
    """The decoders section's two snippets: export a decoding step, then generate."""
    return [s for s in python_snippets() if "export_generation" in s or "load_generator" in s]


def library_snippets() -> list[str]:
    return [s for s in python_snippets() if "PredictionServiceStub" not in s
            and s not in generation_snippets()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cluster, deploy):
    """cluster.json of the session's parties and a tiny encoder as minilm-secure."""
    root = tmp_path_factory.mktemp("readme")
    (root / "cluster.json").write_text(json.dumps(cluster.cluster.as_dict()))
    rng = np.random.default_rng(0)
    emb = tf.Variable(rng.normal(size=(30, 8)).astype(np.float32))
    module = tf.Module()
    module.emb = emb
    spec = [tf.TensorSpec([2, 5], tf.int32, name="input_ids"),
            tf.TensorSpec([2, 5], tf.int32, name="attention_mask")]

    @tf.function(input_signature=spec)
    def serve(input_ids, attention_mask):
        h = tf.gather(emb, input_ids) * tf.cast(attention_mask, tf.float32)[..., None]
        return {"last_hidden_state": tf.nn.gelu(h)}

    tf.saved_model.save(module, str(root / "plain"), signatures={"serving_default": serve})
    convert.convert(str(root / "plain"), str(root / "minilm-secure"), log=lambda line: None)
    deploy(str(root / "minilm-secure"), "readme")
    return root


def test_readme_has_the_snippets_this_test_runs():
    assert len(python_snippets()) == 5
    assert len(generation_snippets()) == 2
    assert "stub.Predict(" in serving_snippet()
    snippets = library_snippets()
    assert "tf_puma.load(" in snippets[0] and "costs.Ledger" in snippets[1]


def test_readme_python_snippets_run(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    namespace = {"ids": np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]], np.int32),
                 "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)}
    for snippet in library_snippets():
        exec(compile(snippet, README, "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["out"]["last_hidden_state"].shape == (2, 5, 8)
    printed = capsys.readouterr().out
    assert "matmul" in printed and "4." in printed


def test_readme_generation_snippets_run(workdir, monkeypatch, capsys, deploy):
    """Export a (tiny, random) LLaMA-style model's decoding step as the README does, convert it
    as `tf-puma convert lm-step lm-gen --generate --prompt-tokens 16` does, generate."""
    from tf_puma.apps import hf  # noqa: PLC0415
    transformers = hf.use_transformers()
    tf.keras.utils.set_random_seed(4)
    model = transformers.TFMistralForCausalLM(transformers.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        sliding_window=None, initializer_range=0.2))
    model(model.dummy_inputs)
    monkeypatch.chdir(workdir)
    export, generate = generation_snippets()
    exec(compile(export, README, "exec"), {"model": model})  # noqa: S102 - our own README
    convert.convert_generation("lm-step", "lm-gen", prompt_tokens=16, log=lambda line: None)
    deploy(str(workdir / "lm-gen"), "readme-generation")
    prompt = [3, 14, 15, 9, 26]
    namespace = {"prompt_ids": prompt}
    exec(compile(generate, README, "exec"), namespace)  # noqa: S102
    ids = list(prompt)
    for _ in range(16):
        logits = model(input_ids=np.asarray([ids], np.int32), training=False).logits
        ids.append(int(np.argmax(logits[0, -1])))
    assert namespace["tokens"] == ids[len(prompt):]
    assert capsys.readouterr().out.split() == [str(t) for t in ids[len(prompt):]]
