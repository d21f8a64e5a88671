"""What each party sees: shares and received messages independent of the secret.

Every tensor a party receives goes through runtime.transfer (checked by audit_graph on the traced
graph), so recording transfers records the party's whole view besides its own randomness.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_puma
from tf_puma import runtime
from tf_puma.protocols import approx, compare, nn

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
    assert runtime.audit_graph(concrete.graph) == []
    # Every protocol family: comparisons, bit injection, polynomials, softmax, LayerNorm.
    def many(a):
        s = tf_puma.share(a)
        return tf_puma.reveal(nn.layer_norm(nn.softmax(approx.gelu(s)) + compare.relu(s)))

    layers = tf.function(many)
    wide = layers.get_concrete_function(tf.TensorSpec([2, 8], tf.float32))
    assert runtime.audit_graph(wide.graph) == []
    # Client -> party messages: keys and the masked share x_2 only; party -> client: reveal.
    names = [op.name for op in concrete.graph.get_operations()
             if op.name.split("/")[-1].startswith(runtime.TRANSFER_PREFIX)]
    from_client = [n for n in names if "_client_to_" in n]
    assert len(from_client) == 2 * 6  # per input: c0, c1 to P0, c1 to P1, c0 to P2, x2 to P1, P2
    to_client = [n for n in names if n.endswith("_to_client") or "_to_client_" in n]
    assert len(to_client) == 2


def test_audit_catches_an_implicit_transfer(cluster):
    @tf.function
    def leaky(a):
        sa = tf_puma.share(a)
        with tf.device(runtime.device(1)):
            bad = sa.pairs[0][0] + 1  # party 0's share used on party 1
        return bad

    concrete = leaky.get_concrete_function(tf.TensorSpec([2], tf.float32))
    assert any("crosses devices" in p for p in runtime.audit_graph(concrete.graph))
