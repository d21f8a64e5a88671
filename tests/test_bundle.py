"""Party weight bundles: written by the model owner, read by each party from its own directory."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_puma
from tf_puma import _ops, bundle, costs
from tf_puma.fixedpoint import FixedPoint
from tests.conftest import BUNDLE_WEIGHTS, TEST_BUNDLE, check

ULP = 2.0 ** -18


def read_party(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every weight's two shares in a party's bundle, seeds expanded (a reader written apart
    from the kernel's, for the kernel's test below)."""
    data = open(os.path.join(directory, "shares.bin"), "rb").read()
    header = bundle.read_header(directory)
    out = {}
    for line in open(os.path.join(directory, "index.txt"), encoding="utf-8").read().split("\n"):
        if not line or line.startswith("#"):
            continue
        name, own, nxt, *dims = line.split()
        shape = [int(d) for d in dims]
        n = int(np.prod(shape))

        def get(spec: str) -> np.ndarray:
            if spec.startswith("prg:"):
                seed = np.frombuffer(bytes.fromhex(spec[4:]), "<i8")
                return bundle.expand_seed(seed, 0, n, int(header["prg_chunk"])).reshape(shape)
            return np.frombuffer(data, "<i8", n, int(spec)).reshape(shape)

        out[name] = (get(own), get(nxt))
    return out


def test_each_party_holds_two_consistent_shares(bundle_dir):
    parties = [read_party(os.path.join(bundle_dir, f"party{i}")) for i in range(3)]
    for name, value in BUNDLE_WEIGHTS.items():
        shares = [parties[i][name][0] for i in range(3)]
        for i in range(3):
            np.testing.assert_array_equal(parties[i][name][1], shares[(i + 1) % 3])
        total = sum(s.view(np.uint64) for s in shares).view(np.int64)
        np.testing.assert_array_equal(total, FixedPoint().encode_np(value))
        for i in range(3):  # two shares alone are not the weight
            two = (parties[i][name][0].view(np.uint64) + parties[i][name][1].view(np.uint64))
            assert np.mean(two.view(np.int64) == FixedPoint().encode_np(value)) < 0.01



def test_weights_larger_than_a_chunk_are_shared_chunk_by_chunk(tmp_path, monkeypatch):
    """write_bundles encodes and shares CHUNK_VALUES values at a time (a LLaMA-7B weight is
    45M values): the layout is the one-piece layout, the shares add up to the weight, and every
    chunk has fresh randomness (the same stream reused would repeat share values)."""
    monkeypatch.setattr(bundle, "CHUNK_VALUES", 8)
    rng = np.random.default_rng(3)
    weights = {"w": rng.normal(size=(5, 7)), "b": rng.normal(size=8),
               "s": np.float32(0.25), "e": np.zeros((0, 3))}
    bundle.write_bundles(weights, str(tmp_path), "b-chunks")
    parties = [read_party(str(tmp_path / f"party{i}")) for i in range(3)]
    for name, value in weights.items():
        shares = [parties[i][name][0] for i in range(3)]
        assert shares[0].shape == np.shape(value)
        for i in range(3):
            np.testing.assert_array_equal(parties[i][name][1], shares[(i + 1) % 3])
        total = sum(s.view(np.uint64) for s in shares).view(np.int64)
        np.testing.assert_array_equal(total, FixedPoint().encode_np(value))
    for share in range(3):  # every chunk of every share fresh
        values = parties[share]["w"][0].reshape(-1)
        assert len({tuple(values[k:k + 8]) for k in range(0, 32, 8)}) == 4
    # w_0 and w_1 are seeds (a fresh one per weight and share); only w_2 is written, once for
    # party 1 and once for party 2
    seeds = [line.split()[1:3] for line in open(tmp_path / "party0" / "index.txt")
             if not line.startswith("#")]
    assert all(spec.startswith("prg:") for pair in seeds for spec in pair)
    assert len({spec for pair in seeds for spec in pair}) == 2 * len(weights)
    assert os.path.getsize(tmp_path / "party0" / "shares.bin") == 0
    for i in (1, 2):
        assert os.path.getsize(tmp_path / f"party{i}" / "shares.bin") == 8 * (35 + 8 + 1)


