"""Per-party weight bundles: the model owner splits each weight into replicated shares and writes
`OUT/party{0,1,2}/`; party i's directory holds only (w_i, w_{i+1}) of every weight.

w_0 and w_1 are pseudorandom, so the owner stores them as seeds: w_j's chunk c (CHUNK_VALUES values)
is F(s_j, 0, c), AES-128-CTR under a fresh key s_j per weight and share. Only w_2 = w - w_0 - w_1
is written out, once for party 1 and once for party 2: a third of the bytes of three full pairs.
Party 0 holds (s_0, s_1), party 1 (s_1, w_2), party 2 (w_2, s_0): what each learns is what the
two arrays would have told it.

Layout of one party's directory: `shares.bin` (int64 little-endian ring elements) and `index.txt`
(a header "#bundle ID", "#party I", "#frac_bits F", "#prg_chunk N", then one line per weight:
"name OWN NEXT dim0 dim1 ...", where a share is a byte offset into shares.bin or "prg:HEX", the 32
hex digits of its seed). Parties read their own directory with the PumaLoadShare op
(`tf-puma party --shares DIR --task I`), once, and keep it resident; a party refuses, at start,
a bundle whose header names another party.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Mapping

import numpy as np
import tensorflow as tf

from tf_puma import _ops, config, runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.fixedpoint import FixedPoint
from tf_puma.sharing import Shared

# Ring elements encoded and secret-shared at a time by write_bundles (32 MiB per array); also
# the values per PRG sub of a seeded share (written to the header as "#prg_chunk").
CHUNK_VALUES = 1 << 22


def _new_seed() -> np.ndarray:
    """A fresh 128-bit key (PumaNewKey: the operating system's CSPRNG, getrandom) as int64[2]."""
    with tf.device("/CPU:0"):
        return _ops.load().puma_new_key().numpy()


def expand_seed(seed: np.ndarray, start: int, count: int, chunk: int) -> np.ndarray:
    """Values [start, start + count) of a seeded share: chunk c = F(seed, 0, c) of `chunk`
    values, AES-128-CTR (PumaPrgUniform, AES-NI), as PumaLoadShare expands it on the party.
    `start` is a multiple of `chunk`."""
    ops = _ops.load()
    pieces = []
    with tf.device("/CPU:0"):
        for begin in range(start, start + count, chunk):
            size = min(chunk, start + count - begin)
            pieces.append(ops.puma_prg_uniform(seed, [size], stream=0,
                                               sub=begin // chunk).numpy())
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def seed_spec(seed: np.ndarray) -> str:
    """A seed as index.txt writes it: "prg:" and the 16 bytes of the int64[2] key in hex."""
    return "prg:" + np.asarray(seed, "<i8").tobytes().hex()


def new_bundle_id() -> str:
    """A random bundle id: names one conversion without saying anything about its weights."""
    return f"b-{secrets.token_hex(8)}"


def write_bundles(weights: Mapping[str, np.ndarray], out_dir: str, bundle_id: str,
                  fxp: FixedPoint | None = None,
                  stop: threading.Event | None = None) -> list[str]:
    """Encodes and secret-shares every weight; returns the three party directories.

    `bundle_id` names the bundle (index.txt's first line "#bundle ID"), so one party can hold
    the bundles of several models side by side under its --shares directory. It must not be
    derived from the weights (use `new_bundle_id`): the client's secure model carries it.

    Writes into a temporary name first and renames, so a failure leaves no half-written bundle.
    `stop` set (by another thread) ends the writing at the next chunk with BundleCancelled.
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
    chunk = CHUNK_VALUES
    tmp = [open(os.path.join(d, "shares.bin.tmp"), "wb") for d in dirs]
    index: list[list[str]] = [[] for _ in range(NUM_PARTIES)]
    offset = 0  # of w_2 in party 1's and party 2's shares.bin (party 0's stays empty)
    try:
        for name, value in weights.items():
            flat = np.asarray(value).reshape(-1)  # a view of a contiguous weight
            seeds = [_new_seed(), _new_seed()]
            dims = [str(d) for d in np.shape(value)]
            specs = [seed_spec(seeds[0]), seed_spec(seeds[1]), str(offset)]
            for i in range(NUM_PARTIES):
                index[i].append(" ".join([name, specs[i], specs[(i + 1) % NUM_PARTIES], *dims]))
            # Encoded and shared one chunk at a time: a weight of any size costs a few
            # chunk-sized arrays, not five copies of itself.
            for start in range(0, flat.size, chunk):
                if stop is not None and stop.is_set():
                    raise BundleCancelled("the bundle writing was cancelled")
                enc = fxp.encode_np(np.asarray(flat[start:start + chunk], np.float64))
                w0, w1 = (expand_seed(seed, start, enc.size, chunk) for seed in seeds)
                with np.errstate(over="ignore"):  # ring arithmetic wraps by design
                    w2 = (enc.view(np.uint64) - w0.view(np.uint64)
                          - w1.view(np.uint64)).view(np.int64)
                for i in (1, 2):  # w_2 in weight order: [offset, offset + 8 size) of both files
                    tmp[i].write(memoryview(np.ascontiguousarray(w2, dtype="<i8")))
            offset += 8 * flat.size
    finally:
        for fh in tmp:
            fh.close()
    for i, d in enumerate(dirs):
        with open(os.path.join(d, "index.txt.tmp"), "w", encoding="utf-8") as fh:
            header = [f"#bundle {bundle_id}", f"#party {i}", f"#frac_bits {fxp.frac_bits}",
                      f"#prg_chunk {chunk}"]
            fh.write("\n".join(header + index[i]) + "\n")
        os.replace(os.path.join(d, "shares.bin.tmp"), os.path.join(d, "shares.bin"))
        os.replace(os.path.join(d, "index.txt.tmp"), os.path.join(d, "index.txt"))
    return dirs


class BundleCancelled(RuntimeError):
    """write_bundles stopped before the end because its `stop` event was set."""


class BackgroundWriter:
    """write_bundles on a thread of its own, so the owner's conversion writes the bundles while
    it traces and saves the secure graph (tracing is Python on one core; AES, encoding and the
    writes release the GIL). `result()` waits and returns the writer's own seconds, or raises
    its error; `cancel()` stops it at the next chunk and waits (a no-op once it is done)."""

    def __init__(self, weights: Mapping[str, np.ndarray], out_dir: str, bundle_id: str,
                 fxp: FixedPoint) -> None:
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._seconds = 0.0

        def run() -> None:
            start = time.perf_counter()
            try:
                write_bundles(weights, out_dir, bundle_id, fxp, stop=self._stop)
            except BaseException as error:  # noqa: BLE001 - handed to result()
                self._error = error
            self._seconds = time.perf_counter() - start

        self._thread = threading.Thread(target=run, name="tf-puma-bundles", daemon=True)
        self._thread.start()

    def result(self) -> float:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._seconds

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


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


def resident_bytes(directory: str) -> int:
    """The bytes a party holds in memory for the bundle in `directory`: both shares of every
    weight, 16 bytes per value, whether a share is written out or a seed."""
    total = 0
    with open(os.path.join(directory, "index.txt"), encoding="utf-8") as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                dims = line.split()[3:]
                total += 2 * 8 * int(np.prod([int(d) for d in dims]))
    return total


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
