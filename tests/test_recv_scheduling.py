"""The receive-scheduling pass (custom_ops/recv_scheduling.cc): with
TF_PUMA_RECEIVE_WHEN_REACHED=1 in the process that instantiates a function, a party's receive
from another party waits for what all of its consumers also wait for on that party (never for
another receive, a constant or an argument), and the results do not change."""

from __future__ import annotations

import ctypes

import numpy as np
import tensorflow as tf

from tf_puma import _ops
from tf_puma.cluster import party_device
from tf_puma.protocols import approx
from tests.conftest import check, run_secure

SWITCH = "TF_PUMA_RECEIVE_WHEN_REACHED"


def _counts() -> tuple[int, int]:
    """(receives the pass delayed, party-to-party receives it left at the call's start) so far
    in this process."""
    counts = ctypes.CDLL(_ops.library_path()).TfPumaReceiveCounts
    delayed, at_start = ctypes.c_int64(), ctypes.c_int64()
    counts(ctypes.byref(delayed), ctypes.byref(at_start))
    return delayed.value, at_start.value


def _three_patterns():
    """Party 1 receives y (one consumer, which also waits for z: delayed) and v (consumers a and
    b = v + a: nothing in common, left at the start); party 2 receives y and v for one consumer
    whose other input is the other receive (left at the start, both)."""

    @tf.function
    def call(x):
        with tf.device(party_device(0)):
            y = x * 2
            v = x * 3
        with tf.device(party_device(1)):
            z = x + 5
            t = y + z
            a = v * z
            b = v + a
        with tf.device(party_device(2)):
            c = y - v
        return t, b, c

    return call


def _expected(x: np.ndarray) -> tuple[np.ndarray, ...]:
    y, v, z = 2 * x, 3 * x, x + 5
    return y + z, v + v * z, y - v


def test_a_receive_waits_only_for_what_all_its_consumers_wait_for(cluster, monkeypatch):
    monkeypatch.setenv(SWITCH, "1")
    x = np.array([1, -2, 3 << 40], np.int64)
    before = _counts()
    outputs = _three_patterns()(tf.constant(x))
    delayed, at_start = (a - b for a, b in zip(_counts(), before))
    assert (delayed, at_start) == (1, 3)
    for got, want in zip(outputs, _expected(x)):
        np.testing.assert_array_equal(got.numpy(), want)


def test_the_pass_is_off_unless_switched_on(cluster, monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    x = np.array([7, 0, -(1 << 62)], np.int64)
    before = _counts()
    outputs = _three_patterns()(tf.constant(x))
    assert _counts() == before
    for got, want in zip(outputs, _expected(x)):
        np.testing.assert_array_equal(got.numpy(), want)


def test_secure_protocols_give_the_same_results_with_delayed_receives(cluster, monkeypatch):
    monkeypatch.setenv(SWITCH, "1")
    x = np.concatenate([np.linspace(-14, 0, 4001), [-14.5, -20.0, -300.0, -4096.0]])
    before = _counts()
    out = run_secure(approx.exp, x)
    delayed = _counts()[0] - before[0]
    assert delayed > 0  # exp's comparisons and products exchange messages between parties
    check(out, np.where(x < -14, 0.0, np.exp(x)), 1e-4)  # test_approx.py's bound for exp
