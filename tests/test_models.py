"""Real transformers, end to end: export a plaintext SavedModel, `convert` it, deploy the share
bundles to the parties, run the secure SavedModel, compare with plaintext TensorFlow."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_puma import audit, secure_model
from tf_puma.apps import hf, text_data
from tf_puma.rewrites import convert

pytestmark = pytest.mark.slow  # real models, minutes each: `make test` runs them, test-fast not
QUIET = {"log": lambda line: None}
# Real text: four rated movie-review sentences. Their plaintext similarities differ by >= 0.019
# within each row, far above the secure error (~1e-4), so rankings must agree exactly.
REVIEW_IDS = (10, 20, 30, 40)


def _plain(saved_model_dir: str, inputs: dict) -> dict:
    fn = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


@pytest.fixture(scope="module")
def minilm(tmp_path_factory, cluster, deploy):
    root = tmp_path_factory.mktemp("minilm")
    plain = hf.export_minilm(str(root / "plain"), batch=4, seq_len=32)
    secure = str(root / "secure")
    manifest = convert.convert(plain, secure, **QUIET)
    deploy(secure, "minilm")
    return plain, secure, manifest


def test_minilm_matches_plaintext(minilm):
    plain_dir, secure_dir, manifest = minilm
    sentences = [text_data.movie_reviews()[i][1] for i in REVIEW_IDS]
    inputs = hf.tokenize(sentences, 32)
    reference = _plain(plain_dir, inputs)
    # the plain TF path: load the secure SavedModel after connecting, call its signature
    loaded = tf.saved_model.load(secure_dir).signatures["serving_default"]
    out = {k: v.numpy() for k, v in loaded(**{k: tf.constant(v)
                                               for k, v in inputs.items()}).items()}
    hidden_err = np.abs(out["last_hidden_state"] - reference["last_hidden_state"]).max()
    print(f"MiniLM 4 x 32 tokens: max abs error {hidden_err:.2e}")
    # measured 9.1e-4 (4e-3 with Taylor's exp cubic, approx.EXP_CUBIC); issue 4 asked <= 0.02
    assert hidden_err <= 2e-3, hidden_err
    secure_emb, plain_emb = out["sentence_embedding"], reference["sentence_embedding"]
    cos = np.sum(secure_emb * plain_emb, -1) / (np.linalg.norm(secure_emb, axis=-1)
                                                * np.linalg.norm(plain_emb, axis=-1))
    assert cos.min() >= 0.999, cos
    sim_secure, sim_plain = _cosine(secure_emb, secure_emb), _cosine(plain_emb, plain_emb)
    for i in range(len(sentences)):  # each sentence ranks the others identically
        assert list(np.argsort(-sim_secure[i])) == list(np.argsort(-sim_plain[i]))
    assert manifest.weight_values > 22_000_000  # every MiniLM weight is in the bundles


def test_secure_savedmodel_holds_no_weight_values(minilm):
    """No weight value, in any encoding the code uses, anywhere in what the client gets: 64
    sampled values of every variable as float64 and as ring elements at 18..42 fractional bits
    (public constants get up to 24 extra bits; those of at least 2^32, so 8 bytes say enough),
    and as float32 pairs along both axes (a folded transpose stores columns consecutively)."""
    plain_dir, secure_dir, manifest = minilm
    client_files = [os.path.join(secure_dir, "saved_model.pb"),
                    os.path.join(secure_dir, "tf_puma.json")]
    client_files += [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(secure_dir,
                                                                               "variables"))
                     for f in fs]
    blob = b"".join(open(f, "rb").read() for f in client_files)
    # every 8-byte window of the client's files, sorted: one np.isin instead of 46k scans
    raw = np.frombuffer(blob + b"\0" * 16, np.uint8)
    windows = np.unique(np.concatenate([raw[k:k + 8 * ((raw.size - k) // 8)].view("<u8")
                                        for k in range(8)]))
    for at in (0, 1001, len(blob) - 8):  # the search finds bytes that are there, at any offset
        assert np.isin(np.frombuffer(blob[at:at + 8], "<u8"), windows).all()
    rng = np.random.default_rng(0)
    loaded = tf.saved_model.load(plain_dir)
    checked = 0
    for var in loaded.model.trainable_variables:
        value = var.numpy().astype(np.float64)
        flat = value.reshape(-1)
        # values with few significant bits (0, 0.5, ...) also stand in public constants
        distinct = np.nonzero(flat * 256 != np.round(flat * 256))[0]
        picks = rng.choice(distinct, size=min(64, distinct.size), replace=False)
        needles = [np.float64(flat[i]).tobytes() for i in picks]
        # (ring encodings below 2^32 have 3 or 4 informative bytes: common by chance in a pb)
        needles += [np.int64(round(flat[i] * 2.0 ** f)).tobytes() for i in picks
                    for f in range(18, 43) if abs(round(flat[i] * 2.0 ** f)) >= 2 ** 32]
        if value.ndim == 2 and min(value.shape) > 1:
            rows = rng.integers(0, value.shape[0] - 1, 32)
            cols = rng.integers(0, value.shape[1] - 1, 32)
            f32 = value.astype(np.float32)
            needles += [f32[r, c:c + 2].tobytes() for r, c in zip(rows, cols)]
            needles += [np.ascontiguousarray(f32[r:r + 2, c]).tobytes()
                        for r, c in zip(rows, cols)]
        found = np.isin(np.frombuffer(b"".join(needles), "<u8"), windows)
        assert not found.any(), (var.name, int(found.sum()))
        checked += len(needles)
    assert checked > 40_000  # measured: 46k needles over all MiniLM variables
    assert manifest.weight_values > 22_000_000


def test_whole_minilm_draws_every_prg_output_once(minilm):
    """The static reuse audit on the whole secure SavedModel, as the client loads it."""
    _, secure_dir, _ = minilm
    loaded = tf.saved_model.load(secure_dir)
    problems, draws = audit.report(loaded.signatures["serving_default"].graph)
    assert problems == []
    assert audit.summary(draws)["trunc_pr"] > 1000  # the walk reached the function bodies


def test_client_files_carry_no_fingerprint_of_the_weights(minilm):
    """The bundle id is random; the source's hash and path stay in the owner's record."""
    plain_dir, secure_dir, manifest = minilm
    owner = json.load(open(os.path.join(secure_dir, "shares", convert.OWNER_RECORD)))
    assert owner["model_sha256"] == convert.model_hash(plain_dir)
    assert owner["bundle_id"] == manifest.bundle_id
    for name in ("saved_model.pb", convert.MANIFEST):
        data = open(os.path.join(secure_dir, name), "rb").read()
        assert owner["model_sha256"][:12].encode() not in data, name
        assert os.path.abspath(plain_dir).encode() not in data, name
    assert not {"model_sha256", "source"} & set(manifest.to_json())


def test_wrong_inputs_are_named_before_running(minilm):
    _, secure_dir, _ = minilm
    model = secure_model.load(secure_dir)
    ids = hf.tokenize([text_data.movie_reviews()[i][1] for i in REVIEW_IDS], 32)
    with pytest.raises(secure_model.InputError, match=r"'input_ids'.*shape \[4, 32\]"):
        model(input_ids=ids["input_ids"][:, :16], attention_mask=ids["attention_mask"])
    with pytest.raises(secure_model.InputError, match=r"'input_ids'.*int32.*float"):
        model(input_ids=ids["input_ids"].astype(np.float32), attention_mask=ids["attention_mask"])
    with pytest.raises(secure_model.InputError, match=r"missing \['attention_mask'\]"):
        model(input_ids=ids["input_ids"])
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError),
                       match=r"input input_ids must have shape \[4, 32\]"):
        model.signature(input_ids=tf.zeros([4, 16], tf.int32),
                        attention_mask=tf.constant(ids["attention_mask"]))


def test_gpt2_next_token_logits(tmp_path, cluster, deploy):
    plain = hf.export_gpt2(str(tmp_path / "plain"), batch=1, seq_len=8)
    secure = str(tmp_path / "secure")
    manifest = convert.convert(plain, secure, **QUIET)
    assert set(manifest.layers) >= {"h_._0", "h_._1"}
    assert audit.audit_saved_model(secure) == []  # every PRG output drawn once
    deploy(secure, "gpt2")
    ids = np.random.default_rng(5).integers(0, 500, (1, 8)).astype(np.int32)
    reference = _plain(plain, {"input_ids": ids})["logits"]
    logits = secure_model.load(secure)(input_ids=ids)["logits"].numpy()
    assert np.abs(logits - reference).max() <= 5e-3  # measured 6e-4
    assert list(logits[0].argmax(-1)) == list(reference[0].argmax(-1))


def test_roberta_random_config(tmp_path, cluster, deploy):
    """RoBERTa computes position ids from the token ids (padding-aware cumsum): client-side."""
    transformers = hf.use_transformers()

    tf.keras.utils.set_random_seed(3)
    cfg = transformers.RobertaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128,
                                     max_position_embeddings=40)
    model = transformers.TFRobertaModel(cfg)
    model(model.dummy_inputs)
    spec = [tf.TensorSpec([2, 12], tf.int32, name="input_ids"),
            tf.TensorSpec([2, 12], tf.int32, name="attention_mask")]

    @tf.function(input_signature=spec)
    def serve(input_ids, attention_mask):
        out = model(input_ids=input_ids, attention_mask=attention_mask, training=False)
        return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}

    module = tf.Module()
    module.model = model
    plain = str(tmp_path / "plain")
    tf.saved_model.save(module, plain, signatures={"serving_default": serve})
    secure = str(tmp_path / "secure")
    convert.convert(plain, secure, **QUIET)
    deploy(secure, "roberta")
    rng = np.random.default_rng(8)
    ids = rng.integers(3, 300, (2, 12)).astype(np.int32)
    mask = np.ones((2, 12), np.int32)
    ids[1, 9:], mask[1, 9:] = 1, 0  # padding (RoBERTa's pad id is 1)
    inputs = {"input_ids": ids, "attention_mask": mask}
    reference = _plain(plain, inputs)
    out = secure_model.load(secure)(**inputs)
    for key in reference:
        assert np.abs(out[key].numpy() - reference[key]).max() <= 0.02, key
