"""Nonlinear protocols against float64 references on realistic ranges, bounds written down."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import tf_puma
from tf_puma import costs
from tf_puma.protocols import approx, compare, nn
from tests.conftest import check, run_secure

ULP = 2.0 ** -18
erf = np.vectorize(math.erf)


def test_exp_on_softmax_range(cluster):
    x = np.concatenate([np.linspace(-14, 0, 4001), [-14.5, -20.0, -300.0, -4096.0]])
    out = run_secure(approx.exp, x)
    ref = np.where(x < -14, 0.0, np.exp(x))
    err = check(out, ref, 1e-4)  # 5.8e-5 the cubic, the rest fixed point
    print(f"exp max abs error {err:.2e}")


@pytest.mark.parametrize("n,bound", [(5, 9e-3), (6, 4.5e-3), (7, 2.5e-3), (8, 2.2e-3)])
def test_exp_puma_variant_errors(cluster, n, bound):
    # PUMA's (1 + x/2^n)^(2^n): approximation 0.27/2^n plus fixed-point growth 2^n ulp.
    x = np.linspace(-14, 0, 2001)
    check(run_secure(lambda a: approx.exp(a, method="puma", n=n), x), np.exp(x), bound)


def test_gelu_erf_and_tanh_forms(cluster):
    x = np.linspace(-8, 8, 4001)
    out = run_secure(approx.gelu, x)
    # 1.3e-4 from the polynomial, the rest fixed point; the bound is 0.015.
    check(out, 0.5 * x * (1 + erf(x / np.sqrt(2))), 2.5e-4)
    gelu_tanh = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    check(out, gelu_tanh, 2.5e-4 + 1e-3)  # the two GeLU forms differ by < 1e-3


def test_gelu_puma_pieces_match_their_float_error(cluster):
    x = np.linspace(-8, 8, 2001)
    out = run_secure(lambda a: approx.gelu(a, method="puma"), x)
    check(out, 0.5 * x * (1 + erf(x / np.sqrt(2))), 0.021)  # 0.0199 in float at x = 3


def test_silu(cluster):
    x = np.linspace(-10, 10, 4001)
    check(run_secure(approx.silu, x), x / (1 + np.exp(-x)), 0.012)


def test_silu_puma_pieces_match_their_float_error(cluster):
    """PUMA's pieces: 7.2e-2 in float at x = 4 (the degree-6 piece meets x there); every
    piece's boundary (-8, -4, 4) and both sides of it are in the grid."""
    x = np.concatenate([np.linspace(-12, 12, 2401), [-8.0, -4.0, 4.0, -8.001, -3.999, 4.001]])
    err = check(run_secure(lambda a: approx.silu(a, method="puma"), x), x / (1 + np.exp(-x)),
                0.073)
    assert err > 0.07  # the documented error is reached: the pieces are PUMA's, not "even"


@pytest.mark.parametrize("protocol,methods", [(approx.exp, "'cubic' or 'puma'"),
                                              (approx.gelu, "'even' or 'puma'"),
                                              (approx.silu, "'even' or 'puma'")])
def test_an_unknown_method_is_refused_naming_the_known_ones(cluster, protocol, methods):
    name = protocol.__name__
    with pytest.raises(ValueError, match=f"{name} method must be {methods}, got 'PUMA'"):
        run_secure(lambda a: protocol(a, method="PUMA"), np.zeros(4))


def test_gelu_rounds_and_depth(cluster):
    @tf.function
    def run(a):
        return tf_puma.reveal(approx.gelu(tf_puma.share(a)))

    with costs.Ledger() as ledger:
        run.get_concrete_function(tf.TensorSpec([16], tf.float64))
    assert ledger.critical_rounds == 1 + 11 + 1


def encoded(x: np.ndarray) -> np.ndarray:
    """The fixed-point value the parties actually hold for x (small inputs lose digits)."""
    return np.round(x * 2 ** 18) / 2 ** 18


def test_reciprocal_relative(cluster):
    # Documented: relative error <= 2e-6 plus one ulp over [2^-7, 2^14] (3 Newton steps);
    # measured 0.97 of that. Bound: 2.5e-6 relative + 1.25 ulp (one Newton step fewer: 1.2e-5).
    x = encoded(np.concatenate([np.geomspace(2 ** -7, 2 ** 14, 3000), [2 ** -7, 2 ** 14]]))
    out = run_secure(approx.reciprocal, x)
    assert np.max(np.abs(out - 1 / x) / (2.5e-6 / x + 1.25 * ULP)) <= 1


