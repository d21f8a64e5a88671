"""A real task: a sentiment classifier (TFBertForSequenceClassification on the real MiniLM,
its head fitted on movie-review sentences) decides as plaintext does through three local
parties."""

from __future__ import annotations

import numpy as np
import pytest

from tf_puma import secure_model
from tf_puma.apps import hf, text_data
from tf_puma.rewrites import convert
from tests.test_models import QUIET, _plain

pytestmark = pytest.mark.slow  # the whole real MiniLM, converted and run


def test_sentiment_classifier_same_decisions(tmp_path, cluster, deploy):
    train, held_out = text_data.sentiment_split(800, 200)
    head = hf.train_sentiment_head([s for _, s in train], np.array([r for r, _ in train]), 32)
    # the head learned something: plaintext accuracy on 200 held-out sentences (chance: 0.5)
    pooled = hf.plaintext_pooled([s for _, s in held_out], 32)
    labels = np.array([r > 0 for r, _ in held_out])
    assert np.mean((pooled @ head[0] + head[1]).argmax(-1) == labels) >= 0.6
    plain = hf.export_bert_classifier(str(tmp_path / "plain"), batch=8, seq_len=32, head=head)
    secure = str(tmp_path / "secure")
    convert.convert(plain, secure, **QUIET)
    deploy(secure, "sentiment")
    model = secure_model.load(secure)
    inputs = hf.tokenize([s for _, s in held_out[:8]], 32)
    reference = _plain(plain, inputs)["logits"]
    logits = model(**inputs)["logits"].numpy()
    assert np.abs(logits - reference).max() <= 0.02
    assert list(logits.argmax(-1)) == list(reference.argmax(-1))
