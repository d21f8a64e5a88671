"""Boolean (XOR) replicated sharing with 64 bits packed per int64 word, and conversions.

Refer to: ABY3 (Mohassel, Rindal, CCS 2018), Section 5.3 (bit decomposition / A2B with a
parallel-prefix adder) and Section 5.4 (bit injection), as in SPU's libspu/mpc/aby3.

A secret word w = w_0 ^ w_1 ^ w_2; party i holds (w_i, w_{i+1}), like `Shared`.

Costs per value (a word = 64 bits):
| protocol  | rounds | bits sent per party          |
|-----------|--------|------------------------------|
| xor, shifts, addends | 0 | 0                         |
| and_      | 1      | 64 per word                  |
| msb       | 8      | 244 (CSA 63, G 62, prefix levels 119: only the bits the carry into bit 63 needs) |
| msb, 38-bit window | 8 | 143 (CSA 37, G 36, prefix levels 70; 18-33 bits: 7 rounds) |
| a2b       | 8      | 724 (every carry)            |
| b2a       | 2      | 64                           |
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tf_puma import _ops, costs, runtime
from tf_puma.cluster import NUM_PARTIES
from tf_puma.sharing import SharePair, Shared

WORD_BITS = 64


class BoolShared:
    """XOR-replicated shares: `pairs[i] = (w_i, w_{i+1})` on party i, int64 words of 64 bits."""

    def __init__(self, pairs: Sequence[SharePair], depth: int = 0):
        self.pairs: tuple[SharePair, ...] = tuple((p[0], p[1]) for p in pairs)
        self.depth = depth

    @property
    def shape(self) -> tf.TensorShape:
        return self.pairs[0][0].shape

    def map_local(self, fn) -> "BoolShared":
        """A share-wise function that commutes with XOR (shifts, masks, reshapes)."""
        pairs = []
        for i, (a, b) in enumerate(self.pairs):
            with runtime.on(i):
                pairs.append((fn(a), fn(b)))
        return BoolShared(pairs, self.depth)

    def __xor__(self, other: "BoolShared") -> "BoolShared":
        return xor(self, other)

    def __and__(self, other: "BoolShared") -> "BoolShared":
        return and_(self, other)

    def __lshift__(self, bits: int) -> "BoolShared":
        pairs = []
        for i, (a, b) in enumerate(self.pairs):
            k = runtime.const_on(i, bits)
            with tf.device(runtime.device(i)):
                pairs.append((tf.bitwise.left_shift(a, k), tf.bitwise.left_shift(b, k)))
        return BoolShared(pairs, self.depth)


def xor(x: BoolShared, y: BoolShared) -> BoolShared:
    """x ^ y. Local."""
    pairs = []
    for i in range(NUM_PARTIES):
        with tf.device(runtime.device(i)):
            pairs.append((tf.bitwise.bitwise_xor(x.pairs[i][0], y.pairs[i][0]),
                          tf.bitwise.bitwise_xor(x.pairs[i][1], y.pairs[i][1])))
    return BoolShared(pairs, max(x.depth, y.depth))


def and_(x: BoolShared, y: BoolShared) -> BoolShared:
    """x & y, 64 ANDs per word.

    z_i = (x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i) ^ beta_i, then party i receives
    z_{i+1}. Cost: 1 round, one word per party per word.
    """
    ops = _ops.load()
    with costs.protocol("and", rounds=1), tf.name_scope("and"):
        keys = runtime.prss()
        stream = runtime.new_stream("xor_zero_share")
        z = []
        for i in range(NUM_PARTIES):
            with tf.device(runtime.device(i)):
                z.append(ops.puma_and_share(x.pairs[i][0], x.pairs[i][1], y.pairs[i][0],
                                            y.pairs[i][1], keys.own[i], keys.next[i],
                                            stream=stream))
        pairs = [(z[i], runtime.transfer(z[(i + 1) % NUM_PARTIES], (i + 1) % NUM_PARTIES, i))
                 for i in range(NUM_PARTIES)]
        return BoolShared(pairs, max(x.depth, y.depth) + 1)


def addends(x: Shared) -> tuple[BoolShared, BoolShared, BoolShared]:
    """Boolean sharings of the three arithmetic shares x_0, x_1, x_2 (x = their ring sum).

    x_j is known to parties j and j-1, so its XOR sharing (x_j in slot j, zeros elsewhere) needs
    no communication.
    """
    out = []
    for j in range(NUM_PARTIES):
        pairs = []
        for i in range(NUM_PARTIES):
            with tf.device(runtime.device(i)):
                a, b = x.pairs[i]
                zero = tf.zeros_like(a)
                pairs.append((a if i == j else zero, b if (i + 1) % NUM_PARTIES == j else zero))
        out.append(BoolShared(pairs, x.depth))
    return out[0], out[1], out[2]


def _and_at(work: Sequence[tuple[BoolShared, BoolShared, Sequence[int], int]]
            ) -> list[BoolShared]:
    """ANDs x & (y << shift) of several operand triples (x, y, positions, shift), each only at
    the listed bit positions (all >= shift), in one round.

    One PumaAndPackedShare per party packs the needed bits of every operand densely across
    values, ANDs them and adds the XOR zero share; the packed words are reshared and unpacked to
    their positions (other bits 0). A call sends sum(len(positions)) bits per value per party.
    """
    ops = _ops.load()
    keys = runtime.prss()
    with costs.protocol("and", rounds=1), tf.name_scope("and_packed"):
        stream = runtime.new_stream("xor_zero_share")
        positions = [p for _, _, pos, _ in work for p in pos]
        y_positions = [p - shift for _, _, pos, shift in work for p in pos]
        counts = [len(pos) for _, _, pos, _ in work]
        z = []
        for i in range(NUM_PARTIES):
            with tf.device(runtime.device(i)):
                z.append(ops.puma_and_packed_share(
                    [w[0].pairs[i][0] for w in work], [w[0].pairs[i][1] for w in work],
                    [w[1].pairs[i][0] for w in work], [w[1].pairs[i][1] for w in work],
                    keys.own[i], keys.next[i], stream=stream,
                    positions=positions, y_positions=y_positions, counts=counts))
        depth = max(max(w[0].depth, w[1].depth) for w in work) + 1
        unpacked = []
        for i in range(NUM_PARTIES):
            received = runtime.transfer(z[(i + 1) % NUM_PARTIES], (i + 1) % NUM_PARTIES, i)
            with tf.device(runtime.device(i)):
                like = work[0][0].pairs[i][0]
                unpacked.append(tuple(
                    ops.puma_bit_unpack_segments(packed, like, N=len(counts),
                                                 positions=positions, counts=counts)
                    for packed in (z[i], received)))
        return [BoolShared([(unpacked[i][0][k], unpacked[i][1][k]) for i in range(NUM_PARTIES)],
                           depth) for k in range(len(work))]


MSB_WIDTHS = range(8, 65)  # windows the kernels take (custom_ops/msb_plan.h kMinWidth..)


def msb_plan(width: int = WORD_BITS) -> list[tuple[int, list[int], list[int]]]:
    """For each Kogge-Stone shift s (1, 2, 4, ... below width - 1): the positions i where
    G[i] ^= P[i] & G[i-s] and P[i] = P[i] & P[i-s] are needed for the carry into the window's
    top bit width - 1 (backwards from G[width - 2]). custom_ops/msb_plan.h's Levels."""
    if width not in MSB_WIDTHS:
        raise ValueError(f"an MSB window is {MSB_WIDTHS.start} to {MSB_WIDTHS.stop - 1} bits "
                         f"wide, got {width}")
    need_g, need_p, plan = {width - 2}, set(), []
    for s in (32, 16, 8, 4, 2, 1):
        if s > width - 2:
            continue
        and_g = sorted(i for i in need_g if i >= s)
        and_p = sorted(i for i in need_p if i >= s)
        plan.append((s, and_g, and_p))
        need_p = need_p | set(and_g) | {i - s for i in and_p}
        need_g = need_g | {i - s for i in and_g}
    return plan[::-1]


