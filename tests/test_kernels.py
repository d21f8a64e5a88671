"""Kernel tests against numpy references, run on the local CPU (no cluster needed).

Also run against the Bazel-built library by `make test` (TF_PUMA_OPS_LIBRARY).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tf_puma import _ops

ops = _ops.load()
rng = np.random.default_rng(7)


def key_tensor(hex_bytes: str) -> tf.Tensor:
    return tf.constant(np.frombuffer(bytes.fromhex(hex_bytes), dtype="<i8").copy())


def keystream_hex(out: tf.Tensor) -> list[str]:
    raw = out.numpy().astype("<i8").tobytes()
    return [raw[i:i + 16].hex() for i in range(0, len(raw), 16)]


def random_ring(shape) -> np.ndarray:
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=shape,
                        dtype=np.int64, endpoint=True)


# --- AES-128-CTR ---------------------------------------------------------------------------
# NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt: keystream = plaintext XOR ciphertext.
NIST_KEY = "2b7e151628aed2a6abf7158809cf4f3c"
NIST_IV = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
NIST_PLAIN = ["6bc1bee22e409f96e93d7e117393172a", "ae2d8a571e03ac9c9eb76fac45af8e51",
              "30c81c46a35ce411e5fbc1191a0a52ef", "f69f2445df4f9b17ad2b417be66c3710"]
NIST_CIPHER = ["874d6191b620e3261bef6864990db6ce", "9806f66b7970fdff8617187bb9fffdff",
               "5ae4df3edbd5d35e5b4f09020db03eab", "1e031dda2fbe03d1792170a0f3009cee"]


def aes_paths() -> list:
    """The AES paths this CPU has (the portable one always)."""
    paths = ["portable"]
    for path in ("aesni", "vaes"):
        try:
            ops.puma_aes128_ctr(key_tensor(NIST_KEY), key_tensor(NIST_IV), num_blocks=1,
                                path=path)
            paths.append(path)
        except tf.errors.InvalidArgumentError:
            pass
    return paths


AES_PATHS = aes_paths()


@pytest.mark.parametrize("path", ["auto", "portable", "aesni", "vaes"])
def test_aes_ctr_nist_sp800_38a(path):
    if path not in AES_PATHS + ["auto"]:
        pytest.skip(f"this CPU has no {path} path")
    out = ops.puma_aes128_ctr(key_tensor(NIST_KEY), key_tensor(NIST_IV), num_blocks=4,
                              path=path)
    expected = [bytes(a ^ b for a, b in zip(bytes.fromhex(p), bytes.fromhex(c))).hex()
                for p, c in zip(NIST_PLAIN, NIST_CIPHER)]
    assert keystream_hex(out) == expected


@pytest.mark.parametrize("path", ["auto", "portable", "aesni", "vaes"])
def test_aes_fips197_single_block(path):
    if path not in AES_PATHS + ["auto"]:
        pytest.skip(f"this CPU has no {path} path")
    out = ops.puma_aes128_ctr(key_tensor("000102030405060708090a0b0c0d0e0f"),
                              key_tensor("00112233445566778899aabbccddeeff"), num_blocks=1,
                              path=path)
    assert keystream_hex(out) == ["69c4e0d86a7b0430d8cdb78070b4c55a"]


def iv_with_low_word(low: int) -> tf.Tensor:
    """A random 128-bit counter whose low (big-endian) 64-bit word is `low`."""
    high = np.random.default_rng(low % 1000).integers(0, 256, 8, dtype=np.uint8).tobytes()
    return tf.constant(np.frombuffer(high + low.to_bytes(8, "big"), dtype="<i8").copy())


@pytest.mark.parametrize("low", [12345, 2 ** 64 - 40, 2 ** 64 - 32, 2 ** 64 - 1])
def test_aes_paths_agree_across_lengths_and_counter_carries(low):
    """Every path against the portable one, for lengths around VAES's 32-block chunks and
    AES-NI's 8, with counters whose low word wraps inside a chunk, at its edge, or at once
    (the carry into the high word)."""
    key, iv = tf.constant(random_ring([2])), iv_with_low_word(low)
    for n in (0, 1, 7, 31, 32, 33, 40, 64, 95, 1001):
        slow = ops.puma_aes128_ctr(key, iv, num_blocks=n, path="portable").numpy()
        for path in AES_PATHS[1:] + ["auto"]:
            fast = ops.puma_aes128_ctr(key, iv, num_blocks=n, path=path).numpy()
            np.testing.assert_array_equal(fast, slow, err_msg=f"{path}, {n} blocks")


def prg_iv(stream: int, sub: int) -> tf.Tensor:
    iv = stream.to_bytes(8, "big") + sub.to_bytes(4, "big") + bytes(4)
    return tf.constant(np.frombuffer(iv, dtype="<i8").copy())


def test_prg_is_aes_ctr_with_stream_layout():
    key = tf.constant(random_ring([2]))
    for stream, sub in [(0, 0), (5, 0), (5, 3), (2 ** 40 + 7, 1)]:
        got = ops.puma_prg_uniform(key, [3, 7], stream=stream, sub=sub)
        raw = ops.puma_aes128_ctr(key, prg_iv(stream, sub), num_blocks=11)
        np.testing.assert_array_equal(got.numpy().ravel(), raw.numpy()[:21])


def test_prg_large_parallel_fill_matches_serial_blocks():
    key = tf.constant(random_ring([2]))
    n = 300_001  # large enough to split over the thread pool; odd to hit the tail element
    got = ops.puma_prg_uniform(key, [n], stream=9).numpy()
    raw = ops.puma_aes128_ctr(key, prg_iv(9, 0), num_blocks=(n + 1) // 2).numpy()
    np.testing.assert_array_equal(got, raw[:n])


def test_prg_uniform_bits():
    key = tf.constant(random_ring([2]))
    out = ops.puma_prg_uniform(key, [200_000], stream=1).numpy()
    bits = (out.view(np.uint64)[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    freq = bits.mean(axis=0)
    # 200k samples per bit: std 0.0011; 6 sigma bound.
    assert np.all(np.abs(freq - 0.5) < 0.0067), freq


def test_new_key_is_fresh_each_call():
    keys = {tuple(ops.puma_new_key().numpy()) for _ in range(50)}
    assert len(keys) == 50


@pytest.mark.parametrize("shape", [[4, 5], [300_001]])
def test_zero_shares_sum_to_zero(shape):
    """alpha_i = F(k_i, s, 0) - F(k_(i+1), s, 0) exactly (the second keystream is subtracted in
    pieces; 300,001 words split over the thread pool and end in half a block), and they sum to
    zero."""
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    s = 17
    alphas = [ops.puma_zero_share(keys[i], keys[(i + 1) % 3], shape, stream=s).numpy()
              for i in range(3)]
    streams = [ops.puma_prg_uniform(k, shape, stream=s).numpy().view(np.uint64) for k in keys]
    for i in range(3):
        np.testing.assert_array_equal(alphas[i].view(np.uint64), streams[i] - streams[(i + 1) % 3])
    total = sum(a.astype(np.uint64) for a in alphas)
    assert not total.any()
    assert len({a.tobytes() for a in alphas}) == 3


@pytest.mark.parametrize("shape", [[0], [3, 7], [300_001]])
def test_mask_input_subtracts_both_keystreams(shape):
    """x_2 = v - F(c_0, s, 0) - F(c_1, s, 0), the words PumaPrgUniform gives the parties; 300,001
    elements split over the thread pool and end in half a block. v (held here) is unchanged."""
    v = tf.constant(random_ring(shape))
    before = v.numpy().copy()
    c0, c1 = tf.constant(random_ring([2])), tf.constant(random_ring([2]))
    got = ops.puma_mask_input(v, c0, c1, stream=4).numpy().view(np.uint64)
    want = (before.view(np.uint64) - ops.puma_prg_uniform(c0, shape, stream=4).numpy().view(
        np.uint64) - ops.puma_prg_uniform(c1, shape, stream=4).numpy().view(np.uint64))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(v.numpy(), before)


def test_mask_input_of_an_intermediate_matches():
    """In a graph the one-hot's buffer is masked in place; the result is the same words."""
    ids = tf.constant([[5, 0, 99, 42]], tf.int32)
    c0, c1 = tf.constant(random_ring([2])), tf.constant(random_ring([2]))
    masked = tf.function(lambda: ops.puma_mask_input(tf.one_hot(ids, 100, dtype=tf.int64),
                                                     c0, c1, stream=0))().numpy()
    total = (masked.view(np.uint64) + ops.puma_prg_uniform(c0, [1, 4, 100], stream=0).numpy()
             .view(np.uint64) + ops.puma_prg_uniform(c1, [1, 4, 100], stream=0).numpy()
             .view(np.uint64))
    np.testing.assert_array_equal(total, tf.one_hot(ids, 100, dtype=tf.int64).numpy())


