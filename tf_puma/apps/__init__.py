"""Applications built on the library, and the fixtures they share with tests and benchmarks.

| module      | what                                                              |
|-------------|-------------------------------------------------------------------|
| `cli`       | `tf-puma convert / party / run` (the console script)              |
| `party`     | one party's TensorFlow server with its share bundle                |
| `supervisor`| `tf-puma party`'s watching process: restarts and recycles the server |
| `serving/`  | `tf-puma serve`: TF Serving's PredictionService and REST API      |
| `demo`      | `make demo`: the real MiniLM, converted and served by three parties |
| `hf`        | fixtures: transformers models exported as SavedModels, tokenizers  |
| `text_data` | fixtures: the review sentences and news text shipped in packages   |

The library (`tf_puma.*` outside this folder, `tf_puma.rewrites`) never imports from here: the
import graph runs apps -> rewrites -> protocols -> sharing -> runtime -> ops.
"""

from __future__ import annotations

import ctypes
import os

# Process settings of the applications (never of the library), applied before TensorFlow loads.
APP_ENVIRONMENT = {
    # C++ logs from errors up (no INFO/WARNING start-up chatter).
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # transformers' TF classes (and their SavedModels) need Keras 2 (tf-keras).
    "TF_USE_LEGACY_KERAS": "1",
}
# ...and of client processes (convert, run, demo): oneDNN off. The client's graph partitioner
# checks the parties' int64 ops against oneDNN and logs an ERROR line ("oneDNN supports DT_INT64
# only on platforms with AVX-512") once per process; the client's own float work is tiny.
# Parties keep TensorFlow's default: with oneDNN off their steady calls measured ~5% slower
# (MiniLM/128, 5.40 vs 5.51-5.98 s here), and their log is the operator's.
CLIENT_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "0"}
# ...and glibc's malloc keeps one arena in a client process instead of up to eight per core.
# Instantiating a secure function frees hundreds of MiB of graph copies made by TensorFlow's
# threads; spread over per-thread arenas that memory stayed mapped (a 128-token SmolLM2
# generation: 1,398 MiB free but kept, peak RSS 2,064 MiB; with one arena 1,458 MiB). The
# client's own work in a call is small: its call times stayed within run-to-run noise (README).
# glibc reads MALLOC_ARENA_MAX only at start, so this is mallopt's M_ARENA_MAX, set before
# TensorFlow starts its threads; a MALLOC_ARENA_MAX the user set wins.
CLIENT_MALLOC_ARENAS = 1
_M_ARENA_MAX = -8  # glibc's malloc.h


_SET_BY_APP = "TF_PUMA_SET_BY_APP"  # names a client app set itself (children may drop them)


def prepare_process(client: bool = True) -> None:
    """Applies APP_ENVIRONMENT (and CLIENT_ENVIRONMENT for a client) where the user has not set
    a value; call before importing TensorFlow (the console script and the demo do). A party
    started by a client app (`tf-puma run --local`) drops the client-only values that app set
    (not those the user set)."""
    inherited = set(filter(None, os.environ.get(_SET_BY_APP, "").split(",")))
    if not client:
        for name in inherited & set(CLIENT_ENVIRONMENT):
            os.environ.pop(name, None)
    wanted = {**APP_ENVIRONMENT, **(CLIENT_ENVIRONMENT if client else {})}
    set_here = {name for name in wanted if name not in os.environ}
    for name in set_here:
        os.environ[name] = wanted[name]
    os.environ[_SET_BY_APP] = ",".join(sorted(inherited | set_here))
    if client:
        limit_malloc_arenas(CLIENT_MALLOC_ARENAS)


def limit_malloc_arenas(count: int) -> bool:
    """At most `count` glibc malloc arenas from now on in this process (existing ones stay);
    False, doing nothing, if the user set MALLOC_ARENA_MAX or the C library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_ARENA_MAX, count) == 1
