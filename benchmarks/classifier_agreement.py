"""Sentiment classifier decisions, secure vs plaintext, on held-out movie-review sentences.

TFBertForSequenceClassification on the real MiniLM encoder with a head fitted (plaintext logistic
regression) on 2,000 shuffled sentences of the vaderSentiment movie corpus; the secure model
classifies `--sentences` held-out ones from the same shuffle in batches of 16 x 32 tokens.
Target (issue 4): the same decision as plaintext on >= 99.5%.

    python benchmarks/classifier_agreement.py [--sentences 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402

BATCH, SEQ_LEN, TRAIN = 16, 32, 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400)
    args = parser.parse_args()
    import numpy as np  # noqa: PLC0415

    from tf_puma.apps import hf, text_data  # noqa: PLC0415

    train, held = text_data.sentiment_split(TRAIN, args.sentences - args.sentences % BATCH)
    head = hf.train_sentiment_head([s for _, s in train], np.array([r for r, _ in train]),
                                   SEQ_LEN)
    work = tempfile.mkdtemp(prefix="tf-puma-classifier-")
    try:
        row = _measure(held, head, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(["sentences", "same decision", "target", "max |logit err|", "plain acc",
                 "secure acc", "s / batch of 16"],
                [[row["sentences"], f"{row['agreement']:.2%}", "99.5%",
                  f"{row['max_abs_logit_err']:.1e}", f"{row['plaintext_accuracy']:.1%}",
                  f"{row['secure_accuracy']:.1%}", row["seconds_per_batch"]]])
    write_json("classifier_agreement", row)


def _measure(held: list, head, work: str) -> dict:
    """Convert the classifier in `work`, run plaintext and secure on held-out batches."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_puma  # noqa: PLC0415
    from tf_puma import secure_model  # noqa: PLC0415
    from tf_puma.apps import hf  # noqa: PLC0415
    from tf_puma.rewrites import convert  # noqa: PLC0415

    plain = hf.export_bert_classifier(os.path.join(work, "plain"), BATCH, SEQ_LEN, head=head)
    secure = os.path.join(work, "secure")
    convert.convert(plain, secure, log=lambda line: None)
    plain_fn = tf.saved_model.load(plain).signatures["serving_default"]
    count = len(held)
    batches = [hf.tokenize([s for _, s in held[start:start + BATCH]], SEQ_LEN)
               for start in range(0, count, BATCH)]
    # plaintext first: functions loaded before `connect` cannot run after it
    plain_logits = [plain_fn(**{k: tf.constant(v) for k, v in inputs.items()})["logits"].numpy()
                    for inputs in batches]
    secure_logits, walls = [], []
    with tf_puma.LocalCluster(shares_dir=os.path.join(secure, "shares")) as spec:
        tf_puma.connect(spec)
        model = secure_model.load(secure)
        for inputs in batches:
            t = time.perf_counter()
            secure_logits.append(model(**inputs)["logits"].numpy())
            walls.append(time.perf_counter() - t)
    s, p = np.concatenate(secure_logits), np.concatenate(plain_logits)
    labels = np.array([r > 0 for r, _ in held])
    agree = float(np.mean(s.argmax(-1) == p.argmax(-1)))
    margin = np.abs(p[:, 1] - p[:, 0])
    row = {"sentences": count, "agreement": agree, "target": 0.995,
           "max_abs_logit_err": float(np.abs(s - p).max()),
           "plaintext_accuracy": float(np.mean(p.argmax(-1) == labels)),
           "secure_accuracy": float(np.mean(s.argmax(-1) == labels)),
           "smallest_plaintext_margin": float(margin.min()),
           "seconds_per_batch": float(np.median(walls[1:] or walls)), "batch": BATCH,
           "tokens": SEQ_LEN}
    return row


if __name__ == "__main__":
    main()