def test_key_shape_errors_are_clear():
    with pytest.raises(tf.errors.InvalidArgumentError, match="128-bit key"):
        ops.puma_prg_uniform(tf.constant([1, 2, 3], tf.int64), [2], stream=0)


# --- ring matmul ----------------------------------------------------------------------------
def ring_matmul_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a.view(np.uint64), b.view(np.uint64)).view(np.int64)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 64, 64),
                                   (128, 768, 768), (5, 0, 4), (0, 3, 2)])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_ring_matmul_matches_numpy(m, k, n, ta, tb):
    a, b = random_ring([m, k]), random_ring([k, n])
    got = ops.puma_ring_mat_mul(a.T.copy() if ta else a, b.T.copy() if tb else b,
                                transpose_a=ta, transpose_b=tb)
    np.testing.assert_array_equal(got.numpy(), ring_matmul_ref(a, b))


@pytest.mark.parametrize("m,k,n,ta,tb", [(33, 65, 17, False, False), (8, 16, 16, True, True),
                                         (128, 300, 70, False, True),
                                         # thin products (m <= 8): several 512-column blocks
                                         (1, 700, 1100, False, False), (8, 65, 530, True, True),
                                         (3, 33, 1030, False, True), (9, 40, 600, True, False),
                                         # packed, B packed 512 columns at a time: 3 blocks
                                         (20, 40, 1100, False, True), (9, 70, 1030, True, False),
                                         # the inner dimension in 1,024-wide slices: 3 and 2
                                         (20, 2085, 70, False, False), (9, 1025, 530, True, True)])
def test_portable_avx512_and_amx_kernels_are_bit_identical(m, k, n, ta, tb):
    a, b = random_ring([k, m] if ta else [m, k]), random_ring([n, k] if tb else [k, n])
    outs = [ops.puma_ring_mat_mul(a, b, transpose_a=ta, transpose_b=tb, kernel=kern).numpy()
            for kern in ("portable", "avx512", "amx", "auto")]
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)
    np.testing.assert_array_equal(outs[0], ring_matmul_ref(a.T if ta else a, b.T if tb else b))


GEMM_PATHS = [p.decode() for p in ops.puma_ring_gemm_paths().numpy()]


@pytest.mark.parametrize("m,k,n,ta,tb", [
    (9, 5, 33, False, False), (33, 65, 17, True, False), (47, 300, 70, False, True),
    (16, 2085, 100, True, True),  # three 1,024-wide slices, the last partial
    (128, 384, 1100, False, False)])  # three 512-column blocks
