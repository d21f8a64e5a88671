"""Decoders (LLaMA architecture): the idioms transformers' TF Mistral/LLaMA emits, rotary angles
as architecture, attention masks outside fixed point, and a random TFMistralForCausalLM end to
end (three local parties)."""

from __future__ import annotations


import numpy as np
import pytest
import tensorflow as tf

from tf_puma import audit, secure_model
from tf_puma.apps import hf
from tf_puma.rewrites import convert, graph, program
from tf_puma.rewrites.graph import ConversionError
from tests.test_rewrites import QUIET, _save, _weights


def _plain(path: str, inputs: dict) -> dict:
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


@pytest.mark.parametrize("theta,dim", [(1e4, 16), (1e5, 64), (5e5, 128), (10.0, 8)])
def test_rotary_inverse_frequencies_are_architecture(theta, dim):
    inv_freq = (1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)).astype(np.float32)
    assert graph.is_rotary_inverse_frequencies(inv_freq)
    rng = np.random.default_rng(0)
    assert not graph.is_rotary_inverse_frequencies(inv_freq * 0.5)          # not from 1
    assert not graph.is_rotary_inverse_frequencies(np.sort(rng.uniform(size=dim // 2))[::-1])
    bent = inv_freq.copy()
    bent[-1] *= 1.01                                                         # one value off
    assert not graph.is_rotary_inverse_frequencies(bent)
    assert not graph.is_rotary_inverse_frequencies(inv_freq.reshape(1, -1))  # not a vector
    assert not graph.is_rotary_inverse_frequencies(inv_freq[:3])  # [1, a, a^2]: any a fits


def test_llama_idioms_are_found_and_angles_are_constants(tmp_path):
    plain = hf.export_llama(str(tmp_path / "plain"), batch=1, seq_len=8)
    prog = program.SecureProgram(graph.load_signature(plain))
    assert prog.idiom_summary() == "masked_softmax x2, rms_norm x5, silu x2"
    ops = {prog.graph.nodes[n].op for n in prog.order if n not in prog.idioms}
    assert not ops & {"Sqrt", "Sigmoid", "IdentityN", "Softmax"}, ops
    # the rotary tables are folded constants, not weights in the parties' bundles
    assert not any("rotary" in name for name in prog.weights)
    assert any(ref.endswith("layers.0/self_attn/ExpandDims:0") for ref in prog.constants)  # cos


def test_decoder_idioms_match_plaintext(tmp_path, cluster, deploy):
    """SiLU as tf.nn.silu (IdentityN) on [-12, 12]; RMSNorm in Mistral's (x / sqrt) and T5's
    (x * rsqrt) forms; Softmax under a dtype-minimum causal mask and under a mask computed from
    the client's attention_mask (both -3.4e38, outside fixed point)."""
    w, gamma = _weights((8, 16), (16,), seed=3)
    n = 6

    def fn(x, attention_mask):
        h = x @ w
        silu = tf.nn.silu(h)
        ms = tf.reduce_mean(tf.square(h), axis=-1, keepdims=True)
        mistral = gamma * (h / tf.sqrt(ms + 1e-5))
        t5 = gamma * (h * tf.math.rsqrt(tf.reduce_mean(h * h, -1, keepdims=True) + 1e-6))
        scores = tf.reshape(h[:, :12], [1, 2, n, n]) * 3.0
        causal = tf.where(tf.range(n)[:, None] >= tf.range(n)[None, :], 0.0, tf.float32.min)
        padding = (1.0 - tf.cast(attention_mask, tf.float32))[:, None, None, :] * tf.float32.min
        return {"silu": silu, "mistral": mistral, "t5": t5,
                "causal": tf.nn.softmax(scores + causal[None, None] + 1e-9),
                "padded": tf.nn.softmax(scores + padding)}

    specs = [tf.TensorSpec([n, 8], tf.float32, name="x"),
             tf.TensorSpec([1, n], tf.int32, name="attention_mask")]
    plain = _save(tmp_path, "plain", fn, specs, [w, gamma])
    secure = str(tmp_path / "secure")
    manifest = convert.convert(plain, secure, **QUIET)
    assert manifest is not None
    deploy(secure, "decoder-idioms")
    x = np.random.default_rng(4).normal(size=(n, 8)).astype(np.float32)
    x *= 12.0 / np.abs(x @ w.numpy()).max()          # SiLU inputs reach +-12
    inputs = {"x": x, "attention_mask": np.array([[1, 1, 1, 1, 0, 0]], np.int32)}
    reference = _plain(plain, inputs)
    out = {k: v.numpy() for k, v in secure_model.load(secure)(**inputs).items()}
    h = x @ w.numpy()
    assert h.min() < -4 and h.max() > 4 and np.isclose(np.abs(h).max(), 12, rtol=1e-3)
    errors = {k: float(np.abs(out[k] - reference[k]).max()) for k in reference}
    print("decoder idioms: max abs errors", errors)
    # measured: silu 2.7e-4 (x times the secure sigmoid), norms 6.3e-6, softmax 7.5e-5
    assert errors["silu"] <= 5e-4, errors
    assert errors["mistral"] <= 2e-5 and errors["t5"] <= 2e-5, errors
    assert errors["causal"] <= 2e-4 and errors["padded"] <= 2e-4, errors
    assert np.all(out["padded"][..., 4:] == 0) and np.all(np.triu(out["causal"][0, 0], 1) == 0)


def test_a_huge_constant_outside_softmax_is_named(tmp_path):
    w, = _weights((4, 4))
    path = _save(tmp_path, "m", lambda x: {"y": x @ w + tf.fill([2, 4], tf.float32.min)},
                 [tf.TensorSpec([2, 4], tf.float32, name="x")], [w])
    with pytest.raises(ConversionError, match=r"(?s)AddV2 .*outside the fixed-point range"):
        convert.convert(path, str(tmp_path / "out"), **QUIET)


def test_random_llama_next_token_logits(tmp_path, cluster, deploy):
    """TFMistralForCausalLM, random LLaMA-style config (GQA 4 over 2 heads, rotary, SwiGLU,
    tied head): every position's logits and next tokens as plaintext."""
    plain = hf.export_llama(str(tmp_path / "plain"), batch=2, seq_len=8, seed=1,
                            initializer_range=0.1)
    secure = str(tmp_path / "secure")
    convert.convert(plain, secure, **QUIET)
    assert audit.audit_saved_model(secure) == []
    deploy(secure, "llama")
    ids = np.random.default_rng(5).integers(0, 300, (2, 8)).astype(np.int32)
    reference = _plain(plain, {"input_ids": ids})["logits"]
    logits = secure_model.load(secure)(input_ids=ids)["logits"].numpy()
    err = float(np.abs(logits - reference).max())
    print(f"random llama: max abs error {err:.2e}, |logits| max {np.abs(reference).max():.2f}")
    assert np.abs(reference).max() > 1.0
    assert err <= 1.5e-2, err  # measured 6.9e-3
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.9
