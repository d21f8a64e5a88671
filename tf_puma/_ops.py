"""Loads the tf-puma op library (op definitions in every process, kernels where they run).

The library is `tf_puma/_puma_ops.so`, built by `pip install -e .` (setup.py) or by Bazel; set
`TF_PUMA_OPS_LIBRARY` to load another build (the Bazel one, say) instead.
"""

from __future__ import annotations

import os
import types

import tensorflow as tf

from tf_puma import opbuild

_LIBRARY_ENV = "TF_PUMA_OPS_LIBRARY"
_DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_puma_ops.so")
_module: types.SimpleNamespace | None = None


def library_path() -> str:
    """Path of the op library this process loads."""
    return os.environ.get(_LIBRARY_ENV) or _DEFAULT_PATH


def load() -> types.SimpleNamespace:
    """Loads the op library once and returns its op functions: the generated wrappers, with
    graph-mode calls creating the op straight from its OpDef (`opbuild`)."""
    global _module
    if _module is None:
        path = library_path()
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"tf-puma op library not found at {path}: build it with `make build` "
                f"(or `pip install --no-build-isolation -e .`), or point {_LIBRARY_ENV} at a "
                "Bazel-built _puma_ops.so")
        _module = opbuild.fast_module(tf.load_op_library(path))
    return _module
