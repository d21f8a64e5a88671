"""Fixed-point codec: round trip, range checks, ring wrap-around of negatives."""

import numpy as np
import pytest
import tensorflow as tf

from tf_puma.fixedpoint import FixedPoint


@pytest.mark.parametrize("frac_bits", [12, 18, 24])
def test_round_trip_error_is_half_ulp(frac_bits):
    fxp = FixedPoint(frac_bits)
    x = np.random.default_rng(0).uniform(-1000, 1000, size=10_000)
    back = fxp.decode_np(fxp.encode_np(x))
    assert np.max(np.abs(back - x)) <= fxp.ulp / 2 + 1e-12


def test_negative_values_are_twos_complement():
    fxp = FixedPoint(18)
    enc = fxp.encode_np(np.array([-1.0, -0.5]))
    assert enc.tolist() == [-(2 ** 18), -(2 ** 17)]
    assert (enc.view(np.uint64) == np.array([2 ** 64 - 2 ** 18, 2 ** 64 - 2 ** 17],
                                            dtype=np.uint64)).all()


def test_range_is_checked_in_numpy_and_tf():
    fxp = FixedPoint(18)
    assert fxp.max_abs == 2.0 ** 26
    with pytest.raises(ValueError, match="outside the fixed-point range"):
        fxp.encode_np(np.array([2.0 ** 27]))
    with pytest.raises(ValueError, match="NaN"):
        fxp.encode_np(np.array([np.nan]))
    # the check reads max and min: the negative end, infinities and a NaN among valid values
    with pytest.raises(ValueError, match=r"value 1\.342e\+08 is outside"):
        fxp.encode_np(np.array([1.0, -(2.0 ** 27)]))
    for bad in ([-np.inf, 0.0], [np.inf], [0.5, np.nan, 2.0]):
        with pytest.raises(ValueError, match="NaN or infinity"):
            fxp.encode_np(np.array(bad))
    assert fxp.encode_np(np.array([2.0 ** 26, -(2.0 ** 26)])).tolist() == [2 ** 44, -(2 ** 44)]
    assert fxp.encode_np(np.float32(0.25)) == 2 ** 16 and fxp.encode_np(np.zeros((0, 3))).shape \
        == (0, 3)
    # ties round half to even, as np.round
    assert fxp.encode_np(np.array([0.5, 1.5, 2.5, -0.5]) * fxp.ulp).tolist() == [0, 2, 2, 0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the fixed-point range"):
        fxp.encode(tf.constant([1.0, -(2.0 ** 27)]))
    ok = fxp.encode(tf.constant([1.5, -2.25], tf.float64)).numpy()
    assert ok.tolist() == [int(1.5 * 2 ** 18), int(-2.25 * 2 ** 18)]


def test_bad_frac_bits():
    with pytest.raises(ValueError, match="frac_bits"):
        FixedPoint(40)
