"""The receive-scheduling pass (custom_ops/recv_scheduling.cc): in the process that instantiates
a function, a party's receive from another party gets one control input, an ancestor of what all
of its consumers also wait for on that party (never another receive, a constant or an argument)
at a burst boundary, so receives start in at most 32 bursts; TF_PUMA_RECEIVE_IN_BURSTS=0
turns it off. Results do not change."""

from __future__ import annotations

import ctypes

import numpy as np
import tensorflow as tf

from tf_puma import _ops
from tf_puma.cluster import party_device
from tf_puma.protocols import approx
from tests.conftest import check, run_secure

SWITCH = "TF_PUMA_RECEIVE_IN_BURSTS"


def _counts() -> tuple[int, int, int]:
    """(receives the pass delayed, party-to-party receives it left at the call's start, distinct
    control inputs it gave) so far in this process."""
    counts = ctypes.CDLL(_ops.library_path()).TfPumaReceiveCounts
    values = [ctypes.c_int64() for _ in range(3)]
    counts(*[ctypes.byref(v) for v in values])
    return tuple(v.value for v in values)


def _since(before: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(now - then for now, then in zip(_counts(), before))


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
    monkeypatch.delenv(SWITCH, raising=False)  # on by default
    x = np.array([1, -2, 3 << 40], np.int64)
    before = _counts()
    outputs = _three_patterns()(tf.constant(x))
    assert _since(before) == (1, 3, 1)
    for got, want in zip(outputs, _expected(x)):
        np.testing.assert_array_equal(got.numpy(), want)


def test_receives_along_a_chain_start_in_bursts(cluster, monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    n = 96  # party 0 sends v_k = 3 v_(k-1) + k; party 1 folds w_k = 5 w_(k-1) + v_k

    @tf.function
    def chain(x):
        with tf.device(party_device(0)):
            sent, v = [], x
            for k in range(n):
                v = v * 3 + k
                sent.append(v)
        with tf.device(party_device(1)):
            w = x + 1
            for k in range(n):
                w = w * 5 + sent[k]
        return w

    x = np.array([2, -7], np.int64)
    before = _counts()
    got = chain(tf.constant(x)).numpy()
    delayed, at_start, bursts = _since(before)
    # every receive waits (for w_(k-1) * 5), and those of one 32nd of the depth share a start
    assert (delayed, at_start) == (n, 0)
    print(f"{n} receives in {bursts} bursts")
    assert 16 <= bursts <= 33, bursts  # spread over the call, at most 32 + the start
    v, w = x.copy(), x + 1
    for k in range(n):  # int64 arrays wrap as the ring does
        v = v * 3 + k
        w = w * 5 + v
    np.testing.assert_array_equal(got, w)


def test_the_pass_is_off_when_switched_off(cluster, monkeypatch):
    monkeypatch.setenv(SWITCH, "0")
    x = np.array([7, 0, -(1 << 62)], np.int64)
    before = _counts()
    outputs = _three_patterns()(tf.constant(x))
    assert _counts() == before
    for got, want in zip(outputs, _expected(x)):
        np.testing.assert_array_equal(got.numpy(), want)


def test_secure_protocols_give_the_same_results_with_delayed_receives(cluster, monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    x = np.concatenate([np.linspace(-14, 0, 4001), [-14.5, -20.0, -300.0, -4096.0]])
    before = _counts()
    out = run_secure(approx.exp, x)
    delayed, _, _ = _since(before)
    assert delayed > 0  # exp's comparisons and products exchange messages between parties
    check(out, np.where(x < -14, 0.0, np.exp(x)), 1e-4)  # test_approx.py's bound for exp
