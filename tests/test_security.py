"""What each party sees: shares and received messages independent of the secret.

Every tensor a party receives goes through runtime.transfer (checked by audit_graph on the traced
graph), so recording transfers records the party's whole view besides its own randomness.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_puma
from tf_puma import _ops, audit, bundle, config, runtime
from tf_puma.fixedpoint import FixedPoint
from tf_puma.protocols import approx, arithmetic, boolean, compare, nn
from tf_puma.sharing import Shared
from tests.conftest import TEST_BUNDLE

N = 4096  # values per secret


def views_for(secret: np.ndarray, repeats: int) -> list[list[np.ndarray]]:
    """For each party: its two input shares and every message it receives, per run, stacked."""

    @tf.function
    def run(a, b):
        with runtime.record_views() as rec:
            sa, sb = tf_puma.share(a), tf_puma.share(b)
            out = sa * sb
            square = lambda t: tf.reshape(t, [64, 64])  # noqa: E731
            out = tf_puma.matmul(out.map_local(square), sb.map_local(square))
            revealed = tf_puma.reveal(out)
        views = []
        for i in range(3):
            views.append([sa.pairs[i][0], sa.pairs[i][1], *rec.received[i]])
        return revealed, views

    runs = [run(tf.constant(secret), tf.constant(secret[::-1].copy()))[1] for _ in range(repeats)]
    return [[np.stack([r[i][j].numpy() for r in runs]) for j in range(len(runs[0][i]))]
            for i in range(3)]


def bit_frequencies(values: np.ndarray) -> np.ndarray:
    u = values.reshape(-1).view(np.uint64)
    bits = (u[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return bits.mean(axis=0)


@pytest.fixture(scope="module")
def two_views(cluster):
    rng = np.random.default_rng(5)
    small = np.zeros(N)
    large = rng.normal(size=N) * 1000
    return views_for(small, 3), views_for(large, 3)


def test_every_received_tensor_is_uniform_and_secret_independent(two_views):
    view_a, view_b = two_views
    for party in range(3):
        assert len(view_a[party]) == len(view_b[party]) > 2
        for msg_a, msg_b in zip(view_a[party], view_b[party]):
            if msg_a.dtype != np.int64 or msg_a.size < 1000:
                continue  # keys (checked apart) and scalars
            fa, fb = bit_frequencies(msg_a), bit_frequencies(msg_b)
            tol = 6 * 0.5 / np.sqrt(msg_a.size)  # 6 sigma of a fair bit's frequency
            assert np.all(np.abs(fa - 0.5) < tol), (party, fa)
            assert np.all(np.abs(fb - 0.5) < tol), (party, fb)


def test_shares_change_between_runs(two_views):
    view_a, _ = two_views
    for party in range(3):
        for msg in view_a[party]:
            assert not np.array_equal(msg[0], msg[1]), "a message repeated across calls"


def test_received_values_do_not_equal_the_secret(two_views):
    # A zero secret would show up as many zero words if any party received it in clear.
    view_a, _ = two_views
    for party in range(3):
        for msg in view_a[party]:
            if msg.size >= 1000:
                assert np.mean(msg == 0) < 0.01


def test_graph_has_no_cross_device_edge_outside_transfer(cluster):
    @tf.function
    def run(a, b):
        sa, sb = tf_puma.share(a), tf_puma.share(b)
        return tf_puma.reveal(tf_puma.trunc(sa @ sb + sa @ sb, 1) * 0.5)

    concrete = run.get_concrete_function(tf.TensorSpec([4, 4], tf.float32),
                                         tf.TensorSpec([4, 4], tf.float32))
    assert audit.audit_graph(concrete.graph) == []
    # Every protocol family: comparisons, bit injection, polynomials, softmax, LayerNorm.
    def many(a):
        s = tf_puma.share(a)
        return tf_puma.reveal(nn.layer_norm(nn.softmax(approx.gelu(s)) + compare.relu(s)))

    layers = tf.function(many)
    wide = layers.get_concrete_function(tf.TensorSpec([2, 8], tf.float32))
    assert audit.audit_graph(wide.graph) == []
    # Client -> party messages: keys and the masked share x_2 only; party -> client: reveal.
    # (Each sending op lists its receivers; transfer() adds no op of its own.)
    sends = [(audit.holder_of(op.device), dst) for op in concrete.graph.get_operations()
             for _, dst in audit.sent_to(op.node_def)]
    from_client = [dst for src, dst in sends if src == "client"]
    assert sorted(from_client) == sorted(["0", "0", "1", "1", "2", "2"] * 2)  # per input: c0, c1
    # to P0, c1 to P1, c0 to P2, x2 to P1 and P2
    assert len([src for src, dst in sends if dst == "client"]) == 2


def test_a_transfer_adds_no_op_and_marks_the_sender(cluster):
    """transfer() returns the tensor itself and lists the receivers on its op (TensorFlow sends
    it once per receiving device): no Identity per message in the graph."""
    @tf.function
    def run(a):
        with tf.device(runtime.device(0)):
            x = a * 2
        before = len(tf.compat.v1.get_default_graph().get_operations())
        at_1, at_2 = runtime.transfer(x, 0, 1), runtime.transfer(x, 0, 2)
        assert at_1 is x and at_2 is x
        assert len(tf.compat.v1.get_default_graph().get_operations()) == before
        assert audit.sent_to(x.op.node_def) == [(0, "1"), (0, "2")]
        with tf.device(runtime.device(1)):
            y = at_1 + 1
        with tf.device(runtime.device(2)):
            z = at_2 + 1
        return runtime.transfer(y, 1, "client"), runtime.transfer(z, 2, "client")

    concrete = run.get_concrete_function(tf.TensorSpec([3], tf.float32))
    assert audit.audit_graph(concrete.graph) == []
    y, z = run(tf.constant([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(y.numpy(), [3.0, 5.0, 7.0])
    np.testing.assert_array_equal(z.numpy(), y.numpy())

def test_audit_catches_an_implicit_transfer(cluster):
    @tf.function
    def leaky(a):
        sa = tf_puma.share(a)
        with tf.device(runtime.device(1)):
            bad = sa.pairs[0][0] + 1  # party 0's share used on party 1
        return bad

    concrete = leaky.get_concrete_function(tf.TensorSpec([2], tf.float32))
    assert any("crosses devices" in p for p in audit.audit_graph(concrete.graph))

    @tf.function
    def sent_elsewhere(a):
        sa = tf_puma.share(a)
        at_2 = runtime.transfer(sa.pairs[0][0], 0, 2)
        with tf.device(runtime.device(1)):
            return at_2 + 1  # sent to party 2, read on party 1

    concrete = sent_elsewhere.get_concrete_function(tf.TensorSpec([2], tf.float32))
    assert any("crosses devices" in p for p in audit.audit_graph(concrete.graph))

    @tf.function
    def other_output(a):
        with tf.device(runtime.device(0)):
            parts = tf.split(a, 2)  # one op, two outputs
        sent = runtime.transfer(parts[0], 0, 1)
        with tf.device(runtime.device(1)):
            return sent + parts[1]  # output 1 was never sent to party 1

    concrete = other_output.get_concrete_function(tf.TensorSpec([4], tf.float32))
    problems = audit.audit_graph(concrete.graph)
    assert len(problems) == 1 and "crosses devices" in problems[0], problems


# -- PRG outputs used once: the static audit and each party's view unmasked with its own keys --
#
# The fixed-point product once handed its TruncPr the product's own zero-share stream: party A
# then held F(k_{j+1}, s, 0), the very mask on B's message m_B = z_B + F(k_{j+2}, s, 0), and read
# B's cross terms in clear (x to 1 ulp for a square; the weights over repeated calls for x @ W).
# Every message above was uniform on its own, so the tests above passed. The two tests below
# look for exactly that class of leak, and are shown to catch the old product (kept here).


def old_fused_product(x: Shared, y: Shared, matrix: bool = False) -> Shared:
    """The fixed-point product before the fix (mul, or matmul with `matrix`): its TruncPr drew
    the product's zero-share stream. Kept only so the tests below are checked against it."""
    ops = _ops.load()
    keys = runtime.prss()
    stream = runtime.new_stream("zero_share")
    z = []
    for i in range(3):
        with tf.device(runtime.device(i)):
            local = ops.puma_mat_mul_share if matrix else ops.puma_mul_share
            z.append(local(*x.pairs[i], *y.pairs[i], keys.own[i], keys.next[i],
                           stream=stream))
    a, b, d = roles = (stream % 3, (stream + 1) % 3, (stream + 2) % 3)
    return arithmetic._trunc_pr(z[a], z[b], z[d], z[d], z[a].shape, y.frac_bits,  # noqa: SLF001
                                stream, x.frac_bits, max(x.depth, y.depth), roles)


