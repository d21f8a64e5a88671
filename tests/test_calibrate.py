"""`tf-puma convert --calibrate`: sample inputs checked against every protocol's range on the
plaintext graph, each limit approached from both sides (1% inside passes, 1% outside is named),
and nothing the check observes written anywhere the client reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_puma.fixedpoint import FixedPoint
from tf_puma.protocols import approx, nn
from tf_puma.rewrites import calibrate, convert, graph, program
from tf_puma.rewrites.calibrate import CalibrationError

FXP = FixedPoint()
LN_EPS, RMS_EPS = 1e-5, 1e-6


def _model(tmp_path) -> str:
    """x -> LayerNorm, y -> RMSNorm (both over 8 values), z -> z @ w, r -> rsqrt(r) (alone),
    each input first multiplied by an identity weight: client inputs stay on the client (in
    plaintext float, no range) until they meet a weight."""
    w = tf.Variable(np.eye(4, 3, dtype=np.float32))  # z @ w: the first three columns of z
    eye, ones = tf.Variable(np.eye(8, dtype=np.float32)), tf.Variable(np.ones(3, np.float32))
    gamma = tf.Variable(np.ones(8, np.float32))
    ln = tf.keras.layers.LayerNormalization(epsilon=LN_EPS)
    ln.build([None, 8])

    def fn(x, y, z, r):
        x, y, r = x @ eye, y @ eye, r * ones
        ms = tf.reduce_mean(tf.square(y), axis=-1, keepdims=True)
        return {"ln": ln(x), "rms": gamma * (y / tf.sqrt(ms + RMS_EPS)), "dense": z @ w,
                "rsqrt": tf.math.rsqrt(r)}

    module = tf.Module()
    module.vars = [w, eye, ones, gamma, ln.gamma, ln.beta]
    path = str(tmp_path / "plain")
    specs = [tf.TensorSpec([2, 8], tf.float32, name=name) for name in ("x", "y")] + [
        tf.TensorSpec([2, 4], tf.float32, name="z"), tf.TensorSpec([2, 3], tf.float32, name="r")]
    tf.saved_model.save(module, path, signatures={
        "serving_default": tf.function(fn, input_signature=specs)})
    return path


def _sample(ln_var: float = 1.0, rms_ms: float = 1.0, dense: float = 1.0,
            r: float = 1.0) -> dict:
    """x's rows have LayerNorm variance + eps = ln_var (mean 0, +-a), y's rows mean square + eps
    = rms_ms (constant), z's largest entry (so the dense output's) is `dense`, r[0, 0] = r."""
    x = np.sqrt(ln_var - LN_EPS) * np.tile([1.0, -1.0], (2, 4))
    y = np.full((2, 8), np.sqrt(rms_ms - RMS_EPS))
    z = np.full((2, 4), 0.5)
    z[1, 2] = dense
    return {"x": x.astype(np.float32), "y": y.astype(np.float32), "z": z.astype(np.float32),
            "r": np.array([[r, 1.0, 2.0], [3.0, 4.0, 5.0]], np.float32)}


@pytest.fixture(scope="module")
def secure_program(tmp_path_factory):
    return program.SecureProgram(graph.load_signature(_model(tmp_path_factory.mktemp("cal"))))


def _failing(prog, sample) -> list[calibrate.Site]:
    return [s for s in calibrate.check(prog, [sample], FXP) if not s.ok]


def test_every_range_site_is_found(secure_program):
    sites = calibrate.plan(secure_program, FXP).sites
    quantities = sorted({s.quantity for s in sites})
    assert quantities == sorted({calibrate.VALUE, "LayerNorm variance + eps",
                                 "RMSNorm mean square + eps", "Rsqrt input"})
    assert "ranges assumed" in calibrate.assumptions(secure_program, FXP)


@pytest.mark.parametrize("limit,quantity,field,lo,hi", [
    ("layer_norm", "LayerNorm variance + eps", "ln_var", *nn.LAYER_NORM_VARIANCE),
    ("rms_norm", "RMSNorm mean square + eps", "rms_ms", *nn.RMS_NORM_MEAN_SQUARE),
    ("rsqrt", "Rsqrt input", "r", *approx.RSQRT_RANGE),
])
def test_each_range_is_checked_at_both_ends(secure_program, limit, quantity, field, lo, hi):
    for edge in (lo, hi):
        inside = edge * (1.01 if edge == lo else 0.99)
        outside = edge * (0.99 if edge == lo else 1.01)
        assert _failing(secure_program, _sample(**{field: inside})) == [], (limit, inside)
        bad = _failing(secure_program, _sample(**{field: outside}))
        assert [s.quantity for s in bad if s.quantity != calibrate.VALUE] == [quantity], (
            limit, outside, [s.describe() for s in bad])


def test_a_value_past_the_fixed_point_limit_is_named_at_its_node(secure_program):
    """2^26 at 18 fractional bits: a dense output of 1.01 x 2^26 would wrap around the ring."""
    assert FXP.max_abs == 2.0 ** 26
    assert _failing(secure_program, _sample(dense=0.99 * FXP.max_abs)) == []
    bad = _failing(secure_program, _sample(dense=1.01 * FXP.max_abs))
    assert [(s.op, s.quantity) for s in bad] == [("MatMul", calibrate.VALUE)], [
        s.describe() for s in bad]
    with pytest.raises(CalibrationError, match=r"matmul_2 \(MatMul\): \|secret value\| max "
                                               r"6\.78e\+07, supported < 6\.71e\+07 \(sample 1\)"):
        calibrate.enforce(secure_program, [_sample(), _sample(dense=1.01 * FXP.max_abs)], FXP,
                          log=lambda line: None)


def test_calibrated_conversion_writes_nothing_it_observed(tmp_path):
    plain = _model(tmp_path)
    samples = [_sample(dense=1234.5678), _sample(ln_var=3.25)]
    lines: list[str] = []
    convert.convert(plain, str(tmp_path / "secure"), calibrate=samples, log=lines.append)
    report = next(line for line in lines if line.startswith("calibration on 2 samples"))
    assert "0 outside their range" in report and "tightest" in report
    assert not any("ranges assumed" in line for line in lines)
    written = b""
    for root, _, files in os.walk(tmp_path / "secure"):
        if "shares" not in root:
            written += b"".join(open(os.path.join(root, f), "rb").read() for f in files)
    for seen in (1234.5678, 3.25 - LN_EPS):  # the largest value and a variance, any encoding
        for encoded in (np.float32(seen).tobytes(), np.float64(seen).tobytes(),
                        f"{seen:.3g}".encode(), np.int64(round(seen * 2 ** 18)).tobytes()):
            assert encoded not in written, (seen, encoded)
    # outside: refused before anything is traced, nothing left behind
    with pytest.raises(CalibrationError, match="Rsqrt input"):
        convert.convert(plain, str(tmp_path / "refused"), calibrate=[_sample(r=1e-4)],
                        log=lambda line: None)
    assert sorted(os.listdir(tmp_path)) == ["plain", "secure"]


def test_cli_calibrate_names_the_site_and_refuses_bad_files(tmp_path):
    plain = _model(tmp_path)
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps([{k: v.tolist() for k, v in _sample(rms_ms=2.0 ** 25).items()}]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cli = [sys.executable, "-m", "tf_puma.apps.cli", "convert", plain]
    proc = subprocess.run(cli + [str(tmp_path / "out"), "--calibrate", str(samples)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "RMSNorm mean square + eps [" in proc.stderr and "supported [0.000977, 1.68e+07]" in (
        proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    samples.write_text(json.dumps({"x": [[1.0] * 8] * 2}))
    proc = subprocess.run(cli + [str(tmp_path / "out"), "--calibrate", str(samples)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "missing ['r', 'y', 'z']" in proc.stderr, proc.stderr[-2000:]


def test_a_sample_the_plaintext_model_fails_on_is_named(tmp_path):
    """Token ids past the vocabulary: TensorFlow's own error, as a calibration error."""
    table = tf.Variable(np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32))
    module = tf.Module()
    module.table = table
    path = str(tmp_path / "emb")
    tf.saved_model.save(module, path, signatures={"serving_default": tf.function(
        lambda ids: {"h": tf.gather(table, ids) * 2.0},
        input_signature=[tf.TensorSpec([1, 3], tf.int32, name="ids")])})
    prog = program.SecureProgram(graph.load_signature(path))
    assert calibrate.check(prog, [{"ids": [[0, 9, 3]]}], FXP)
    with pytest.raises(CalibrationError, match=r"sample 1: the plaintext model fails on it: "
                                               r".*indices\[0,1\] = 10 is not in \[0, 10\)"):
        calibrate.check(prog, [{"ids": [[0, 9, 3]]}, {"ids": [[0, 10, 3]]}], FXP)