def test_octave_mix_gives_each_values_octave_exactly(cluster):
    """reciprocal's and rsqrt's octave: the telescoped mix v_K + sum_k b_k (v_k - v_(k+1)) with
    v_j = j must be exactly floor(log2 x), clamped to [-10, 14], at every power of two of the
    range, halfway between, just below each, and outside the range on both sides."""
    powers = 2.0 ** np.arange(-10, 15)
    x = np.concatenate([[2.0 ** -14, 2.0 ** -11, 1.5 * 2.0 ** -11], powers, 1.5 * powers[:-1],
                        powers[1:] - 2.0 ** -18, [2.0 ** 15, 1.5 * 2.0 ** 16]])

    def octave(a):
        js, bits = approx._octave_bits(a, 2.0 ** -10, 2.0 ** 14)  # noqa: SLF001
        return approx._octave_mix(a, bits, [float(j) for j in js])  # noqa: SLF001

    got = run_secure(octave, x)
    np.testing.assert_array_equal(got, np.clip(np.floor(np.log2(x)), -10, 14))


def test_rsqrt_relative(cluster):
    # Documented range [2^-10, 2^14]; measured 0.92 of (2e-6 relative + 1 ulp).
    x = encoded(np.concatenate([np.geomspace(2 ** -10, 2 ** 14, 3000), [2 ** -10, 2 ** 14]]))
    out = run_secure(approx.rsqrt, x)
    ref = 1 / np.sqrt(x)
    assert np.max(np.abs(out - ref) / (2.5e-6 * ref + 1.25 * ULP)) <= 1


def test_rsqrt_relative_wide(cluster):
    # RMSNorm's range [2^-10, 2^24] (the 2^(-j/2) mix at 28 fractional bits, 2^-j exact):
    # same bound as the standard range.
    x = encoded(np.concatenate([np.geomspace(2 ** -10, 2 ** 24, 3000), [2 ** -10, 2 ** 24]]))
    out = run_secure(lambda a: approx.rsqrt(a, hi=2.0 ** 24), x)
    ref = 1 / np.sqrt(x)
    assert np.max(np.abs(out - ref) / (2.5e-6 * ref + 1.25 * ULP)) <= 1


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_softmax_rows_of_128(cluster, rng):
    x = rng.uniform(-20, 20, size=(4, 128))
    x[1] = rng.normal(size=128)  # flat row: many comparable terms
    # near-ties within the max tree's coarse resolution (2^-8): its max may land below the
    # true one, so exp's arguments reach above 0 and the row sum above n
    x[2] = 3.0 + rng.uniform(0, 2.0 ** -8, size=128)
    check(run_secure(nn.softmax, x), np_softmax(x), 3e-4)  # measured 1.4e-4


def test_softmax_of_spread_rows_is_not_biased_to_the_top(cluster, rng):
    """Rows of normal logits whose spread puts many entries 3-8 below the max: exp's cubic
    (c3 fitted, approx.EXP_CUBIC) is too small or too large there by no more than near the max.
    With Taylor's c3 = 1/6, e^x came out ~(2/3)(x/16)^4 too small there and softmax gave their
    weight to the top entries (2.3e-3 on these rows in float)."""
    x = rng.normal(size=(24, 128)) * np.repeat([2.0, 3.0, 5.0], 8)[:, None]
    err = check(run_secure(nn.softmax, x), np_softmax(x), 3.5e-4)  # measured 2.1e-4
    print(f"softmax of spread rows: max abs error {err:.2e}")


def test_softmax_with_mask(cluster, rng):
    x = rng.normal(size=(2, 3, 16)) * 3
    mask = np.ones((1, 1, 16))
    mask[..., 11:] = 0
    ref = np_softmax(np.where(mask > 0, x, -np.inf))
    check(run_secure(lambda a: nn.softmax(a, mask=mask), x), ref, 6e-4)  # measured 3.4e-4


@pytest.mark.parametrize("width", [384, 768])
def test_layer_norm_realistic(cluster, rng, width):
    rows = 8
    x = rng.normal(size=(rows, width)) * rng.uniform(0.1, 20, size=(rows, 1)) + rng.uniform(
        -5, 5, size=(rows, 1))
    gamma, beta = rng.normal(size=width) * 0.5 + 1, rng.normal(size=width) * 0.1
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12) * gamma \
        + beta
    out = run_secure(lambda a, g, b: nn.layer_norm(a, g, b, eps=1e-12), x, gamma, beta)
    # 1/n and 1/sqrt(var) carry ~24 significant bits; the rest is the products' last places
    # measured 1.9e-5 (384) and 1.5e-5 (768) on these rows (other draws of such rows, std up
    # to 20 and mean +-5: up to 8.7e-5)
    print(f"layer_norm width {width}: max abs error {check(out, ref, 5e-5):.1e}")


def test_rms_norm(cluster, rng):
    x = rng.normal(size=(4, 576)) * 3
    gamma = rng.normal(size=576) * 0.2 + 1
    ref = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * gamma
    err = check(run_secure(lambda a, g: nn.rms_norm(a, g, eps=1e-5), x, gamma), ref,
                3e-5)  # measured 9.5e-6
    print(f"rms_norm: max abs error {err:.1e}")