def _weight() -> Shared:
    return bundle.party_weight("test/w", [16, 8], TEST_BUNDLE)


def _family_graphs() -> dict:
    """One small graph per protocol family, as the library builds them."""
    def ids_embedding(ids):
        return nn.embedding(ids, _weight())
    return {
        "mul": lambda a: (lambda s: s * s)(tf_puma.share(a)),
        "matmul": lambda a: tf_puma.share(a) @ _weight(),
        "trunc": lambda a: tf_puma.trunc(tf_puma.share(a), 5),
        "less": lambda a: compare.less(tf_puma.share(a), tf_puma.share(a[::-1])),
        "equal": lambda a: compare.equal(tf_puma.share(a), 0.5),
        "a2b": lambda a: boolean.b2a(boolean.a2b(tf_puma.share(a))),
        "gelu": lambda a: approx.gelu(tf_puma.share(a)),
        "softmax": lambda a: nn.softmax(tf_puma.share(a)),
        "layer_norm": lambda a: nn.layer_norm(tf_puma.share(a)),
        "reciprocal": lambda a: approx.reciprocal(tf_puma.share(a)),
        "rsqrt": lambda a: approx.rsqrt(tf_puma.share(a)),
        "argmax": lambda a: compare.argmax(tf_puma.share(a)),
        "embedding": ids_embedding,
    }