def msb_rounds(width: int = WORD_BITS) -> int:
    """AND rounds of a width's MSB: carry-save AND, G, one per Kogge-Stone level (64: 8;
    18..33: 7)."""
    return 2 + len(msb_plan(width))


_LOW_63 = list(range(63))


def _propagate_generate(x: Shared) -> tuple[BoolShared, BoolShared]:
    """Steps 1-3 of the adder on x's three shares: (P, G) of X + Y, 2 rounds.

    Carry-save: S = A ^ B ^ C, carries M = ((A ^ C) & (B ^ C)) ^ C, Y = M << 1 (bits 0..62 of M
    suffice); then P = S ^ Y and G = S & Y (G_0 = 0 since Y_0 = 0).
    """
    a, b, c = addends(x)
    s = a ^ b ^ c
    (m,) = _and_at([(a ^ c, b ^ c, _LOW_63, 0)])
    carries = m ^ c
    (g,) = _and_at([(s, carries, _LOW_63[1:], 1)])
    return s ^ (carries << 1), g


def msb(x: Shared, low_bit: int = 0, width: int = WORD_BITS) -> BoolShared:
    """The most significant bit of x (its sign), in bit 0 of a boolean sharing; with a window
    (low_bit, width), bit width - 1 of w_0 + w_1 + w_2 mod 2^width for the shares' windows
    w_j = x_j >> low_bit (compare.Window says what that computes).

    1. Addends A, B, C of x as boolean sharings (local).
    2. Carry-save adder: S = A ^ B ^ C, M = ((A ^ C) & (B ^ C)) ^ C on bits 0..62, Y = M << 1.
    3. Generate G = S & Y on bits 0..62, propagate P = S ^ Y.
    4. Kogge-Stone levels s = 1, 2, ..., 32: G[i] ^= P[i] & G[i-s], P[i] &= P[i-s], computed only
       at the positions the carry into bit 63 depends on (119 ANDs over all levels).
    5. msb = P_63 ^ G_62 with the original P.
    (A window of width W: bits 0..W-2 in steps 2-3, levels s < W - 1, msb = P_(W-1) ^ G_(W-2).)
    Each party runs this as one fused kernel per round (PumaMsbStart, PumaMsbStep for rounds
    1..7, PumaMsbFinish; the rounds' bits in custom_ops/msb_plan.h, as msb_plan): the local
    XORs of a round are one op, bit-sliced (PumaMsbStart transposes each block of 64 values into
    one word per bit position, so every AND and shift after it is a whole-word operation), the
    state (P, G, original P) stays in one tensor per party, and each round's message is the AND
    share, a word per bit and block, masked with a fresh XOR zero share (its own stream).
    Cost: 8 rounds (log2 64 + 2); 63 + 62 + 119 = 244 bits per party per value. A 38-bit
    window: 8 rounds, 37 + 36 + 70 = 143 bits (33 bits: 7 rounds, 120).
    """
    ops = _ops.load()
    if low_bit < 0 or low_bit + width > WORD_BITS:
        raise ValueError(f"the window [{low_bit}, {low_bit + width}) leaves the 64-bit word")
    rounds = msb_rounds(width)
    with costs.protocol("msb", rounds=rounds), tf.name_scope("msb"):
        keys = runtime.prss()
        state, sent = [], []
        stream = runtime.new_stream("xor_zero_share")
        for i in range(NUM_PARTIES):
            with tf.device(runtime.device(i)):
                st, z = ops.puma_msb_start(x.pairs[i][0], x.pairs[i][1], keys.own[i],
                                           keys.next[i], stream=stream, party=i,
                                           low_bit=low_bit, width=width)
            state.append(st)
            sent.append(z)

        def received() -> list[tf.Tensor]:
            return [runtime.transfer(sent[(i + 1) % NUM_PARTIES], (i + 1) % NUM_PARTIES, i)
                    for i in range(NUM_PARTIES)]

        for round_ in range(1, rounds):
            got = received()
            stream = runtime.new_stream("xor_zero_share")
            for i in range(NUM_PARTIES):
                with tf.device(runtime.device(i)):
                    state[i], sent[i] = ops.puma_msb_step(
                        state[i], sent[i], got[i], keys.own[i], keys.next[i],
                        stream=stream, round=round_, width=width)
        got = received()
        pairs = []
        for i in range(NUM_PARTIES):
            with tf.device(runtime.device(i)):
                pairs.append(tuple(ops.puma_msb_finish(state[i], sent[i], got[i],
                                                       x.pairs[i][0], width=width)))
        return BoolShared(pairs, x.depth + rounds)


