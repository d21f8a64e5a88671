"""Per-party weight bundles: the model owner splits each weight into replicated shares and writes
`OUT/party{0,1,2}/`; party i's directory holds only (w_i, w_{i+1}) of every weight.

Layout of one party's directory: `shares.bin` (int64 little-endian ring elements) and `index.txt`
("#bundle ID", then one line per weight: "name offset_own offset_next dim0 dim1 ..."). Parties read their own
directory with the PumaLoadShare op (`tf-puma party --shares DIR`), once, and keep it resident.
"""

from __future__ import annotations

import os
import secrets
from typing import Mapping

import numpy as np
import tensorflow as tf

from tf_puma import _ops, runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.fixedpoint import FixedPoint
from tf_puma.sharing import Shared

SHARES_ENV = "TF_PUMA_SHARES"


def _uniform_ring(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform Z_2^64 elements from the operating system's CSPRNG."""
    n = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(secrets.token_bytes(8 * n), dtype="<i8").reshape(shape).copy()


def new_bundle_id() -> str:
    """A random bundle id: names one conversion without saying anything about its weights."""
    return f"b-{secrets.token_hex(8)}"


def write_bundles(weights: Mapping[str, np.ndarray], out_dir: str, bundle_id: str,
                  fxp: FixedPoint = FixedPoint()) -> list[str]:
    """Encodes and secret-shares every weight; returns the three party directories.

    `bundle_id` names the bundle (index.txt's first line "#bundle ID"), so one party can hold
    the bundles of several models side by side under its --shares directory. It must not be
    derived from the weights (use `new_bundle_id`): the client's secure model carries it.

    Writes into a temporary name first and renames, so a failure leaves no half-written bundle.
    """
    if not bundle_id or any(ch.isspace() for ch in bundle_id):
        raise ValueError(f"a bundle id is non-empty without spaces, got {bundle_id!r}")
    for name in weights:
        if not name or any(ch.isspace() for ch in name):
            raise ValueError(f"weight names must be non-empty without spaces, got {name!r}")
    dirs = [os.path.join(out_dir, f"party{i}") for i in range(NUM_PARTIES)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    tmp = [open(os.path.join(d, "shares.bin.tmp"), "wb") for d in dirs]
    index: list[list[str]] = [[] for _ in range(NUM_PARTIES)]
    offsets = [0] * NUM_PARTIES
    try:
        for name, value in weights.items():
            enc = fxp.encode_np(np.asarray(value, dtype=np.float64))
            x0, x1 = _uniform_ring(enc.shape), _uniform_ring(enc.shape)
            x2 = (enc.view(np.uint64) - x0.view(np.uint64) - x1.view(np.uint64)).view(np.int64)
            shares = [x0, x1, x2]
            for i in range(NUM_PARTIES):
                own, nxt = shares[i], shares[(i + 1) % NUM_PARTIES]
                index[i].append(" ".join([name, str(offsets[i]), str(offsets[i] + own.nbytes),
                                          *map(str, enc.shape)]))
                tmp[i].write(own.astype("<i8").tobytes())
                tmp[i].write(nxt.astype("<i8").tobytes())
                offsets[i] += 2 * own.nbytes
    finally:
        for fh in tmp:
            fh.close()
    for i, d in enumerate(dirs):
        with open(os.path.join(d, "index.txt.tmp"), "w", encoding="utf-8") as fh:
            fh.write("\n".join([f"#bundle {bundle_id}"] + index[i]) + "\n")
        os.replace(os.path.join(d, "shares.bin.tmp"), os.path.join(d, "shares.bin"))
        os.replace(os.path.join(d, "index.txt.tmp"), os.path.join(d, "index.txt"))
    return dirs


def party_weight(name: str, shape, bundle_id: str, frac_bits: int | None = None) -> Shared:
    """The shared weight `name` of bundle `bundle_id`, loaded by each party from its own
    bundle (no client traffic)."""
    runtime.require_graph()
    ops = _ops.load()
    shape = tf.TensorShape(shape)
    pairs = []
    for i in range(NUM_PARTIES):
        with tf.device(runtime.device(i)):
            own, nxt = ops.puma_load_share(weight=name, shape=shape, bundle=bundle_id)
            pairs.append((own, nxt))
    return Shared(pairs, FixedPoint().frac_bits if frac_bits is None else frac_bits, 0)