def _family_spec(name: str) -> tf.TensorSpec:
    if name == "embedding":
        return tf.TensorSpec([4, 6], tf.int32)
    if name == "matmul":
        return tf.TensorSpec([4, 16], tf.float64)
    return tf.TensorSpec([4, 16], tf.float64)


def test_prg_outputs_used_once(cluster):
    """No party draws any (key, stream, sub) twice and no stream serves two protocol steps, in a
    graph of every protocol family, and the audit catches the old fused product."""
    families = set()
    for name, build in _family_graphs().items():
        graph = tf.function(lambda a, b=build: tf_puma.reveal(b(a))).get_concrete_function(
            _family_spec(name)).graph
        assert audit.audit_graph(graph) == [], name
        draws = audit.prg_draws(graph)
        assert draws, name
        keys = {(d.holder, d.key, d.stream, d.sub) for d in draws}
        assert len(keys) == len(draws), name  # the same check, stated directly
        families |= {d.family for d in draws}
    assert families == set(runtime.STREAM_FAMILIES)
    assert {e.family for v in audit.draw_table().values() for e in v} == set(
        runtime.STREAM_FAMILIES)

    for matrix in (False, True):
        def old(a, matrix=matrix):
            s = tf_puma.share(a)
            return tf_puma.reveal(old_fused_product(s, _weight() if matrix else s, matrix))
        graph = tf.function(old).get_concrete_function(tf.TensorSpec([4, 16], tf.float64)).graph
        problems = audit.audit_graph(graph)
        assert any("twice" in p for p in problems), problems
        assert any("shared by two protocol steps" in p for p in problems), problems


