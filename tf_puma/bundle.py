"""Per-party weight bundles: the model owner splits each weight into replicated shares and writes
`OUT/party{0,1,2}/`; party i's directory holds only (w_i, w_{i+1}) of every weight.

Layout of one party's directory: `shares.bin` (int64 little-endian ring elements) and `index.txt`
(a header "#bundle ID", "#party I", "#frac_bits F", then one line per weight: "name offset_own
offset_next dim0 dim1 ..."). Parties read their own directory with the PumaLoadShare op
(`tf-puma party --shares DIR --task I`), once, and keep it resident; a party refuses, at start,
a bundle whose header names another party.
"""

from __future__ import annotations

import os
import secrets
from typing import Mapping

import numpy as np
import tensorflow as tf

from tf_puma import _ops, config, runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.fixedpoint import FixedPoint
from tf_puma.sharing import Shared

# Ring elements encoded and secret-shared at a time by write_bundles (32 MiB per array).
CHUNK_VALUES = 1 << 22


def _uniform_ring(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform Z_2^64 elements: AES-128-CTR (PumaPrgUniform, AES-NI) under a fresh key from the
    operating system's CSPRNG (PumaNewKey, getrandom), one key per call, so no keystream is
    ever used twice. ~10x faster than reading os.urandom for a model's shares."""
    ops = _ops.load()
    with tf.device("/CPU:0"):
        return ops.puma_prg_uniform(ops.puma_new_key(), list(shape), stream=0).numpy()


def new_bundle_id() -> str:
    """A random bundle id: names one conversion without saying anything about its weights."""
    return f"b-{secrets.token_hex(8)}"


def write_bundles(weights: Mapping[str, np.ndarray], out_dir: str, bundle_id: str,
                  fxp: FixedPoint | None = None) -> list[str]:
    """Encodes and secret-shares every weight; returns the three party directories.

    `bundle_id` names the bundle (index.txt's first line "#bundle ID"), so one party can hold
    the bundles of several models side by side under its --shares directory. It must not be
    derived from the weights (use `new_bundle_id`): the client's secure model carries it.

    Writes into a temporary name first and renames, so a failure leaves no half-written bundle.
    """
    fxp = fxp or config.current().fxp
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
            flat = np.asarray(value).reshape(-1)  # a view of a contiguous weight
            nbytes = 8 * flat.size
            for i in range(NUM_PARTIES):
                index[i].append(" ".join([name, str(offsets[i]), str(offsets[i] + nbytes),
                                          *map(str, np.shape(value))]))
            # Encoded and shared CHUNK_VALUES at a time: a weight of any size costs a few
            # chunk-sized arrays, not five copies of itself. Party i's own share goes to
            # [offset, offset + nbytes), its next share to the nbytes after that.
            for start in range(0, flat.size, CHUNK_VALUES):
                enc = fxp.encode_np(np.asarray(flat[start:start + CHUNK_VALUES], np.float64))
                x0, x1 = _uniform_ring(enc.shape), _uniform_ring(enc.shape)
                with np.errstate(over="ignore"):  # ring arithmetic wraps by design
                    x2 = (enc.view(np.uint64) - x0.view(np.uint64)
                          - x1.view(np.uint64)).view(np.int64)
                shares = [x0, x1, x2]
                for i in range(NUM_PARTIES):
                    tmp[i].seek(offsets[i] + 8 * start)
                    tmp[i].write(memoryview(np.ascontiguousarray(shares[i], dtype="<i8")))
                    tmp[i].seek(offsets[i] + nbytes + 8 * start)
                    tmp[i].write(memoryview(np.ascontiguousarray(
                        shares[(i + 1) % NUM_PARTIES], dtype="<i8")))
            offsets = [offset + 2 * nbytes for offset in offsets]
    finally:
        for fh in tmp:
            fh.close()
    for i, d in enumerate(dirs):
        with open(os.path.join(d, "index.txt.tmp"), "w", encoding="utf-8") as fh:
            header = [f"#bundle {bundle_id}", f"#party {i}", f"#frac_bits {fxp.frac_bits}"]
            fh.write("\n".join(header + index[i]) + "\n")
        os.replace(os.path.join(d, "shares.bin.tmp"), os.path.join(d, "shares.bin"))
        os.replace(os.path.join(d, "index.txt.tmp"), os.path.join(d, "index.txt"))
    return dirs


def party_weight(name: str, shape, bundle_id: str, frac_bits: int | None = None) -> Shared:
    """The shared weight `name` of bundle `bundle_id`, loaded by each party from its own
    bundle (no client traffic); `frac_bits` is the bundle's encoding (checked by the party)."""
    runtime.require_graph()
    ops = _ops.load()
    shape = tf.TensorShape(shape)
    frac = config.current().fxp.frac_bits if frac_bits is None else frac_bits
    pairs = []
    for i in range(NUM_PARTIES):
        with tf.device(runtime.device(i)):
            own, nxt = ops.puma_load_share(weight=name, shape=shape, bundle=bundle_id, party=i,
                                           frac_bits=frac)
            pairs.append((own, nxt))
    return Shared(pairs, frac, 0)


class BundleError(ValueError):
    """A party's share directory is empty, malformed or holds another party's shares."""


def read_header(directory: str) -> dict[str, str] | None:
    """The "#key value" header of a bundle directory's index.txt, or None if it has none."""
    path = os.path.join(directory, "index.txt")
    if not os.path.isfile(path):
        return None
    header: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            key, _, value = line[1:].strip().partition(" ")
            header[key] = value
    return header if header.get("bundle") else None


def check_share_root(root: str, party: int) -> list[str]:
    """The bundle ids under a party's --shares directory (the directory itself or its immediate
    subdirectories); raises BundleError naming the directory when there is none, when one has
    no header, or when one belongs to another party."""
    if not os.path.isdir(root):
        raise BundleError(f"--shares {root} is not a directory: pass the party's own "
                          "shares/partyI directory written by `tf-puma convert`, or a directory "
                          "holding several such bundles")
    candidates = [root] + sorted(os.path.join(root, d) for d in os.listdir(root)
                                 if os.path.isdir(os.path.join(root, d)))
    ids = []
    for directory in candidates:
        if not os.path.isfile(os.path.join(directory, "index.txt")):
            continue
        header = read_header(directory)
        if header is None:
            raise BundleError(f"{directory} has no \"#bundle ID\" header: it was written by an "
                              "older tf-puma; convert the model again")
        if header.get("party") != str(party):
            raise BundleError(f"{directory} holds the shares of party {header.get('party', '?')}"
                              f", but this is party {party}: copy OUT/shares/party{party} of the "
                              "conversion here instead (each party must have its own bundle)")
        ids.append(header["bundle"])
    if not ids:
        raise BundleError(f"--shares {root} holds no share bundle (no index.txt in it or its "
                          f"subdirectories): copy OUT/shares/party{party} of `tf-puma convert` "
                          "there")
    return ids