def a2b(x: Shared) -> BoolShared:
    """Bit decomposition: the boolean sharing of x's 64-bit word (x = sum of its shares).

    As msb, with the Kogge-Stone levels computing every carry: G[i] ^= P[i] & G[i-s] and
    P[i] &= P[i-s] for all i in [s, 63), then x = P ^ (G << 1). Cost: 8 rounds; 63 + 62 +
    sum over s of 2 (63 - s), less the last level's P (31) = 724 bits per party per value.
    """
    with costs.protocol("a2b", rounds=8), tf.name_scope("a2b"):
        p0, g = _propagate_generate(x)
        p = p0
        for shift in (1, 2, 4, 8, 16, 32):
            at = list(range(shift, 63))
            work = [(p, g, at, shift)] + ([(p, p, at, shift)] if shift < 32 else [])
            results = _and_at(work)
            g = g ^ results[0]
            if shift < 32:
                p = results[1]
        return p0 ^ (g << 1)


def b2a(bit: BoolShared) -> Shared:
    """Arithmetic sharing (integer, frac_bits 0) of a shared bit held in bit 0 of each word.

    With b = b_0 ^ b_1 ^ b_2: P0 knows c = b_0 ^ b_1, and d = b_2 is known to P1 and P2.
    1. P0 shares c as (c_0, c_1, 0) with c_0 = F(k_0) (known to P2) and c_1 = c - c_0 sent to P1.
    2. c d = c_1 d + c_0 d is then a sum P1 and P2 compute locally; they reshare it as
       (s_0, s_1, s_2) with s_0 = F(k_0), s_1 = F(k_1) and exchange m_1 = c_1 d - s_1 and
       m_2 = c_0 d - s_0 to both learn s_2 = m_1 + m_2.
    3. b = c + d - 2 c d (local).
    One kernel per role (PumaB2aParty0/1/2; their draws differ) and PumaB2aFinish for the
    share d - 2 s_2 of P1 and P2.
    Cost: 2 rounds; one ring element per party per bit (P0 -> P1, P1 <-> P2).
    """
    ops = _ops.load()
    with costs.protocol("b2a", rounds=2), tf.name_scope("b2a"):
        keys = runtime.prss()
        stream = runtime.new_stream("b2a")
        with tf.device(runtime.device(0)):
            c1, y0_own, y0_next = ops.puma_b2a_party0(*bit.pairs[0], keys.own[0], keys.next[0],
                                                      stream=stream)
        with tf.device(runtime.device(2)):
            m2, d2, y2_next = ops.puma_b2a_party2(bit.pairs[2][0], keys.next[2],
                                                   stream=stream)
        c1_at_p1 = runtime.transfer(c1, 0, 1)
        with tf.device(runtime.device(1)):
            m1, y1_own, d1 = ops.puma_b2a_party1(bit.pairs[1][1], c1_at_p1, keys.own[1],
                                                  stream=stream)
        m2_at_p1, m1_at_p2 = runtime.transfer(m2, 2, 1), runtime.transfer(m1, 1, 2)
        with tf.device(runtime.device(1)):
            y1_next = ops.puma_b2a_finish(d1, m1, m2_at_p1)
        with tf.device(runtime.device(2)):
            y2_own = ops.puma_b2a_finish(d2, m2, m1_at_p2)
        pairs = [(y0_own, y0_next), (y1_own, y1_next), (y2_own, y2_next)]
        return Shared(pairs, 0, bit.depth + 2)


runtime.exclude_from_autograph(globals())
