"""TF Serving's warm-up records for a secure model: `assets.extra/tf_serving_warmup_requests`, a
TFRecord of PredictionLog protos, each a PredictRequest a server replays before it reports the
model AVAILABLE. A secure model's first call is slow (the parties register its graph: ~10 s for
GPT-2 tiny, ~55 s for BERT-base), so the record is one request of constants in the converted shapes
(neutral_inputs): it carries nothing of the weights or of any client's data."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tf_puma.manifest import Manifest

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def neutral_inputs(manifest: Manifest) -> dict[str, np.ndarray]:
    """One batch in the signature's shapes and dtypes: ones for integer inputs (token id 1,
    mask 1: an all-zero attention mask divides by zero in mean pooling), zeros for floats."""
    out = {}
    for name, entry in manifest.inputs.items():
        dtype = tf.as_dtype(entry.dtype)
        out[name] = (np.ones if dtype.is_integer else np.zeros)(entry.shape,
                                                                dtype.as_numpy_dtype)
    return out


def write(model_dir: str, manifest: Manifest, model_name: str = "model") -> str:
    """Writes the warm-up record into `model_dir`; returns its path."""
    from tensorflow_serving.apis import prediction_log_pb2, predict_pb2  # noqa: PLC0415

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = manifest.signature
    for name, value in neutral_inputs(manifest).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    path = os.path.join(model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(log.SerializeToString())
    return path


def read(model_dir: str) -> list[dict[str, np.ndarray]]:
    """The inputs of the model's warm-up Predict requests (none if it has no record)."""
    from tensorflow_serving.apis import prediction_log_pb2  # noqa: PLC0415

    path = os.path.join(model_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        return []
    requests = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.HasField("predict_log"):
            requests.append({k: tf.make_ndarray(v)
                             for k, v in log.predict_log.request.inputs.items()})
    return requests