def test_products_mod_2_to_the_32_on_every_path(m, k, n, ta, tb):
    """ring_bits=32: each path's product (the portable and AVX-512 ones in 32-bit words, AMX
    on four byte limbs where this CPU has it) is numpy's ring product mod 2^32, in [0, 2^32);
    rows off the 8-row panels, columns off the 32-wide tiles, every operand full-range."""
    a, b = random_ring([k, m] if ta else [m, k]), random_ring([n, k] if tb else [k, n])
    want = (ring_matmul_ref(a.T if ta else a, b.T if tb else b).view(np.uint64)
            & np.uint64(0xFFFFFFFF)).view(np.int64)
    for kern in ("portable", "avx512", "amx", "auto"):
        got = ops.puma_ring_mat_mul(a, b, transpose_a=ta, transpose_b=tb, kernel=kern,
                                    ring_bits=32).numpy()
        np.testing.assert_array_equal(got, want, err_msg=kern)
    ones = ops.puma_ring_mat_mul(np.full([m, k], -1, np.int64), np.full([k, n], -1, np.int64),
                                 kernel="avx512", ring_bits=32).numpy()
    np.testing.assert_array_equal(ones, np.full([m, n], k % 2**32, np.int64))  # (-1)(-1) k times


@pytest.mark.skipif("amx" not in GEMM_PATHS, reason="AMX-INT8 is unusable here (CPU, OS or "
                                                    "Linux's permission)")
@pytest.mark.parametrize("m,k,n,ta,tb", [
    # rows and columns off the 32-wide pairs of tiles, inner dimensions off the 64-byte chunks
    (9, 5, 3, False, False), (33, 65, 17, True, False), (47, 300, 70, False, True),
    (128, 384, 1100, False, False),  # three 512-column blocks of B's tiles
    (40, 2085, 33, True, True),      # three 1,024-wide slices, the last partial
    (16, 1024, 32, False, False)])   # exactly one slice, one pair of tiles
def test_amx_kernel_matches_numpy(m, k, n, ta, tb):
    """The AMX path (taken: this CPU lists it) against numpy's ring product."""
    a, b = random_ring([k, m] if ta else [m, k]), random_ring([n, k] if tb else [k, n])
    got = ops.puma_ring_mat_mul(a, b, transpose_a=ta, transpose_b=tb, kernel="amx").numpy()
    np.testing.assert_array_equal(got, ring_matmul_ref(a.T if ta else a, b.T if tb else b))


@pytest.mark.skipif("amx" not in GEMM_PATHS, reason="AMX-INT8 is unusable here")
def test_amx_kernel_at_its_largest_byte_sums():
    """Every byte 0xff (the ring's -1) in full 1,024-wide slices: each of the 8 limb sums per
    slice reaches 8 x 1,024 x 255^2, the most its uint32 tiles hold (plus a partial slice)."""
    a, b = np.full([20, 2085], -1, np.int64), np.full([2085, 40], -1, np.int64)
    got = ops.puma_ring_mat_mul(a, b, kernel="amx").numpy()
    np.testing.assert_array_equal(got, ring_matmul_ref(a, b))
    np.testing.assert_array_equal(got, np.full([20, 40], 2085, np.int64))


def test_ring_matmul_batched_and_broadcast():
    a, b, w = random_ring([2, 3, 8, 16]), random_ring([2, 3, 16, 5]), random_ring([16, 4])
    np.testing.assert_array_equal(ops.puma_ring_mat_mul(a, b).numpy(), ring_matmul_ref(a, b))
    np.testing.assert_array_equal(ops.puma_ring_mat_mul(a, w).numpy(), ring_matmul_ref(a, w))
    v = random_ring([5, 8])
    np.testing.assert_array_equal(ops.puma_ring_mat_mul(v, a).numpy(), ring_matmul_ref(v, a))


def test_ring_matmul_shape_errors():
    # eager: the kernel's own check; in a graph: the shape function's
    with pytest.raises(tf.errors.InvalidArgumentError, match="ring matmul inner dimensions "
                                                            "differ"):
        ops.puma_ring_mat_mul(random_ring([2, 3]), random_ring([4, 2]))
    with pytest.raises(ValueError, match="Dimensions must be equal, but are 3 and 4"):
        tf.function(ops.puma_ring_mat_mul).get_concrete_function(
            tf.TensorSpec([2, 3], tf.int64), tf.TensorSpec([4, 2], tf.int64))


# --- parties' local multiplication steps ----------------------------------------------------
def replicated(x: np.ndarray) -> list[np.ndarray]:
    s0, s1 = random_ring(x.shape), random_ring(x.shape)
    return [s0, s1, (x.view(np.uint64) - s0.view(np.uint64) - s1.view(np.uint64)).view(np.int64)]


def ring_sum(parts) -> np.ndarray:
    total = np.zeros(np.shape(parts[0]), dtype=np.uint64)
    for p in parts:
        total += np.asarray(p).view(np.uint64)
    return total.view(np.int64)


def test_mul_and_matmul_share_sum_to_products():
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    s = 3
    x, y = random_ring([6, 9]), random_ring([6, 9])
    xs, ys = replicated(x), replicated(y)
    z = [ops.puma_mul_share(xs[i], xs[(i + 1) % 3], ys[i], ys[(i + 1) % 3], keys[i],
                            keys[(i + 1) % 3], stream=s).numpy() for i in range(3)]
    np.testing.assert_array_equal(ring_sum(z), (x.view(np.uint64) * y.view(np.uint64)).view(
        np.int64))
    b = random_ring([2, 9, 4])
    xb, bs = replicated(random_ring([2, 6, 9])), replicated(b)
    xfull = ring_sum(xb)
    z = [ops.puma_mat_mul_share(xb[i], xb[(i + 1) % 3], bs[i], bs[(i + 1) % 3], keys[i],
                                keys[(i + 1) % 3], stream=s).numpy() for i in range(3)]
    np.testing.assert_array_equal(ring_sum(z), ring_matmul_ref(xfull, b))