_LOAD_SHARES = """
import sys
import numpy as np
from tf_puma import _ops
root, party, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ops = _ops.load()
ops.puma_set_share_root(root=root, party=party)
arrays = {}
for spec in sys.argv[4:]:
    name, dims = spec.split(":")
    shape = [int(d) for d in dims.split(",") if d]
    own, nxt = ops.puma_load_share(weight=name, shape=shape, bundle="b-kernel", party=party)
    arrays[name + "/own"], arrays[name + "/next"] = own.numpy(), nxt.numpy()
np.savez(out, **arrays)
"""


def test_the_party_kernel_reads_seeded_and_written_shares(tmp_path, monkeypatch):
    """PumaLoadShare expands a seed chunk by chunk (odd tails included) exactly as the owner
    drew it, and reads written shares at their offsets; a bundle with seeds but no chunk size
    in its header is refused."""
    monkeypatch.setattr(bundle, "CHUNK_VALUES", 6)
    rng = np.random.default_rng(4)
    weights = {"w": rng.normal(size=(5, 7)), "b": rng.normal(size=3), "s": np.float64(-1.5),
               "e": np.zeros((0, 2))}
    dirs = bundle.write_bundles(weights, str(tmp_path), "b-kernel")
    specs = [f"{name}:{','.join(map(str, np.shape(v)))}" for name, v in weights.items()]
    for party in range(3):
        out = tmp_path / f"loaded{party}.npz"
        subprocess.run([sys.executable, "-c", _LOAD_SHARES, dirs[party], str(party), str(out),
                        *specs], check=True, timeout=120)
        loaded, expected = np.load(out), read_party(dirs[party])
        for name in weights:
            np.testing.assert_array_equal(loaded[name + "/own"], expected[name][0])
            np.testing.assert_array_equal(loaded[name + "/next"], expected[name][1])
    index = os.path.join(dirs[0], "index.txt")
    lines = open(index, encoding="utf-8").read().split("\n")
    open(index, "w", encoding="utf-8").write(
        "\n".join(line for line in lines if not line.startswith("#prg_chunk")))
    failed = subprocess.run([sys.executable, "-c", _LOAD_SHARES, dirs[0], "0",
                             str(tmp_path / "x.npz"), "w:5,7"], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode and "#prg_chunk N" in failed.stderr


def test_a_background_writer_writes_the_bundles_or_stops_when_cancelled(tmp_path,
                                                                       monkeypatch):
    """BackgroundWriter: result() gives the same bundles as write_bundles; cancel() ends the
    writing at the next chunk, no bundle is complete and result() says it was cancelled."""
    weights = {"w": np.arange(6.0).reshape(2, 3)}
    done = bundle.BackgroundWriter(weights, str(tmp_path / "a"), "b-a", FixedPoint())
    assert done.result() > 0
    done.cancel()  # a no-op once written
    shares = [read_party(str(tmp_path / "a" / f"party{i}"))["w"][0] for i in range(3)]
    total = sum(s.view(np.uint64) for s in shares).view(np.int64)
    np.testing.assert_array_equal(total, FixedPoint().encode_np(weights["w"]))
    monkeypatch.setattr(bundle, "CHUNK_VALUES", 8)  # ~60k chunks: seconds of writing
    writer = bundle.BackgroundWriter({"big": np.zeros(500_000)}, str(tmp_path / "b"), "b-b",
                                     FixedPoint())
    writer.cancel()
    with pytest.raises(bundle.BundleCancelled):
        writer.result()
    assert not os.path.exists(tmp_path / "b" / "party1" / "index.txt")


def test_secure_matmul_with_party_loaded_weights(cluster):
    x = np.random.default_rng(0).normal(size=(4, 16))

    @tf.function
    def run(a):
        w = bundle.party_weight("test/w", [16, 8], TEST_BUNDLE)
        b = bundle.party_weight("test/b", [8], TEST_BUNDLE)
        return tf_puma.reveal(tf_puma.share(a) @ w + b, tf.float64)

    with costs.Ledger() as ledger:
        run.get_concrete_function(tf.TensorSpec([4, 16], tf.float64))
    # The client sends only its input (2 ring elements per value plus two keys).
    assert ledger.ops["share_input"].bytes_sent == {"client": 2 * 8 * 64 + 4 * 16}
    for _ in range(2):  # the second call uses the parties' resident copies
        out = run(tf.constant(x)).numpy()
        w, b = BUNDLE_WEIGHTS["test/w"], BUNDLE_WEIGHTS["test/b"]
        check(out, x @ w + b, 16 * (np.abs(x).max() + np.abs(w).max()) * ULP / 2 + 2 * ULP)


def test_bundle_mismatches_are_clear_errors(cluster):
    @tf.function
    def missing():
        return tf_puma.reveal(bundle.party_weight("no/such", [2], TEST_BUNDLE))

    with pytest.raises(tf.errors.NotFoundError, match="not in the share bundle"):
        missing()

    @tf.function
    def wrong_shape():
        return tf_puma.reveal(bundle.party_weight("test/b", [9], TEST_BUNDLE))

    with pytest.raises(tf.errors.InvalidArgumentError, match="bundle and model differ"):
        wrong_shape()


def test_party_without_bundle_is_told_how_to_start():
    # this (client) process never set a share root
    with pytest.raises(tf.errors.FailedPreconditionError, match="--shares DIR"):
        _ops.load().puma_load_share(weight="test/w", shape=[16, 8], bundle=TEST_BUNDLE)


def test_weight_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="without spaces"):
        bundle.write_bundles({"bad name": np.zeros(2)}, str(tmp_path), "b-x")
    with pytest.raises(ValueError, match="outside the fixed-point range"):
        bundle.write_bundles({"big": np.array([1e12])}, str(tmp_path / "b"), "b-x")
    assert not os.path.exists(tmp_path / "b" / "party0" / "shares.bin")


