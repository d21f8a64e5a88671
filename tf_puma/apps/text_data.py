"""Real text for the demo, tests and benchmarks: the 10,605 rated movie-review sentences of
Hutto & Gilbert (ICWSM 2014), shipped in the vaderSentiment 3.3.2 sdist that `make setup`
downloads to `data/` (or $TF_PUMA_DATA)."""

from __future__ import annotations

import functools
import io
import os
import tarfile

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_MOVIES = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def data_dir() -> str:
    """TF_PUMA_DATA, else the checkout's data/ (where `make setup` puts the sdist)."""
    here = os.path.dirname(os.path.abspath(__file__))  # <checkout>/tf_puma/apps
    return os.environ.get("TF_PUMA_DATA") or os.path.join(here, "..", "..", "data")


@functools.lru_cache(maxsize=1)
def movie_reviews() -> tuple[tuple[float, str], ...]:
    """(rating in [-4, 4], sentence) pairs, in the file's order."""
    path = os.path.join(data_dir(), VADER_SDIST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: run `make setup` (it downloads the "
                                "vadersentiment==3.3.2 sdist there), or set TF_PUMA_DATA")
    with tarfile.open(path) as sdist:
        inner = sdist.extractfile(_INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as corpus:
        text = corpus.extractfile(_MOVIES).read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        fields = line.strip().split("\t")
        if len(fields) == 3:
            rows.append((float(fields[1]), fields[2]))
    return tuple(rows)


def sentiment_split(train_size: int, held_out_size: int, seed: int = 0,
                    min_abs_rating: float = 0.5) -> tuple[list, list]:
    """(train, held_out) lists of (rating, sentence) from one seeded shuffle of the movie
    sentences (the file lists positive ones first, so its order cannot be split). Training keeps
    clearly rated sentences (|rating| > min_abs_rating); held-out sentences are all kinds."""
    import numpy as np  # noqa: PLC0415
    reviews = movie_reviews()
    order = np.random.default_rng(seed).permutation(len(reviews))
    if train_size + held_out_size > len(order):
        raise ValueError(f"only {len(order)} sentences for {train_size} + {held_out_size}")
    train = [reviews[i] for i in order[:train_size] if abs(reviews[i][0]) > min_abs_rating]
    held_out = [reviews[i] for i in order[train_size:train_size + held_out_size]]
    return train, held_out