@pytest.mark.parametrize("shape", [[7], [3, 5000]])  # the second spans several 2048-word pieces
def test_linear_combination_wraps_like_the_ring(shape):
    """PumaLinearCombination is sum_k c_k t_k mod 2^64 against numpy's uint64 arithmetic, for
    full-range terms and coefficients at int64's ends; mismatched shapes and counts are named."""
    terms = [random_ring(shape) for _ in range(4)]
    coefficients = [2**63 - 1, -(2**63), 3, -1]
    got = ops.puma_linear_combination(terms, coefficients=coefficients).numpy()
    want = np.zeros(shape, np.uint64)
    for c, t in zip(coefficients, terms):
        want += np.uint64(c % 2**64) * t.view(np.uint64)
    np.testing.assert_array_equal(got, want.view(np.int64))
    one = ops.puma_linear_combination(terms[:1], coefficients=[5]).numpy()
    np.testing.assert_array_equal(one, (np.uint64(5) * terms[0].view(np.uint64)).view(np.int64))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="equal shapes"):
        ops.puma_linear_combination([terms[0], random_ring([2])], coefficients=[1, 1])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="one coefficient"):
        ops.puma_linear_combination(terms[:2], coefficients=[1])


@pytest.mark.parametrize("shape,axis", [([9], 0), ([4, 7, 3], 1), ([2, 3, 128], 2),
                                        ([6, 5], 0)])
def test_halves_split_and_subtract_like_the_ring(shape, axis):
    """PumaHalves gives x[:h], x[h:2h] - x[:h] and x[:h] - x[h:2h] mod 2^64 along an axis
    (h = floor(size / 2), an odd last position left out) for each of its inputs, against numpy
    on full-range values; an axis of one position and one beyond the rank are refused."""
    xs = [random_ring(shape) for _ in range(2)]
    lo, diff, neg_diff = ops.puma_halves(xs, axis=axis)
    h = shape[axis] // 2
    for x, got_lo, got_diff, got_neg in zip(xs, lo, diff, neg_diff):
        first = np.take(x, range(h), axis=axis).view(np.uint64)
        second = np.take(x, range(h, 2 * h), axis=axis).view(np.uint64)
        np.testing.assert_array_equal(got_lo.numpy(), first.view(np.int64))
        np.testing.assert_array_equal(got_diff.numpy(), (second - first).view(np.int64))
        np.testing.assert_array_equal(got_neg.numpy(), (first - second).view(np.int64))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="at least 2"):
        ops.puma_halves([random_ring([3, 1])], axis=1)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="out of range"):
        ops.puma_halves([random_ring([3, 4])], axis=2)


@pytest.mark.parametrize("m", [1, 8, 9])  # thin (rows <= 8: weights read in place) and packed
@pytest.mark.parametrize("tb", [False, True])
def test_matmul_share_of_a_few_rows_with_a_weight(m, tb):
    """A decoding step's product: m rows (batched) by one broadcast weight of 1,100 columns
    (three 512-column blocks, the last partial; packed: y_own + y_next summed while packing
    each block), the weight stored transposed or not."""
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    w = random_ring([1100, 70]) if tb else random_ring([70, 1100])
    xb, ws = replicated(random_ring([2, m, 70])), replicated(w)
    z = [ops.puma_mat_mul_share(xb[i], xb[(i + 1) % 3], ws[i], ws[(i + 1) % 3], keys[i],
                                keys[(i + 1) % 3], stream=5, transpose_b=tb).numpy()
         for i in range(3)]
    np.testing.assert_array_equal(ring_sum(z), ring_matmul_ref(ring_sum(xb), w.T if tb else w))


@pytest.mark.parametrize("tb", [False, True])
def test_matmul_share_with_a_vocabulary_sized_inner_dimension(tb):
    """An embedding's one-hot product: 20 rows of one-hot shares by a table of 8,229 rows, the
    inner dimension taken in nine 1,024-wide slices (y_own + y_next summed while packing each)."""
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    vocab, width = 8229, 40
    one_hot = np.zeros([20, vocab], np.int64)
    one_hot[np.arange(20), np.random.default_rng(3).integers(0, vocab, 20)] = 1
    one_hot[:, [0, 1023, 1024, 8191, 8192, vocab - 1]] = 1  # columns at the slices' edges too
    table = random_ring([width, vocab]) if tb else random_ring([vocab, width])
    xb, ws = replicated(one_hot), replicated(table)
    z = [ops.puma_mat_mul_share(xb[i], xb[(i + 1) % 3], ws[i], ws[(i + 1) % 3], keys[i],
                                keys[(i + 1) % 3], stream=7, transpose_b=tb).numpy()
         for i in range(3)]
    np.testing.assert_array_equal(ring_sum(z), ring_matmul_ref(one_hot, table.T if tb else table))


@pytest.mark.parametrize("m,k,tb", [(20, 8229, False), (20, 8229, True), (40, 70, False),
                                    (3, 300, True), (9, 40, False)])