def _load_in_a_fresh_party_process(root: str, process_party: int, **attrs) -> str:
    """PumaLoadShare in a new process serving `root` as party `process_party`: its error."""
    code = ("import sys; from tf_puma import _ops; ops = _ops.load(); "
            f"ops.puma_set_share_root(root={root!r}, party={process_party}); "
            f"ops.puma_load_share(weight='w', shape=[3], **{attrs!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    return proc.stderr if proc.returncode else "ok"


def test_a_party_loads_only_its_own_bundle_with_the_models_fixed_point(tmp_path):
    """Every bundle names its conversion, its party and its encoding; the kernel checks all
    three (a party started with party 0's shares used to run and answer 2e8 off)."""
    dirs = bundle.write_bundles({"w": np.ones(3)}, str(tmp_path / "model"), "b-model")
    assert open(os.path.join(dirs[1], "index.txt")).read().split("\n")[:3] == [
        "#bundle b-model", "#party 1", f"#frac_bits {FixedPoint().frac_bits}"]
    good = dict(bundle="b-model", party=1, frac_bits=FixedPoint().frac_bits)
    assert _load_in_a_fresh_party_process(dirs[1], 1, **good) == "ok"
    assert "belongs to party 0" in _load_in_a_fresh_party_process(dirs[0], 1, **good)
    assert "fractional bits" in _load_in_a_fresh_party_process(
        dirs[1], 1, **{**good, "frac_bits": 20})
    assert "names no share bundle" in _load_in_a_fresh_party_process(
        dirs[1], 1, **{**good, "bundle": ""})
    index = os.path.join(dirs[2], "index.txt")
    lines = open(index, encoding="utf-8").read().split("\n")
    open(index, "w", encoding="utf-8").write("\n".join(lines[1:]))  # its "#bundle" line gone
    assert "#bundle ID" in _load_in_a_fresh_party_process(dirs[2], 2, **{**good, "party": 2})
    with pytest.raises(ValueError, match="bundle id"):
        bundle.write_bundles({"w": np.ones(3)}, str(tmp_path / "other"), "")


def test_a_party_refuses_another_partys_bundle_at_start(tmp_path):
    dirs = bundle.write_bundles({"w": np.ones(3)}, str(tmp_path / "model"), "b-model")
    spec = '{"client": ["127.0.0.1:1"], "puma": ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}'

    def start(task: int, shares: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tf_puma.apps.cli", "party", "--cluster", spec,
                               "--task", str(task), "--shares", shares],
                              capture_output=True, text=True, timeout=120)

    swapped = start(1, dirs[0])
    assert swapped.returncode == 1
    assert "holds the shares of party 0, but this is party 1" in swapped.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no share bundle" in start(2, str(empty)).stderr
    with pytest.raises(bundle.BundleError, match="holds the shares of party 1"):
        bundle.check_share_root(str(tmp_path / "model"), 0)  # party0/ fine, party1/ and 2/ not
    assert bundle.check_share_root(dirs[0], 0) == ["b-model"]
