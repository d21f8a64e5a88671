"""Applications built on the library, and the fixtures they share with tests and benchmarks.

| module      | what                                                              |
|-------------|-------------------------------------------------------------------|
| `cli`       | `tf-puma convert / party / run` (the console script)              |
| `party`     | one party's TensorFlow server with its share bundle                |
| `demo`      | `make demo`: the real MiniLM, converted and served by three parties |
| `hf`        | fixtures: transformers models exported as SavedModels, tokenizers  |
| `text_data` | fixtures: the review sentences and news text shipped in packages   |

The library (`tf_puma.*` outside this folder, `tf_puma.rewrites`) never imports from here: the
import graph runs apps -> rewrites -> protocols -> sharing -> runtime -> ops.
"""

from __future__ import annotations

import os

# Process settings of the applications (never of the library), applied before TensorFlow loads.
APP_ENVIRONMENT = {
    # C++ logs from errors up (no INFO/WARNING start-up chatter).
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # oneDNN off: secure graphs are int64 (oneDNN takes no int64 op on CPUs without AVX-512, and
    # TensorFlow logs that as an ERROR line once per process); plaintext float work is tiny.
    "TF_ENABLE_ONEDNN_OPTS": "0",
    # transformers' TF classes (and their SavedModels) need Keras 2 (tf-keras).
    "TF_USE_LEGACY_KERAS": "1",
}


def prepare_process() -> None:
    """Applies APP_ENVIRONMENT where the user has not set a value; call before importing
    TensorFlow (the console script, the demo and the local parties do)."""
    for name, value in APP_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