def test_matmul_share_mod_2_to_the_32(m, k, tb):
    """ring_bits=32: each party's z_i in [0, 2^32) and their sum x @ y mod 2^32, on the AMX
    path's four low limbs (k >= 64: a one-hot product over nine slices, and 40 rows), the thin
    path (m <= 8) and the vpmullq one (k < 64); full-range shares. Other widths are refused."""
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    x, w = random_ring([m, k]), random_ring([40, k] if tb else [k, 40])
    xb, ws = replicated(x), replicated(w)
    z = [ops.puma_mat_mul_share(xb[i], xb[(i + 1) % 3], ws[i], ws[(i + 1) % 3], keys[i],
                                keys[(i + 1) % 3], stream=7, transpose_b=tb,
                                ring_bits=32).numpy() for i in range(3)]
    for share in z:
        assert share.min() >= 0 and share.max() < 2**32
    want = ring_matmul_ref(x, w.T if tb else w).view(np.uint64) & np.uint64(0xFFFFFFFF)
    np.testing.assert_array_equal(ring_sum(z).view(np.uint64) & np.uint64(0xFFFFFFFF), want)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="32 or 64"):
        ops.puma_mat_mul_share(xb[0], xb[1], ws[0], ws[1], keys[0], keys[1], stream=7,
                               transpose_b=tb, ring_bits=48)