def test_audit_follows_function_calls_and_loops(cluster):
    """Draws inside nested functions count for the caller's execution: the same function called
    twice with the caller's keys draws twice; a loop body drawing with outside keys repeats."""
    @tf.function(autograph=False)
    def inner(x0, x1, y0, y1, k_own, k_next, stream):
        return _ops.load().puma_mul_share(x0, x1, y0, y1, k_own, k_next, stream=stream)

    def twice(a):
        s = tf_puma.share(a)
        keys = runtime.prss()
        with tf.device(runtime.device(0)):
            stream = runtime.new_stream("zero_share")  # a Python int: the same attribute
            z1 = inner(*s.pairs[0], *s.pairs[0], keys.own[0], keys.next[0], stream)
            z2 = inner(*s.pairs[0], *s.pairs[0], keys.own[0], keys.next[0], stream)
        return z1 + z2

    graph = tf.function(twice).get_concrete_function(tf.TensorSpec([8], tf.float64)).graph
    problems = audit.audit_graph(graph)
    assert any("twice" in p for p in problems), problems

    def loop(a):
        s = tf_puma.share(a)
        keys = runtime.prss()
        with tf.device(runtime.device(0)):
            stream = runtime.new_stream("zero_share")
            mul = _ops.load().puma_mul_share
            _, out = tf.while_loop(
                lambda i, z: i < 3,
                lambda i, z: (i + 1, mul(*s.pairs[0], *s.pairs[0], keys.own[0],
                                         keys.next[0], stream=stream) + z),
                (tf.constant(0), tf.zeros([8], tf.int64)))
        return out

    graph = tf.function(loop).get_concrete_function(tf.TensorSpec([8], tf.float64)).graph
    assert any("loop body" in p for p in audit.audit_graph(graph))


def test_audit_flags_unplaced_puma_ops(cluster):
    def unplaced(a):
        s = tf_puma.share(a)
        keys = runtime.prss()
        return _ops.load().puma_prg_uniform(keys.own[0], tf.constant([8], tf.int64),
                                            stream=1) + s.pairs[0][0]

    graph = tf.function(unplaced).get_concrete_function(tf.TensorSpec([8], tf.float64)).graph
    assert any("has no device" in p for p in audit.audit_graph(graph))


# View test: every message a party receives, after it removes any PRG output it can compute.

def _bits16(values: np.ndarray) -> np.ndarray:
    """The 8 lowest and 8 highest bits of each uint64 (rows of [..., n] -> [..., n, 16]):
    where a payload that is not uniform shows (products and bits low, small values high)."""
    b = values.view(np.uint8).reshape(*values.shape, 8)[..., [0, 7]]
    return np.unpackbits(b, axis=-1)


def _gf2_rank(m: np.ndarray) -> int:
    m = m.copy() % 2
    rank = 0
    for col in range(m.shape[1]):
        rows = np.nonzero(m[rank:, col])[0]
        if rows.size == 0:
            continue
        pivot = rank + rows[0]
        m[[rank, pivot]] = m[[pivot, rank]]
        others = np.nonzero(m[:, col])[0]
        others = others[others != rank]
        m[others] ^= m[rank]
        rank += 1
        if rank == m.shape[0]:
            break
    return rank


class ViewFinding(AssertionError):
    pass