@pytest.mark.parametrize("n", [576, 4096])
def test_rms_norm_with_massive_activations(cluster, rng, n):
    """SmolLM2's residual stream: mean squares from 6e-3 to 9e5 and single values of 2.3e4
    (x^2 at 36 fractional bits would leave the ring). Rows at both ends of [2^-10, 2^24] and
    one just around the switch from direct to scaled squares (sum 2^24). Widths: SmolLM2's and
    LLaMA-7B's (a sum of 4096 squares up to 2^36 keeps 23 fractional bits, not 26)."""
    x = rng.normal(size=(6, n))
    x[0] *= 0.035                                       # mean square ~1.2e-3 (~2^-9.7)
    x[1, :3] = [22552.0, -9000.0, 3000.0]               # SmolLM2's outliers, rest ~1
    x[2] *= 4096.0 / np.sqrt((x[2] ** 2).mean())        # mean square 2^24, the top
    x[3] *= np.sqrt(2.0 ** 24 / n) / np.sqrt((x[3] ** 2).mean()) * 0.999  # sum just below
    x[4] = x[3] * 1.002                                  # ... and just above 2^24
    x[5, :] = 0.0
    x[5, 7] = 8192.0 * 1.5                               # one value alone, x^2 * 2^36 > 2^62
    gamma = rng.normal(size=n) * 0.2 + 1
    ref = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * gamma
    out = run_secure(lambda a, g: nn.rms_norm(a, g, eps=1e-5), x, gamma)
    # measured over 8 runs (576): <= 7.0e-5 at the bottom of the range (x itself keeps ~13
    # significant bits there), <= 6.2e-5 on the outlier row (outputs of 24: 2.6e-6 relative),
    # <= 3.5e-5 elsewhere; 4096 over 5 runs: <= 7.7e-5 at the bottom, <= 3.6e-5 elsewhere
    err_low = check(out[:1], ref[:1], 1e-4)
    err = check(out[1:], ref[1:], 8e-5)
    print(f"rms_norm wide: max abs error {err_low:.1e} (mean square 2^-9.7), {err:.1e}")


@pytest.mark.parametrize("narrow", [True, False])
def test_embedding_is_exact_lookup(cluster, rng, narrow):
    """table[ids], exactly, mod 2^32 then lifted (narrow) or in Z_2^64; the narrow table's rows
    reach its range limit 2^(30 - 18) = 4,096 less one ulp on both sides, and zero."""
    table = rng.normal(size=(50, 8))
    limit = 2.0 ** (compare.LIFT_RANGE_LOG2 - 18) - ULP
    table[0], table[1], table[2] = limit, -limit, 0.0
    table[3] = rng.uniform(-limit, limit, size=8)
    ids = np.array([[3, 0, 49, 7], [1, 2, 0, 1]])

    @tf.function
    def run(t, i):
        return tf_puma.reveal(nn.embedding(i, tf_puma.share(t), narrow=narrow), tf.float64)

    with costs.Ledger() as ledger:
        run.get_concrete_function(tf.TensorSpec(table.shape, tf.float64),
                                  tf.TensorSpec(ids.shape, tf.int64))
    # share, then the product (1) and the lift's comparison (5 msb + 2 b2a), then reveal
    assert ledger.critical_rounds == 1 + (8 if narrow else 1) + 1
    # the client sends x_2 of the table (8 bytes a value) and of the one-hot rows (4 bytes a
    # value when narrow: only their product mod 2^32 is used) to two parties, and two keys each
    one_hot_bytes = 4 if narrow else 8
    assert ledger.bytes_by_sender()["client"] == 2 * (table.size * 8 + ids.size * 50 *
                                                      one_hot_bytes) + 2 * 64
    for _ in range(3):  # fresh shares each call: the lift's carries differ
        out = run(tf.constant(table), tf.constant(ids)).numpy()
        np.testing.assert_array_equal(np.round(out * 2 ** 18),
                                      np.round(table[ids] * 2 ** 18))
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the embedding table"):
        run(tf.constant(table), tf.constant([[50, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="ring_bits must be 32 or 64"):
        tf_puma.share(np.zeros(2), ring_bits=16)


def test_sigmoid_and_tanh(cluster):
    x = np.linspace(-12, 12, 2001)
    check(run_secure(nn.sigmoid, x), 1 / (1 + np.exp(-x)), 5e-4)
    check(run_secure(nn.tanh, x), np.tanh(x), 1e-3)


@pytest.mark.parametrize("name,shape,bits", [("gelu", [128, 64], 1441), ("exp", [128, 64], 1229)])
def test_activation_traffic_per_value(cluster, name, shape, bits):
    # The busiest party's bits per value (benchmarks/protocols.py's column): GeLU's split
    # polynomial and single selection, exp's truncation-free Taylor polynomial, their sign
    # tests in the coarse window and TruncPr's packed msb share (1704 and 1396 with exact
    # sign tests and two dealt words per truncated value). Deterministic.
    @tf.function
    def run(a):
        return tf_puma.reveal(getattr(approx, name)(tf_puma.share(a)))

    with costs.Ledger() as ledger:
        run.get_concrete_function(tf.TensorSpec(shape, tf.float64))
    sent = ledger.bytes_by_sender(exclude=("share_input", "reveal", "prss_setup"))
    assert 8 * max(sent.get(p, 0) for p in range(3)) / np.prod(shape) <= bits
