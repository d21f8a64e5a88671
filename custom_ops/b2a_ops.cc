// Op interfaces: bit injection (B2A), a shared bit in bit 0 of XOR shares -> arithmetic shares.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;

namespace {

// Every output has the shape of input 0 (the values).
Status LikeInput0(InferenceContext* c) {
  for (int k = 0; k < c->num_outputs(); ++k) c->set_output(k, c->input(0));
  return ::tensorflow::OkStatus();
}

}  // namespace

// b = b_0 ^ b_1 ^ b_2 (bit 0 of each word); party i holds (b_i, b_{i+1}). With c = b_0 ^ b_1
// (known to P0) and d = b_2 (known to P1 and P2): b = c + d - 2 c d.
// P0 shares c as (c_0, c_1, 0) with c_0 = F(k_0, s, 0); P1 and P2 reshare c d = c_1 d + c_0 d
// as (s_0, s_1, s_2) with s_0 = F(k_0, s, 1), s_1 = F(k_1, s, 1) and exchange masked halves.
// 2 rounds: P0 -> P1 (c_1), then P1 <-> P2 (m_1, m_2); one ring element per message per bit.
REGISTER_OP("PumaB2aParty0")
    .Input("bit_own: int64")
    .Input("bit_next: int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Output("c1: int64")
    .Output("y_own: int64")
    .Output("y_next: int64")
    .SetShapeFn(LikeInput0)
    .Doc(R"doc(
P0's part of B2A (keys k_0, k_1): c_0 = F(k_0, s, 0), c_1 = (b_0 ^ b_1) - c_0 (sent to P1),
s_0 = F(k_0, s, 1), s_1 = F(k_1, s, 1); P0's shares of b are (c_0 - 2 s_0, c_1 - 2 s_1).
)doc");

REGISTER_OP("PumaB2aParty1")
    .Input("bit_next: int64")
    .Input("c1: int64")
    .Input("key_own: int64")
    .Attr("stream: int >= 0")
    .Output("m1: int64")
    .Output("y_own: int64")
    .Output("d: int64")
    .SetShapeFn(LikeInput0)
    .Doc(R"doc(
P1's part of B2A after receiving c_1 (key k_1): d = b_2, s_1 = F(k_1, s, 1),
m_1 = c_1 d - s_1 (sent to P2); y_own = c_1 - 2 s_1; P1's second share is
PumaB2aFinish(d, m_1, m_2) = d - 2 s_2 with s_2 = m_1 + m_2.
)doc");

REGISTER_OP("PumaB2aParty2")
    .Input("bit_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Output("m2: int64")
    .Output("d: int64")
    .Output("y_next: int64")
    .SetShapeFn(LikeInput0)
    .Doc(R"doc(
P2's part of B2A (key k_0): d = b_2, c_0 = F(k_0, s, 0), s_0 = F(k_0, s, 1),
m_2 = c_0 d - s_0 (sent to P1); y_next = c_0 - 2 s_0; P2's first share is
PumaB2aFinish(d, m_2, m_1) = d - 2 s_2.
)doc");

REGISTER_OP("PumaB2aFinish")
    .Input("d: int64")
    .Input("m_own: int64")
    .Input("m_received: int64")
    .Output("y: int64")
    .SetShapeFn(LikeInput0)
    .Doc(R"doc(
y = d - 2 (m_own + m_received) mod 2^64: the share d - 2 s_2 of P1 and P2 (no communication).
)doc");

}  // namespace tf_puma