def check_views(build, arrays: list[np.ndarray], shared: list[bool], calls: int = 2,
                secret_index: int = 0, linear_in: tuple[int, int] | None = None) -> int:
    """Runs build(*inputs) -> Shared `calls` times and, for each party and each message it
    receives, removes (-, +, ^) every PRG output F(key, stream, sub) of that execution that the
    party can compute (keys it drew with; streams and subs from the static draw list; one size),
    then requires every residual to be uniform in its 8 low and 8 high bits (7 sigma) and
    uncorrelated with the secret's encoding. With `linear_in` = (rows, cols) it also requires
    that no residual of that shape be, mod 2, a linear function of the party's own shares of
    input `secret_index` and the secret itself (the weight attack on x @ W). Returns the number
    of residuals checked; raises ViewFinding on a leak."""
    fxp = FixedPoint()

    @tf.function(autograph=False)
    def run(*xs):
        with runtime.record_views() as rec:
            args = [tf_puma.share(x) if s else x for x, s in zip(xs, shared)]
            revealed = tf_puma.reveal(build(*args), tf.float64)
        graph = tf.compat.v1.get_default_graph()
        keys = {op.name: op.outputs[0] for op in graph.get_operations() if op.type == "PumaNewKey"}
        own_shares = [[list(args[secret_index].pairs[i]) for i in range(3)]
                      if shared[secret_index] else []]
        return revealed, rec.received, keys, own_shares

    specs = [tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in arrays]
    concrete = run.get_concrete_function(*specs)
    draws = audit.prg_draws(concrete.graph)
    size = {d.node: concrete.graph.get_operation_by_name(d.node).outputs[-1].shape.num_elements()
            for d in draws}
    ops = _ops.load()
    secret = arrays[secret_index]
    secret_enc = (fxp.encode_np(secret.astype(np.float64)) if secret.dtype.kind == "f"
                  else secret.astype(np.int64)).reshape(-1).view(np.uint64)
    checked = 0
    for _ in range(calls):
        _, received, keys, own_shares = run(*[tf.constant(a) for a in arrays])
        key_values = {name: v.numpy() for name, v in keys.items()}
        prg_cache: dict = {}

        def prg(key, stream, sub, n):
            k = (key, stream, sub, n)
            if k not in prg_cache:
                with tf.device(runtime.CLIENT_DEVICE):
                    prg_cache[k] = ops.puma_prg_uniform(
                        key_values[key], tf.constant([n], tf.int64), stream=stream,
                        sub=sub).numpy().view(np.uint64)
            return prg_cache[k]

        for party in range(3):
            held = {d.key for d in draws if d.holder == str(party)}
            candidates = sorted({(d.key, d.stream, d.sub, size[d.node]) for d in draws
                                 if d.key in held})
            for message in received[party]:
                m = message.numpy().reshape(-1)
                if m.dtype.itemsize == 4:  # a share mod 2^32: its low and high bytes tested
                    m = m.view(np.uint32).astype(np.uint64) * np.uint64(0x100000001)
                m = m.view(np.uint64)
                if m.size < 64:
                    continue  # keys and scalars
                masks = [prg(k, s, sub, m.size) for k, s, sub, n in candidates if n == m.size]
                residuals = [m[None]]
                if masks:
                    f = np.stack(masks)
                    residuals += [m - f, m + f, m ^ f]
                r = np.concatenate(residuals)
                checked += r.shape[0]
                tol = 7 * 0.5 / np.sqrt(m.size)
                freq = _bits16(r).mean(axis=1)
                if np.any(np.abs(freq - 0.5) > tol):
                    raise ViewFinding(f"party {party}: a residual of a {m.size}-value message is "
                                      f"not uniform (bit frequencies {freq.max():.3f} / "
                                      f"{freq.min():.3f}, tolerance {tol:.3f})")
                if m.size == secret_enc.size:
                    same = (_bits16(r) == _bits16(secret_enc)[None]).mean(axis=1)
                    if np.any(np.abs(same - 0.5) > tol):
                        raise ViewFinding(f"party {party}: a residual is correlated with the "
                                          "secret")
                if linear_in and m.size == linear_in[0] * linear_in[1]:
                    rows, cols = linear_in
                    x_own, x_next = (np.asarray(t).reshape(rows, -1)
                                     for t in own_shares[0][party])
                    known = np.concatenate([x_own & 1, x_next & 1,
                                            secret_enc.reshape(rows, -1) & 1], axis=1)
                    base = _gf2_rank(known.astype(np.uint8))
                    for res in r:
                        bit0 = (res.reshape(rows, cols) & np.uint64(1)).astype(np.uint8)
                        if _gf2_rank(np.concatenate([known.astype(np.uint8), bit0], 1)) == base:
                            raise ViewFinding(
                                f"party {party}: a residual is a fixed linear function of its "
                                "own input shares and the secret: it reveals the missing weight "
                                "share over calls")
    return checked


