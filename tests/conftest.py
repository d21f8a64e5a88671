"""Shared fixtures: one local three-party cluster per test session, this process as the client."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # transformers' TF models (Keras 2) in tests

import tf_puma  # noqa: E402


# Weights the model owner shares into party bundles before the session's parties start.
TEST_BUNDLE = "b-test-weights"
BUNDLE_WEIGHTS = {
    "test/w": np.random.default_rng(99).normal(size=(16, 8)) * 0.3,
    "test/b": np.random.default_rng(98).normal(size=(8,)),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: whole real models (skipped by `make test-fast`)")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    from tf_puma import bundle  # noqa: PLC0415

    root = str(tmp_path_factory.mktemp("shares"))
    bundle.write_bundles(BUNDLE_WEIGHTS, root, TEST_BUNDLE)
    return root


@pytest.fixture(scope="session")
def deploy(bundle_dir):
    """Copies a converted model's share bundles to the session's parties, as an operator copies
    OUT/shares/partyI to party I (each party's --shares directory holds one bundle per model)."""
    import shutil  # noqa: PLC0415

    def install(model_dir: str, name: str) -> None:
        for i in range(3):
            shutil.copytree(os.path.join(model_dir, "shares", f"party{i}"),
                            os.path.join(bundle_dir, f"party{i}", name))
    return install


@pytest.fixture(scope="session")
def cluster(bundle_dir):
    local = tf_puma.LocalCluster(shares_dir=bundle_dir)
    spec = local.start()
    try:
        tf_puma.connect(spec)
        yield local
    finally:
        local.stop()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def check(secret_result: np.ndarray, reference: np.ndarray, tol: float) -> float:
    """Asserts max |secret - reference| <= tol and returns the max error."""
    secret_result = np.asarray(secret_result, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert secret_result.shape == reference.shape, (secret_result.shape, reference.shape)
    err = float(np.max(np.abs(secret_result - reference))) if reference.size else 0.0
    assert err <= tol, f"max abs error {err:.3g} exceeds the bound {tol:.3g}"
    return err


def run_secure(fn, *arrays, dtype=tf.float64) -> np.ndarray:
    """fn on secret-shared copies of `arrays` inside a tf.function, revealed to the client."""

    @tf.function
    def run(*xs):
        return tf_puma.reveal(fn(*[tf_puma.share(x) for x in xs]), dtype=dtype)

    return run(*[tf.constant(a) for a in arrays]).numpy()


def error_lines(stderr: str) -> list[str]:
    """TensorFlow's ERROR/FATAL log lines (`E0000 00:00:...`) and tracebacks in a process's
    stderr: a normal run prints none."""
    import re  # noqa: PLC0415

    return [line for line in stderr.splitlines()
            if re.match(r"[EF]\d{4} ", line) or line.startswith("Traceback")]
