"""Fixed-point encoding of reals into the ring Z_2^64 (int64 tensors, two's complement).

A real v is stored as round(v * 2^f) mod 2^64, f fractional bits (18 by default, PUMA's setting).
Products carry 2f fractional bits until truncated; truncation (TruncPr) needs |value| < 2^62 in
ring units, so a product of two encoded values is exact only while |a * b| < 2^(62 - 2f). Encoding
therefore accepts |v| <= 2^(62 - 2f) (about 6.7e7 at f = 18) and rejects anything else.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

RING_BITS = 64


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    """The fixed-point format: `frac_bits` fractional bits in Z_2^64."""

    frac_bits: int = 18

    def __post_init__(self) -> None:
        if not 1 <= self.frac_bits <= 28:
            raise ValueError(f"frac_bits must be in [1, 28] for a 64-bit ring, got {self.frac_bits}")

    @property
    def scale(self) -> float:
        return float(2 ** self.frac_bits)

    @property
    def max_abs(self) -> float:
        """Largest magnitude accepted by encode: 2^(62 - 2f)."""
        return float(2 ** (62 - 2 * self.frac_bits))

    @property
    def ulp(self) -> float:
        """Value of one unit in the last place, 2^-f."""
        return 2.0 ** -self.frac_bits

    # -- numpy (tests, references) ------------------------------------------------------------
    def encode_np(self, x: np.ndarray, frac_bits: int | None = None) -> np.ndarray:
        """round(x 2^f) as int64, after the range check. One scaled float64 temporary, rounded
        in place (an owner's bundles encode 10^8 weights this way)."""
        f = self.frac_bits if frac_bits is None else frac_bits
        x = np.asarray(x, dtype=np.float64)
        self._check_range_np(x)
        scaled = np.multiply(x, 2.0 ** f, out=np.empty_like(x))  # an array even when 0-d
        np.rint(scaled, out=scaled)  # half to even, as np.round
        return scaled.astype(np.int64)

    def decode_np(self, v: np.ndarray, frac_bits: int | None = None) -> np.ndarray:
        f = self.frac_bits if frac_bits is None else frac_bits
        return np.asarray(v, dtype=np.int64).astype(np.float64) / 2.0 ** f

    def _check_range_np(self, x: np.ndarray) -> None:
        """Two read-only passes (max, min; a NaN propagates through both) in the common case."""
        if not x.size:
            return
        top = max(float(np.max(x)), -float(np.min(x)))
        if top <= self.max_abs:  # False for NaN and infinity
            return
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode NaN or infinity in fixed point")
        raise ValueError(
            f"value {top:.4g} is outside the fixed-point range "
            f"|x| <= {self.max_abs:.4g} (frac_bits={self.frac_bits}); scale the input down "
            "or use fewer fractional bits")

    # -- TensorFlow (graph code on the client) ------------------------------------------------
    def encode(self, x: tf.Tensor, name: str = "input") -> tf.Tensor:
        """float tensor -> int64 ring elements; fails at run time if |x| > max_abs or not finite."""
        x64 = tf.cast(x, tf.float64)
        ok = tf.reduce_all(tf.math.is_finite(x64)) & tf.reduce_all(tf.abs(x64) <= self.max_abs)
        check = tf.debugging.Assert(
            ok, [f"tf-puma: {name} has a value outside the fixed-point range |x| <= "
                 f"{self.max_abs:.4g} (frac_bits={self.frac_bits}) or a NaN/inf; max |x| =",
                 tf.reduce_max(tf.abs(x64))], name="check_fixed_point_range")
        with tf.control_dependencies([check]):
            return tf.cast(tf.round(x64 * self.scale), tf.int64)

    def decode(self, v: tf.Tensor, dtype: tf.DType = tf.float32,
               frac_bits: int | None = None) -> tf.Tensor:
        f = self.frac_bits if frac_bits is None else frac_bits
        return tf.cast(tf.cast(v, tf.float64) / float(2 ** f), dtype)
