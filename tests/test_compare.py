"""Boolean sharing, MSB, bit injection and comparisons on three real TF servers."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_puma
from tf_puma import costs
from tf_puma.protocols import boolean, compare
from tests.conftest import check, run_secure

ULP = 2.0 ** -18


def test_and_of_boolean_shares(cluster, rng):
    x, y = rng.integers(-2 ** 63, 2 ** 63 - 1, size=(40,)), rng.integers(-2 ** 63, 2 ** 63 - 1,
                                                                      size=(40,))

    @tf.function
    def run(a, b):
        sa, sb = tf_puma.share(a, frac_bits=0), tf_puma.share(b, frac_bits=0)
        # Each party's first share XORed: addends give boolean sharings of x_j; AND them.
        a0, a1, a2 = boolean.addends(sa)
        b0, _, _ = boolean.addends(sb)
        both = (a0 ^ a1 ^ a2) & b0
        words = [tf.bitwise.bitwise_xor(*both.pairs[0]), both.pairs[1][1]]
        s_a = [sa.pairs[0][0], sa.pairs[0][1], sa.pairs[1][1]]
        return tf.bitwise.bitwise_xor(words[0], words[1]), s_a, sb.pairs[0][0]

    got, s_a, b0 = run(tf.constant(x), tf.constant(y))
    s_a = [t.numpy() for t in s_a]
    np.testing.assert_array_equal(got.numpy(), (s_a[0] ^ s_a[1] ^ s_a[2]) & b0.numpy())


def test_a2b_gives_the_twos_complement_word(cluster, rng):
    x = np.concatenate([rng.uniform(-1e6, 1e6, size=500), [0.0, -ULP, 2.0 ** 25]])

    @tf.function
    def run(a):
        bits = boolean.a2b(tf_puma.share(a))
        # open the XOR sharing on the client (test only)
        return tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(*bits.pairs[0]), bits.pairs[1][1])

    np.testing.assert_array_equal(run(tf.constant(x)).numpy(), np.round(x * 2 ** 18).astype(
        np.int64))


def test_msb_and_b2a_on_edge_values(cluster, rng):
    values = np.concatenate([rng.uniform(-1e7, 1e7, size=2000), rng.normal(size=2000) * 1e-4,
                             [0.0, ULP, -ULP, 2.0 ** 26, -(2.0 ** 26), 1.0, -1.0]])
    with costs.Ledger() as ledger:
        bits = run_secure(compare.is_negative, values, dtype=tf.int64)
    np.testing.assert_array_equal(bits, (np.round(values * 2 ** 18) < 0).astype(np.int64))
    assert ledger.ops["less"].rounds == 10
    assert ledger.critical_rounds == 1 + 10 + 1
    # msb: 244 bits per value per party, a word per AND bit and block of 64 values (the rounds
    # run bit-sliced); b2a: one word per value and party.
    n = values.size
    assert sum((63, 62, 31, 31, 16, 15, 8, 7, 4, 3, 2, 1, 1)) == 244
    msb_words = 244 * ((n + 63) // 64)
    sent = ledger.ops["less"].bytes_sent
    assert sent[0] == sent[1] == sent[2] == 8 * (msb_words + n)


def test_coarse_less_is_exact_but_within_its_resolution_above_the_threshold(cluster, rng):
    """compare.coarse(18) reads ring bits 9..46: [x < t] is exact for x < t and x >= t + 2^-8
    over the whole fixed-point range (|x| <= 2^26, so |x - t| up to 2^27 fits); in
    [t, t + 2^-8) it may be either. 10 rounds, and 143 + 64 bits per value and party (against
    244 + 64)."""
    window = compare.coarse(18)
    assert (window.low_bit, window.width, window.rounds()) == (9, 38, 10)
    t = -4.0
    edge = 2.0 ** 26  # FixedPoint().max_abs: share() takes nothing larger
    x = np.concatenate([rng.uniform(-edge, edge, size=3000),
                        t + rng.uniform(0, 2.0 ** -8, size=200),        # the zone above t
                        t - rng.uniform(0, 2.0 ** -8, size=200) - ULP,
                        [t, t + ULP, t - ULP, t + 2.0 ** -8, edge, -edge, 2.0 ** 20]])
    with costs.Ledger() as ledger:
        got = run_secure(lambda a: compare.less(a, t, window), x, dtype=tf.int64).astype(bool)
    enc = np.round(x * 2 ** 18) - t * 2 ** 18
    exact = (enc < 0) | (enc >= 2 ** 10)
    np.testing.assert_array_equal(got[exact], enc[exact] < 0)
    assert 0 < got[~exact].mean() < 1  # the zone goes both ways (the dropped bits' carry)
    assert ledger.ops["less"].rounds == 10
    n = x.size
    segments = [37, 36] + [k for _, g, p in boolean.msb_plan(38) for k in (len(g), len(p)) if k]
    assert sum(segments) == 143
    msb_words = sum(segments) * ((n + 63) // 64)
    assert ledger.ops["less"].bytes_sent[0] == 8 * (msb_words + n)


def test_coarse_max_is_within_its_levels_resolution_of_the_max(cluster, rng):
    """reduce_max in the coarse window: at most ceil(log2 n) 2^-8 below the max, never above;
    near-ties (gaps below 2^-8) make it choose; a row spanning the fixed-point range."""
    n = 128
    x = rng.normal(size=(40, n)) * 3
    x[:20] = x[:20, :1] + rng.uniform(0, 2.0 ** -8, size=(20, n))  # near-ties
    x[-1] = np.linspace(-2.0 ** 26, 2.0 ** 26, n)
    got = run_secure(lambda a: compare.reduce_max(a, axis=-1, window=compare.coarse(18)), x)
    below = x.max(axis=-1) - got
    assert np.all(below >= -ULP) and np.all(below <= 7 * 2.0 ** -8)
    assert below.max() > 2.0 ** -12  # the near-ties do pick a lower one


def test_less_greater_with_shared_and_public(cluster, rng):
    x, y = rng.normal(size=500) * 10, rng.normal(size=500) * 10
    np.testing.assert_array_equal(run_secure(compare.less, x, y, dtype=tf.int64), x < y)
    np.testing.assert_array_equal(
        run_secure(lambda a: compare.greater(a, 1.5), x, dtype=tf.int64), x > 1.5)
    np.testing.assert_array_equal(
        run_secure(lambda a: compare.less(a, -2.0), x, dtype=tf.int64), x < -2.0)


def test_select_relu_maximum(cluster, rng):
    x, y = rng.normal(size=(6, 50)) * 5, rng.normal(size=(6, 50)) * 5
    check(run_secure(compare.relu, x), np.maximum(x, 0), ULP)
    check(run_secure(compare.maximum, x, y), np.maximum(x, y), ULP)
    check(run_secure(lambda a, b: compare.select(compare.less(a, b), a, 7.0), x, y),
          np.where(x < y, x, 7.0), ULP)


@pytest.mark.parametrize("n", [1, 2, 7, 128])
def test_reduce_max_along_axis(cluster, rng, n):
    x = rng.normal(size=(3, n)) * 20
    check(run_secure(lambda a: compare.reduce_max(a, axis=-1), x), x.max(axis=-1), ULP)
    x3 = rng.normal(size=(n, 2, 3))
    check(run_secure(lambda a: compare.reduce_max(a, axis=0, keepdims=True), x3),
          x3.max(axis=0, keepdims=True), ULP)


def test_equal_with_public_and_shared(cluster, rng):
    x = rng.integers(-3, 4, size=200).astype(np.float64)
    y = rng.integers(-3, 4, size=200).astype(np.float64)
    np.testing.assert_array_equal(run_secure(compare.equal, x, y, dtype=tf.int64), x == y)
    np.testing.assert_array_equal(
        run_secure(lambda a: compare.equal(a, 2.0), x, dtype=tf.int64), x == 2.0)


@pytest.mark.parametrize("n", [5, 16])
def test_argmax_one_hot(cluster, rng, n):
    x = rng.normal(size=(3, n))
    out = run_secure(lambda a: compare.argmax(a, axis=-1), x, dtype=tf.int64)
    np.testing.assert_array_equal(out, np.eye(n, dtype=np.int64)[x.argmax(-1)])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_argmax_on_any_axis_gives_the_first_of_tied_maxima(cluster, rng, axis):
    """argmax's one-hot row lies along the last axis whatever `axis` is reduced, argmax_index
    is tf.argmax; both pick the first of tied maxima wherever they sit (small integers: ties
    along every axis, 7, 4 and 5 long). The max tree used to pair i with i + n/2 and picked a
    later tied position in 6 of 140 rows here."""
    x = np.round(rng.normal(size=(7, 4, 5)) * 2, 0)
    one_hot = run_secure(lambda a: compare.argmax(a, axis=axis), x, dtype=tf.int64)
    np.testing.assert_array_equal(one_hot, np.eye(x.shape[axis], dtype=np.int64)[x.argmax(axis)])
    index = run_secure(lambda a: compare.argmax_index(a, axis=axis), x, dtype=tf.int64)
    np.testing.assert_array_equal(index, tf.argmax(x, axis=axis).numpy())


@pytest.mark.parametrize("n,axis", [(5, -1), (16, -1), (7, 0), (1000, -1)])
def test_argmax_index_is_tf_argmax(cluster, rng, n, axis):
    """The position as tf.argmax gives it (first one on ties), along the last or first axis;
    values up to +-2^20 and exact ties at the max."""
    shape = (n, 3) if axis == 0 else (3, n)
    x = np.round(rng.normal(size=shape) * 4, 1)
    x.flat[:: max(1, x.size // 4)] = 2.0 ** 20          # ties at the top (first one wins)
    x.flat[1] = -(2.0 ** 20)
    out = run_secure(lambda a: compare.argmax_index(a, axis=axis), x, dtype=tf.int64)
    np.testing.assert_array_equal(out, tf.argmax(x, axis=axis).numpy())
