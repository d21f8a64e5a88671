"""Linear RSS protocols on three real TF servers, against float64/numpy references.

Error bounds: TruncPr returns floor(x / 2^m) + e with e in {0, 1}, so a truncated product lies
strictly within 1 ulp (ulp = 2^-18) of the exact product of the encoded values, and encoding rounds
each input to within ulp/2. A fixed-point product of encoded a and b therefore differs from the
real a*b by at most |a| ulp/2 + |b| ulp/2 + ulp^2/4 + ulp; a length-k dot product by at most
k (|a|max + |b|max) ulp/2 + ulp (plus k ulp^2/4, far below the float64 noise of the reference).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_puma
from tf_puma import config, costs
from tf_puma.protocols import arithmetic
from tests.conftest import check, run_secure

ULP = 2.0 ** -18


def test_share_reveal_round_trip(cluster, rng):
    x = rng.uniform(-1e4, 1e4, size=(4, 5))
    check(run_secure(lambda a: a, x), x, ULP / 2)


def test_negative_and_wraparound_values(cluster):
    x = np.array([-3.5, -ULP, 0.0, ULP, 2.0 ** 25, -(2.0 ** 25)])
    check(run_secure(lambda a: a, x), x, 0)
    # Sums that wrap the ring mid-way still decode correctly.
    check(run_secure(lambda a, b: (a + b) - b, x, -x), x, 0)


def test_add_sub_neg_public(cluster, rng):
    x, y = rng.normal(size=(3, 4)) * 100, rng.normal(size=(3, 4)) * 100
    c = rng.normal(size=(4,))
    out = run_secure(lambda a, b: tf_puma.sub(tf_puma.add(-a, b), c) + 2.5, x, y)
    check(out, -x + y - c + 2.5, 2 * ULP)


def test_public_minus_and_reversed_sub_are_exact(cluster):
    """c - x (public c: the constant goes into share x_0 on both holders, the other shares are
    negated) and y - x: exact on exactly representable values up to the largest magnitude
    sharing accepts (2^26 with 18 fractional bits), differences beyond it included."""
    x = np.array([[-3.5, -ULP, 0.0], [ULP, 2.0 ** 26 - ULP, -(2.0 ** 26)]])
    y = np.array([[1.25, 7.0, -2.0 ** 26], [0.0, 2.0 ** 26, 2.0 ** 26]])
    c = np.array([0.5, -4.0, 3.0])
    check(run_secure(lambda a: 1.5 - a, x), 1.5 - x, 0)
    check(run_secure(lambda a: arithmetic.public_minus(c, a), x), c - x, 0)
    check(run_secure(lambda a, b: b - a, x, y), y - x, 0)


def test_mul_public_integer_is_exact_and_local(cluster, rng):
    x = rng.normal(size=(8, 8)) * 10
    with costs.Ledger() as ledger:
        out = run_secure(lambda a: tf_puma.mul_public(a, np.array([3, -2, 0, 1, 5, 7, -1, 2])), x)
    check(out, x * np.array([3, -2, 0, 1, 5, 7, -1, 2]), 8 * ULP)
    assert ledger.ops["mul_public"].rounds == 0
    assert ledger.ops["mul_public"].total_bytes() == 0


def test_mul_public_fraction_truncates(cluster, rng):
    x = rng.normal(size=(64,)) * 30
    out = run_secure(lambda a: a * 0.7071067811865476, x)
    check(out, x * 0.7071067811865476, (np.abs(x).max() + 1) * ULP / 2 + 2 * ULP)


@pytest.mark.parametrize("shape_x,shape_y", [((5, 7), (5, 7)), ((4, 1, 6), (3, 6)),
                                             ((1000,), (1000,))])
def test_mul_elementwise_with_broadcast(cluster, rng, shape_x, shape_y):
    x, y = rng.normal(size=shape_x) * 20, rng.normal(size=shape_y) * 20
    out = run_secure(lambda a, b: a * b, x, y)
    bound = (np.abs(x).max() + np.abs(y).max()) * ULP / 2 + 3 * ULP
    check(out, x * y, bound)


def test_mul_error_is_at_most_one_ulp_beyond_encoding(cluster, rng):
    # Inputs exactly representable: the only error is TruncPr's, strictly inside (-1, 1) ulp.
    x = np.round(rng.normal(size=5000) * 2 ** 20) / 2 ** 18
    y = np.round(rng.normal(size=5000) * 2 ** 18) / 2 ** 18
    err = run_secure(lambda a, b: a * b, x, y) - x * y
    assert np.abs(err).max() < ULP
    # floor plus a carry that is 1 with probability about (fraction of the dropped bits):
    # the mean error is close to 0 (no systematic bias).
    assert abs(err.mean()) < 0.05 * ULP


@pytest.mark.parametrize("m,k,n", [(2, 3, 4), (128, 768, 768), (128, 768, 3072)])
def test_matmul_real_sizes(cluster, rng, m, k, n):
    x = rng.normal(size=(m, k))
    w = rng.normal(size=(k, n)) * 0.05
    out = run_secure(lambda a, b: a @ b, x, w)
    check(out, x @ w, k * (np.abs(x).max() + np.abs(w).max()) * ULP / 2 + 2 * ULP)


def test_matmul_batched_and_transposed(cluster, rng):
    q, kk = rng.normal(size=(2, 12, 16, 8)), rng.normal(size=(2, 12, 16, 8))
    out = run_secure(lambda a, b: tf_puma.matmul(a, b, transpose_b=True), q, kk)
    check(out, q @ np.swapaxes(kk, -1, -2), 8 * 8 * ULP + 2 * ULP)
    x, w = rng.normal(size=(3, 5, 6)), rng.normal(size=(5, 4))
    out = run_secure(lambda a, b: tf_puma.matmul(a, b, transpose_a=True), x, w)
    check(out, np.swapaxes(x, -1, -2) @ w, 5 * 8 * ULP + 2 * ULP)


def test_trunc_standalone(cluster, rng):
    x = rng.uniform(-1000, 1000, size=(300,))

    def halve_in_ring(a):
        return tf_puma.trunc(a, 1)  # value / 2, as fixed point at the same scale

    check(run_secure(halve_in_ring, x), x / 2, ULP)


def test_integer_products_reshare_without_truncation(cluster, rng):
    x, y = rng.integers(-1000, 1000, size=(4, 6)), rng.integers(-1000, 1000, size=(6, 3))

    @tf.function
    def run(a, b):
        sa, sb = tf_puma.share(a, frac_bits=0), tf_puma.share(b, frac_bits=0)
        return tf_puma.reveal(sa @ sb, dtype=tf.int64), tf_puma.reveal(sa * sa, dtype=tf.int64)

    prod, sq = run(tf.constant(x), tf.constant(y))
    np.testing.assert_array_equal(prod.numpy(), x @ y)
    np.testing.assert_array_equal(sq.numpy(), x * x)


def test_mixed_scales_align(cluster, rng):
    x, y = rng.integers(-50, 50, size=(7,)), rng.normal(size=(7,))

    @tf.function
    def run(a, b):
        return tf_puma.reveal(tf_puma.share(a, frac_bits=0) + tf_puma.share(b), tf.float64)

    check(run(tf.constant(x), tf.constant(y)).numpy(), x + y, ULP / 2)


def test_costs_match_declared_table(cluster, rng):
    m, k, n = 16, 32, 24

    @tf.function
    def run(a, b):
        sa, sb = tf_puma.share(a), tf_puma.share(b)
        return tf_puma.reveal(sa @ sb)

    with costs.Ledger() as ledger:
        run.get_concrete_function(tf.TensorSpec([m, k], tf.float64),
                                  tf.TensorSpec([k, n], tf.float64))
    row = ledger.ops["matmul"]
    assert row.calls == 1 and row.rounds == 2
    # per output A and B send 2 ring elements each, the dealer 3 (its share of the product to
    # A and B, B's share of r / 2^18) and 19 bits (B's share of r's msb, of which B uses 19)
    dealt = 8 * ((m * n * 19 + 63) // 64)
    assert sorted(row.bytes_sent.values()) == [2 * 8 * m * n, 2 * 8 * m * n,
                                               3 * 8 * m * n + dealt]
    assert row.total_bytes() == 7 * 8 * m * n + dealt
    assert ledger.ops["reveal"].total_bytes() == 2 * 8 * m * n
    # input sharing: 2 ring elements per value + 4 keys of 16 bytes, all from the client
    assert ledger.ops["share_input"].bytes_sent == {"client": 2 * 8 * (m * k + k * n) + 4 * 2 * 16}
    assert ledger.critical_rounds == 1 + 2 + 1
    assert "matmul" in ledger.table()


def test_three_round_truncation_sends_less(cluster, rng):
    """Config.trunc_rounds = 3: a fixed-point matmul within the same ulp bound, in 3 rounds;
    A sends n + n/64 words (its message and c's msb bits), B 2n, the dealer 2n and 19 bits per
    value: 5n + 19n/64 + n/64 in all, against 7n + 19n/64."""
    m, k, n = 16, 32, 24
    a, b = rng.uniform(-4, 4, size=(m, k)), rng.uniform(-4, 4, size=(k, n))

    @tf.function
    def run(x, y):
        with config.use(config.Config(trunc_rounds=3)):
            return tf_puma.reveal(tf_puma.share(x) @ tf_puma.share(y), tf.float64)

    with costs.Ledger() as ledger:
        out = run(tf.constant(a), tf.constant(b)).numpy()
    a_enc, b_enc = np.round(a / ULP) * ULP, np.round(b / ULP) * ULP
    check(out, a_enc @ b_enc, ULP)  # TruncPr: floor + {0, 1} of the encoded inputs' product
    row = ledger.ops["matmul"]
    assert row.rounds == 3 and ledger.critical_rounds == 1 + 3 + 1
    values = m * n
    dealt, msb = 8 * ((values * 19 + 63) // 64), 8 * ((values + 63) // 64)
    assert sorted(row.bytes_sent.values()) == sorted([8 * values + msb, 2 * 8 * values,
                                                      2 * 8 * values + dealt])


def test_protocols_require_graph_mode(cluster):
    with pytest.raises(RuntimeError, match="tf.function"):
        tf_puma.share(tf.constant([1.0]))


def test_mul_sum_with_addend_costs_one_product(cluster, rng):
    from tf_puma.protocols import arithmetic  # noqa: PLC0415
    a, b, c, d = (rng.uniform(-8, 8, size=(5, 6)) for _ in range(4))
    e = rng.uniform(-8, 8, size=(6,))

    def fused(x1, y1, x2, y2, z):
        # z read with 36 fractional bits: the scale of the products, added before truncation
        z36 = z.map_local(lambda t: t * 2 ** 18, frac_bits=36)
        return arithmetic.mul_sum([(x1, y1), (x2, y2)], addend=z36)

    with costs.Ledger() as ledger:
        out = run_secure(fused, a, b, c, d, e)
    # each product within |x| ulp/2 + |y| ulp/2 + ulp of the real one; one truncation in all
    check(out, a * b + c * d + e, 2 * 8 * ULP + ULP + ULP / 2)
    row = ledger.ops["mul_sum"]
    # one product's traffic: 7 ring elements and 19 bits per value (test_costs_match_...)
    assert row.calls == 1 and row.rounds == 2
    assert row.total_bytes() == 7 * 8 * 30 + 8 * ((30 * 19 + 63) // 64)


def test_mul_sum_rejects_mixed_scales(cluster):
    from tf_puma.protocols import arithmetic  # noqa: PLC0415

    @tf.function
    def run(a):
        x, i = tf_puma.share(a), tf_puma.share(a, frac_bits=0)
        return tf_puma.reveal(arithmetic.mul_sum([(x, x), (i, x)]))

    with pytest.raises(ValueError, match="different fractional bits"):
        run.get_concrete_function(tf.TensorSpec([3], tf.float64))