# --- TruncPr local steps, the three roles simulated in one process --------------------------
@pytest.mark.parametrize("bits", [1, 18, 36, 60])  # 60: rb_B's 61 bits straddle words
@pytest.mark.parametrize("with_extra", [False, True])
def test_trunc_pr_roles(bits, with_extra):
    """The four TruncPr kernels as A, B and D: floor(x / 2^bits) + {0, 1} over |x| <= 2^61;
    the dealer's correlation for B is one word and bits + 1 packed bits per value."""
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    a, b, d = 1, 2, 0  # A = j, B = j + 1, D = j + 2 with j = 1
    s = 11
    n = 20_000
    x = rng.integers(-(2 ** 61), 2 ** 61, size=n, dtype=np.int64)
    x[:6] = [0, 1, -1, 2 ** 61, -(2 ** 61), 2 ** bits]
    u = replicated(x)  # x = u_A + u_B + u_D
    u_a, u_b, u_d = u[0], u[1], u[2]
    if not with_extra:
        u_a = ring_sum([u_a, u_d])
    extras = [u_d] if with_extra else []
    corr, d_own, d_next = ops.puma_trunc_pr_deal(keys[d], keys[a], [n], stream=s, bits=bits)
    assert corr.shape == (n + (n * (bits + 1) + 63) // 64,)
    m_a = ops.puma_trunc_pr_mask(u_a, keys[a], stream=s, add_offset=True)
    m_b = ops.puma_trunc_pr_mask(u_b, keys[d], stream=s, add_offset=False)
    msg_a, t_j, _ = ops.puma_trunc_pr_finish_a(m_a, m_b, extras, keys[a], stream=s, bits=bits)
    msg_b, t_j2 = ops.puma_trunc_pr_finish_b(m_b, m_a, extras, corr, keys[d], stream=s,
                                                 bits=bits)
    t_j1 = ring_sum([msg_a.numpy(), msg_b.numpy()])
    # D's shares are (t_{j+2}, t_j); A's and B's copies of them agree.
    np.testing.assert_array_equal(d_own.numpy(), t_j2.numpy())
    np.testing.assert_array_equal(d_next.numpy(), t_j.numpy())
    result = ring_sum([t_j.numpy(), t_j1, t_j2.numpy()])
    err = result - np.floor_divide(x, 2 ** bits)
    assert set(np.unique(err)) <= {0, 1}, np.unique(err)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have"):
        ops.puma_trunc_pr_finish_b(m_b, m_a, extras, corr[:-1], keys[d], stream=s, bits=bits)


@pytest.mark.parametrize("bits", [1, 18, 60])
@pytest.mark.parametrize("with_extra", [False, True])
def test_trunc_pr_roles_three_rounds(bits, with_extra):
    """The 3-round variant: A opens c alone (PumaTruncPrFinishA, opener=1) and hands B c's msb
    bits, ceil(n / 64) words, from which B finishes (PumaTruncPrFinishBMsb); the same result
    floor(x / 2^bits) + {0, 1}, and the same output shares as the 2-round kernels."""
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    a, b, d = 1, 2, 0
    s = 12
    n = 20_001
    x = rng.integers(-(2 ** 61), 2 ** 61, size=n, dtype=np.int64)
    x[:6] = [0, 1, -1, 2 ** 61, -(2 ** 61), 2 ** bits]
    u = replicated(x)
    u_a, u_b, u_d = u[0], u[1], u[2]
    if not with_extra:
        u_a = ring_sum([u_a, u_d])
    extras = [u_d] if with_extra else []
    corr, d_own, d_next = ops.puma_trunc_pr_deal(keys[d], keys[a], [n], stream=s, bits=bits)
    m_a = ops.puma_trunc_pr_mask(u_a, keys[a], stream=s, add_offset=True)
    m_b = ops.puma_trunc_pr_mask(u_b, keys[d], stream=s, add_offset=False)
    msg_a, t_j, (c_msb,) = ops.puma_trunc_pr_finish_a(m_a, m_b, extras, keys[a], stream=s,
                                                      bits=bits, opener=1)
    assert c_msb.shape == ((n + 63) // 64,)
    c = ring_sum([m_a.numpy(), m_b.numpy()] + extras).view(np.uint64)
    sent_bits = np.unpackbits(c_msb.numpy().view(np.uint8), bitorder="little")[:n]
    np.testing.assert_array_equal(sent_bits, c >> np.uint64(63))
    msg_b, t_j2 = ops.puma_trunc_pr_finish_b_msb(m_b, c_msb, corr, keys[d], stream=s, bits=bits)
    np.testing.assert_array_equal(d_own.numpy(), t_j2.numpy())
    np.testing.assert_array_equal(d_next.numpy(), t_j.numpy())
    result = ring_sum([t_j.numpy(), ring_sum([msg_a.numpy(), msg_b.numpy()]), t_j2.numpy()])
    err = result - np.floor_divide(x, 2 ** bits)
    assert set(np.unique(err)) <= {0, 1}, np.unique(err)
    two_round_b, _ = ops.puma_trunc_pr_finish_b(m_b, m_a, extras, corr, keys[d], stream=s,
                                                bits=bits)
    np.testing.assert_array_equal(two_round_b.numpy(), msg_b.numpy())  # B's message as before
    with pytest.raises(tf.errors.InvalidArgumentError, match="msb bits"):
        ops.puma_trunc_pr_finish_b_msb(m_b, c_msb[:-1], corr, keys[d], stream=s, bits=bits)


# --- boolean AND local step -----------------------------------------------------------------
def xor_replicated(x: np.ndarray) -> list[np.ndarray]:
    s0, s1 = random_ring(x.shape), random_ring(x.shape)
    return [s0, s1, x ^ s0 ^ s1]


def test_and_shares_xor_to_the_and():
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    s = 4
    x, y = random_ring([5, 33]), random_ring([5, 33])
    xs, ys = xor_replicated(x), xor_replicated(y)
    z = [ops.puma_and_share(xs[i], xs[(i + 1) % 3], ys[i], ys[(i + 1) % 3], keys[i],
                            keys[(i + 1) % 3], stream=s).numpy() for i in range(3)]
    np.testing.assert_array_equal(z[0] ^ z[1] ^ z[2], x & y)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("shape", [[7, 11], [100_003]])  # the large one splits over threads
def test_and_packed_share_segments(portable, shape):
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    s = 8
    x1, y1, x2, y2 = (random_ring(shape) for _ in range(4))
    seg1, seg2 = [0, 3, 40, 62], list(range(63))
    shares = [xor_replicated(v) for v in (x1, x2, y1, y2)]
    z = []
    for i in range(3):
        j = (i + 1) % 3
        z.append(ops.puma_and_packed_share(
            [shares[0][i], shares[1][i]], [shares[0][j], shares[1][j]],
            [shares[2][i], shares[3][i]], [shares[2][j], shares[3][j]], keys[i], keys[j], stream=s,
            positions=seg1 + seg2, y_positions=[0, 1, 37, 59] + seg2,
            counts=[len(seg1), len(seg2)], portable=portable).numpy())
    packed = z[0] ^ z[1] ^ z[2]
    out1, out2 = ops.puma_bit_unpack_segments(packed, x1, N=2, positions=seg1 + seg2,
                                              counts=[len(seg1), len(seg2)], portable=portable)
    m2 = np.uint64(sum(1 << p for p in seg2))
    # segment 1 pairs x1 bits (0, 3, 40, 62) with y1 bits (0, 1, 37, 59)
    x1u, y1u = x1.view(np.uint64), y1.view(np.uint64)
    expected1 = np.zeros_like(x1u)
    for px, py in zip(seg1, [0, 1, 37, 59]):
        bit = ((x1u >> np.uint64(px)) & (y1u >> np.uint64(py))) & np.uint64(1)
        expected1 |= bit << np.uint64(px)
    np.testing.assert_array_equal(out1.numpy().view(np.uint64), expected1)
    np.testing.assert_array_equal(out2.numpy().view(np.uint64), (x2 & y2).view(np.uint64) & m2)


def test_packed_and_rejects_unsorted_positions():
    w = random_ring([3])
    key = tf.constant(random_ring([2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="strictly increasing"):
        ops.puma_and_packed_share([w], [w], [w], [w], key, key, stream=1,
                                  positions=[5, 1], y_positions=[0, 1], counts=[2])


def _msb_rounds(x: np.ndarray, keys=None, low_bit: int = 0, width: int = 64, shares=None,
                portable: bool = False):
    """Runs the fused MSB kernels of the three parties on x's arithmetic shares (as three
    parties would, messages passed by hand), in the window (low_bit, width):
    ([bit_own, bit_next] per party, messages, shares)."""
    from tf_puma.protocols import boolean  # noqa: PLC0415

    if shares is None:
        a0, a1 = random_ring(x.shape), random_ring(x.shape)
        with np.errstate(over="ignore"):
            shares = [a0, a1, x - a0 - a1]  # int64 wraps mod 2^64
    keys = keys or [tf.constant(random_ring([2])) for _ in range(3)]
    state, sent, log = [], [], []
    for i in range(3):
        st, z = ops.puma_msb_start(shares[i], shares[(i + 1) % 3], keys[i], keys[(i + 1) % 3],
                                   stream=100, party=i, low_bit=low_bit, width=width,
                                   portable=portable)
        state.append(st)
        sent.append(z)
    for r in range(1, boolean.msb_rounds(width)):
        got = [sent[(i + 1) % 3] for i in range(3)]
        log.append([z.numpy() for z in sent])
        for i in range(3):
            state[i], sent[i] = ops.puma_msb_step(state[i], sent[i], got[i], keys[i],
                                                  keys[(i + 1) % 3], stream=100 + r, round=r,
                                                  width=width)
    log.append([z.numpy() for z in sent])
    bits = [[b.numpy() for b in ops.puma_msb_finish(state[i], sent[i], sent[(i + 1) % 3],
                                                      shares[i], width=width,
                                                      portable=portable)]
            for i in range(3)]
    return bits, log, shares


@pytest.mark.parametrize("portable", [False, True])  # AVX-512 and scalar transposition
@pytest.mark.parametrize("shape", [[5, 13], [64], [70_001]])  # the large one splits over threads
def test_msb_rounds_give_the_sign_bit(portable, shape):
    """PumaMsbStart/Step/Finish on three parties' shares give x < 0 in bit 0 of a replicated
    XOR sharing, at the ring's edges too, shaped as x; each round's message has the plan's size
    (boolean.msb_plan: 63, 62, then the Kogge-Stone levels' ANDs, 244 bits per value), a word
    per AND bit and block of 64 values (the last block padded)."""
    from tf_puma.protocols import boolean  # noqa: PLC0415

    x = random_ring(shape).reshape(-1)
    edges = np.array([0, -1, 1, 2**63 - 1, -2**63, -2**62, 2**62, -2**62 - 1, 2**62 - 1,
                      -(2**31), 2**31], dtype=np.int64)
    x[:len(edges)] = edges
    x = x.reshape(shape)
    bits, log, _ = _msb_rounds(x, portable=portable)
    blocks = (x.size + 63) // 64
    widths = [[63], [62]] + [[len(g)] + ([len(p)] if p else []) for _, g, p in boolean.msb_plan()]
    assert sum(sum(w) for w in widths) == 244
    for r, messages in enumerate(log):
        assert all(m.shape == (sum(widths[r]) * blocks,) for m in messages)
    for i in range(3):  # replicated: party i's second share is party i+1's first
        np.testing.assert_array_equal(bits[i][1], bits[(i + 1) % 3][0])
        assert bits[i][0].shape == tuple(shape)
    msb = bits[0][0] ^ bits[1][0] ^ bits[2][0]
    np.testing.assert_array_equal(msb, (x < 0).astype(np.int64))


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("n", [64, 200])
def test_msb_round_zero_is_bit_sliced(portable, n):
    """The layout msb_plan.h states, against numpy: the three parties' round-0 messages XOR to
    (A ^ C) & (B ^ C) (A, B, C the shares' windows) with plane j, word b, bit e holding bit j of
    value 64 b + e, planes for bits 0..width-2 in order, the last block's padding 0."""
    low_bit, width = 5, 38
    x = random_ring([n])
    _, log, shares = _msb_rounds(x, low_bit=low_bit, width=width, portable=portable)
    blocks = (n + 63) // 64
    got = (log[0][0] ^ log[0][1] ^ log[0][2]).view(np.uint64).reshape(width - 1, blocks)
    a, b, c = ((s.view(np.uint64) >> np.uint64(low_bit)) for s in shares)
    want_values = (a ^ c) & (b ^ c)
    for j in range(width - 1):
        plane = (want_values >> np.uint64(j)) & np.uint64(1)
        padded = np.zeros(blocks * 64, np.uint64)
        padded[:n] = plane
        words = (padded.reshape(blocks, 64) << np.arange(64, dtype=np.uint64)).sum(
            axis=1, dtype=np.uint64)
        np.testing.assert_array_equal(got[j], words)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("low_bit, width", [(9, 33), (0, 33), (20, 44), (3, 18), (0, 17),
                                            (56, 8)])
def test_msb_in_a_window_is_the_top_bit_of_the_windows_sum(portable, low_bit, width):
    """In a window the kernels return bit width - 1 of sum_j (x_j >> low_bit) mod 2^width, for
    any shares (rounds and message sizes from boolean.msb_plan(width)); for values inside the
    window's range that is [x < 0], but for 0 <= x < 2^(low_bit + 1) (compare.Window)."""
    from tf_puma.protocols import boolean  # noqa: PLC0415

    n = 70_001
    edge = 2 ** (low_bit + width - 1) - 2 ** (low_bit + 2)  # the window's range limit
    near = 2 ** (low_bit + 1)
    x = rng.integers(-edge, edge + 1, size=n, dtype=np.int64)
    special = [0, 1, -1, edge, -edge, near - 1, near, -near, 2 ** low_bit, -(2 ** low_bit)]
    x[:len(special)] = special
    bits, log, shares = _msb_rounds(x, low_bit=low_bit, width=width, portable=portable)
    widths = ([[width - 1], [width - 2]]
              + [[len(g)] + ([len(p)] if p else []) for _, g, p in boolean.msb_plan(width)])
    assert len(log) == boolean.msb_rounds(width) == len(widths)
    for r, messages in enumerate(log):
        assert all(m.shape == (sum(widths[r]) * ((n + 63) // 64),) for m in messages)
    for i in range(3):
        np.testing.assert_array_equal(bits[i][1], bits[(i + 1) % 3][0])
    got = (bits[0][0] ^ bits[1][0] ^ bits[2][0]).astype(bool)
    mask = np.uint64(2 ** width - 1)
    windows = sum((s.view(np.uint64) >> np.uint64(low_bit)) & mask for s in shares) & mask
    np.testing.assert_array_equal(got, (windows >> np.uint64(width - 1)).astype(bool))
    exact = (x < 0) | (x >= near)
    np.testing.assert_array_equal(got[exact], x[exact] < 0)
    if low_bit:  # the low bits' carry flips some small positives, never a negative
        assert got[(x >= 0) & (x < near)].any()
    if low_bit + width < 63:  # outside the range a window wraps: 1.5 times it reads negative
        far = np.full(64, 3 * 2 ** (low_bit + width - 2), np.int64)
        far_bits, _, _ = _msb_rounds(far, low_bit=low_bit, width=width, portable=portable)
        assert (far_bits[0][0] ^ far_bits[1][0] ^ far_bits[2][0]).all()


def test_msb_refuses_windows_outside_the_word():
    x = random_ring([4])
    key = tf.constant(random_ring([2]))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="leaves the"):
        ops.puma_msb_start(x, x, key, key, stream=1, party=0, low_bit=40, width=33)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="width must be"):
        ops.puma_msb_start(x, x, key, key, stream=1, party=0, width=7)
    st, z = ops.puma_msb_start(x, x, key, key, stream=1, party=0, width=33)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="round must be"):
        ops.puma_msb_step(st, z, z, key, key, stream=2, round=7, width=33)
    with pytest.raises(tf.errors.InvalidArgumentError, match="MSB state must be"):
        ops.puma_msb_step(st, z, z, key, key, stream=2, round=1, width=34)


def test_msb_finish_refuses_a_like_of_other_blocks():
    """PumaMsbFinish shapes its bits as `like` (PumaMsbStart's x_own), which must have the
    state's blocks: 65 values are two blocks, 64 one."""
    from tf_puma.protocols import boolean  # noqa: PLC0415

    x, key = random_ring([64]), tf.constant(random_ring([2]))
    st, z = ops.puma_msb_start(x, x, key, key, stream=1, party=0)
    for r in range(1, boolean.msb_rounds(64)):
        st, z = ops.puma_msb_step(st, z, z, key, key, stream=1 + r, round=r)
    own, _ = ops.puma_msb_finish(st, z, z, x.reshape(8, 8))
    assert own.shape == (8, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="has 65 values but the MSB state"):
        ops.puma_msb_finish(st, z, z, random_ring([65]))


def test_msb_messages_are_masked_and_refused_at_the_wrong_size():
    """The same secret twice with the same keys and streams gives the same messages; other
    keys give other messages (the zero share masks them). A message of another round's size is
    named."""
    x = random_ring([64])
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    other = [tf.constant(random_ring([2])) for _ in range(3)]
    _, log_other, _ = _msb_rounds(x, other)
    _, log, _ = _msb_rounds(x, keys)
    bits_other = np.unpackbits(log_other[3][0].view(np.uint8))
    bits_log = np.unpackbits(log[3][0].view(np.uint8))
    assert 0.4 < np.mean(bits_other != bits_log) < 0.6  # fresh masks: half the bits differ
    st, z = ops.puma_msb_start(x, x, keys[0], keys[1], stream=1, party=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected round 1's 62 packed"):
        ops.puma_msb_step(st, z, z, keys[0], keys[1], stream=2, round=2)


def test_b2a_roles_give_arithmetic_shares_of_the_bit():
    """PumaB2aParty0/1/2 and PumaB2aFinish, messages passed by hand: the three parties'
    arithmetic shares are replicated and sum to bit 0 of b_0 ^ b_1 ^ b_2 (other bits ignored)."""
    b = rng.integers(0, 2, size=[9, 31]).astype(np.int64)
    xs = xor_replicated(b)
    xs = [w | (random_ring(b.shape) & ~np.int64(1)) for w in xs]  # junk above bit 0
    keys = [tf.constant(random_ring([2])) for _ in range(3)]
    s = 77
    c1, y0_own, y0_next = ops.puma_b2a_party0(xs[0], xs[1], keys[0], keys[1], stream=s)
    m2, d2, y2_next = ops.puma_b2a_party2(xs[2], keys[0], stream=s)
    m1, y1_own, d1 = ops.puma_b2a_party1(xs[2], c1, keys[1], stream=s)
    y1_next = ops.puma_b2a_finish(d1, m1, m2)
    y2_own = ops.puma_b2a_finish(d2, m2, m1)
    pairs = [(y0_own, y0_next), (y1_own, y1_next), (y2_own, y2_next)]
    for i in range(3):
        np.testing.assert_array_equal(pairs[i][1].numpy(), pairs[(i + 1) % 3][0].numpy())
    with np.errstate(over="ignore"):
        total = pairs[0][0].numpy() + pairs[1][0].numpy() + pairs[2][0].numpy()
    np.testing.assert_array_equal(total, b)
    assert len(np.unique(c1.numpy())) > 200  # c_1 is masked by c_0, not the bit itself


# --- the PRG draw table (custom_ops/prg_draws.h) --------------------------------------------
def _kernel_sources() -> str:
    import glob, os  # noqa: E401, PLC0415
    root = os.path.join(os.path.dirname(__file__), "..", "custom_ops")
    return "\n".join(open(p, encoding="utf-8").read()
                     for p in sorted(glob.glob(os.path.join(root, "*_kernels.cc"))))


def test_draw_table_lists_every_draw_of_every_kernel():
    """The audit reads the table; the kernels must do what it says: every kernel class that
    draws is registered for an op listed there, with as many draws and the same subs."""
    import re  # noqa: PLC0415
    from tf_puma import audit  # noqa: PLC0415

    source = _kernel_sources()
    header = open(__file__.replace("tests/test_kernels.py", "custom_ops/prg_draws.h"),
                  encoding="utf-8").read()
    constants = {m[0]: int(m[1]) for m in re.findall(r"constexpr uint32_t (k\w+) = (\d+);",
                                                      header)}
    registered = dict((cls, op) for op, cls in re.findall(
        r'REGISTER_KERNEL_BUILDER\(Name\("(\w+)"\)[^;]*?,\s*(\w+)\);', source))
    drawn: dict[str, list] = {}
    for cls, body in re.findall(r"class (\w+) : public (?:Stream)?OpKernel \{(.*?)\n\};", source,
                                re.S):
        subs = []
        for sub in re.findall(r"(?:PrgFill|PrgSubtractFrom)\(\w+, stream, ([\w:]+),", body):
            subs.append(constants[sub.split("::")[-1]] if "::" in sub else -1)
        subs += [constants["kZeroShare"]] * 2 * (body.count("FillZeroShare(")
                                                 + body.count("FillXorZeroShare("))
        if subs:
            drawn[registered[cls]] = sorted(subs)
    table = audit.draw_table()
    assert set(drawn) == set(table)
    for op, entries in table.items():
        assert sorted(e.sub for e in entries) == drawn[op], op


def test_prg_refuses_draws_past_its_block_counter():
    # 2^33 ring elements = 2^32 AES blocks: one more would carry into the sub field (another
    # draw's counters). Refused before anything is allocated.
    key, s = tf.constant(random_ring([2])), 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds 2\\^33"):
        ops.puma_prg_uniform(key, [2 ** 33 + 2], stream=s)
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds 2\\^33"):
        ops.puma_trunc_pr_deal(key, key, [2, 2 ** 32 + 1], stream=s, bits=4)
