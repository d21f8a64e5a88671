// Op interfaces: the most significant bit of an arithmetic share, as fused per-party rounds.
#include "custom_ops/msb_plan.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// Elements of a shape (-1 when unknown).
int64_t NumElements(InferenceContext* c, ShapeHandle s) {
  if (!c->RankKnown(s)) return -1;
  int64_t n = 1;
  for (int d = 0; d < c->Rank(s); ++d) {
    const int64_t dim = c->Value(c->Dim(s, d));
    if (dim < 0) return -1;
    n *= dim;
  }
  return n;
}

void SetMessageShape(InferenceContext* c, int output, int round, int64_t n) {
  c->set_output(output, c->Vector(n < 0 ? InferenceContext::kUnknownDim
                                        : msb::RoundWords(round, n)));
}

}  // namespace

REGISTER_OP("PumaMsbStart")
    .Input("x_own: int64")
    .Input("x_next: int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Attr("party: int >= 0")
    .Attr("portable: bool = false")
    .Output("state: int64")
    .Output("z: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &x));
      ShapeHandle state;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(msb::kStateRows), x, &state));
      c->set_output(0, state);
      SetMessageShape(c, 1, 0, NumElements(c, x));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Round 0 of party i's MSB of an arithmetic share pair (x_i, x_{i+1}), x = x_0 + x_1 + x_2.
The addends A = x_0, B = x_1, C = x_2 as XOR sharings need no communication; the carry-save
adder gives S = A ^ B ^ C and the carries M = ((A ^ C) & (B ^ C)) ^ C. This op sends party i's
share of (A ^ C) & (B ^ C) on bits 0..62, packed, masked with the XOR zero share
F(k_i, s, 0) ^ F(k_{i+1}, s, 0). state = (P, G, E) pairs [6, ...]: (S, 0, C).
)doc");

REGISTER_OP("PumaMsbStep")
    .Input("state: int64")
    .Input("z_own: int64")
    .Input("z_received: int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Attr("round: int >= 1")
    .Attr("portable: bool = false")
    .Output("state_out: int64")
    .Output("z: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      int round = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("round", &round));
      if (round >= msb::kRounds) {
        return ::tensorflow::errors::InvalidArgument("round must be in [1, ", msb::kRounds, ")");
      }
      ShapeHandle values;
      TF_RETURN_IF_ERROR(c->Subshape(c->input(0), 1, &values));
      c->set_output(0, c->input(0));
      SetMessageShape(c, 1, round, NumElements(c, values));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Round r (1..7) of party i's MSB: takes the previous round's packed AND shares (its own z_i and
z_{i+1} received from party i+1), unpacks them into the state, and sends its share of this
round's ANDs (masked with a fresh XOR zero share under `stream`).
Round 1: M = unpacked ^ C, carries Y = M << 1, P = S ^ Y (kept in E), AND S & Y on bits 1..62.
Rounds 2..7: G ^= unpacked G segment, P = unpacked P segment (if any), then Kogge-Stone level
s = 2^(r-2): G[i] ^= P[i] & G[i-s] and P[i] &= P[i-s] at the positions the carry into bit 63
needs (custom_ops/msb_plan.h).
)doc");

REGISTER_OP("PumaMsbFinish")
    .Input("state: int64")
    .Input("z_own: int64")
    .Input("z_received: int64")
    .Attr("portable: bool = false")
    .Output("bit_own: int64")
    .Output("bit_next: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle values;
      TF_RETURN_IF_ERROR(c->Subshape(c->input(0), 1, &values));
      c->set_output(0, values);
      c->set_output(1, values);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's last MSB step (no communication): unpacks round 7's G segment into G, then
msb = P_63 ^ G_62 with P the original propagate bits, in bit 0 of (bit_own, bit_next).
)doc");

}  // namespace tf_puma