def _three_round(fn):
    """fn traced with 3-round truncations (Config.trunc_rounds = 3)."""
    def traced(*args):
        with config.use(config.Config(trunc_rounds=3)):
            return fn(*args)
    return traced


def _view_cases(rng) -> dict:
    x = rng.normal(size=512) * 8
    return {
        "mul(x, x), 3-round": (_three_round(lambda s: s * s), [x], [True]),
        "trunc, 3-round": (_three_round(lambda s: tf_puma.trunc(s, 7)), [x * 100], [True]),
        "softmax, 3-round": (_three_round(nn.softmax), [rng.normal(size=(8, 64)) * 4], [True]),
        "mul(x, x)": (lambda s: s * s, [x], [True]),
        "trunc": (lambda s: tf_puma.trunc(s, 7), [x * 100], [True]),
        "less": (lambda s, t: compare.less(s, t), [x, x[::-1].copy()], [True, True]),
        "coarse less": (lambda s, t: compare.less(s, t, compare.coarse(18)),
                        [x, x[::-1].copy()], [True, True]),
        "gelu": (approx.gelu, [np.linspace(-8, 8, 512)], [True]),
        "softmax": (nn.softmax, [rng.normal(size=(8, 64)) * 4], [True]),
        "layer_norm": (nn.layer_norm, [rng.normal(size=(8, 64)) * 3 + 1], [True]),
        "reciprocal": (approx.reciprocal, [np.exp(rng.uniform(-4, 9, size=512))], [True]),
        "embedding": (lambda ids: nn.embedding(ids, _weight()),
                      [rng.integers(0, 16, size=(8, 64)).astype(np.int32)], [False]),
        # rows on both sides of the direct / scaled squares switch (sum of squares 2^24)
        "rms_norm": (nn.rms_norm, [rng.normal(size=(8, 64)) * np.array(
            [0.05, 1, 30, 600, 900, 3000, 1, 9000])[:, None]], [True]),
        "silu": (nn.silu, [np.linspace(-12, 12, 512)], [True]),
        "argmax_index": (lambda s: compare.argmax_index(s),
                         [rng.normal(size=(8, 64)) * 4], [True]),
    }


@pytest.mark.parametrize("case", ["mul(x, x)", "trunc", "mul(x, x), 3-round", "trunc, 3-round",
                                  "softmax, 3-round", "less", "coarse less", "gelu", "softmax",
                                  "layer_norm", "reciprocal", "embedding", "rms_norm", "silu",
                                  "argmax_index"])
def test_views_after_unmasking_with_own_keys(cluster, case):
    """Each party's view stays uniform and secret-independent after it strips every PRG output
    it can compute, for two different secrets and two calls each."""
    for seed in (1, 2):
        build, arrays, shared = _view_cases(np.random.default_rng(seed))[case]
        assert check_views(build, arrays, shared) > 20


def test_views_of_a_matmul_with_a_fixed_weight(cluster):
    """x @ W with W from the bundles, two calls: no party's residual is a linear function of its
    own shares and x (which would give it W's missing share), nor biased."""
    x = np.random.default_rng(3).normal(size=(128, 16))
    checked = check_views(lambda s: s @ _weight(), [x], [True], calls=2, linear_in=(128, 8))
    assert checked > 100


def test_view_checks_catch_the_old_fused_product(cluster):
    """The two view checks above find the leak of the product before the fix."""
    x = np.random.default_rng(4).normal(size=512) * 8
    with pytest.raises(ViewFinding, match="not uniform"):
        check_views(lambda s: old_fused_product(s, s), [x], [True], calls=1)
    w = np.random.default_rng(5).normal(size=(128, 16))
    with pytest.raises(ViewFinding, match="linear function"):
        check_views(lambda s: old_fused_product(s, _weight(), matrix=True), [w], [True],
                    calls=1, linear_in=(128, 8))
