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

void SetMessageShape(InferenceContext* c, int output, int round, int64_t n, int width) {
  c->set_output(output, c->Vector(n < 0 ? InferenceContext::kUnknownDim
                                        : msb::RoundWords(round, n, width)));
}

Status GetWidth(InferenceContext* c, int* width) {
  TF_RETURN_IF_ERROR(c->GetAttr("width", width));
  if (!msb::ValidWidth(*width)) {
    return ::tensorflow::errors::InvalidArgument("width must be in [", msb::kMinWidth, ", ",
                                                 msb::kMaxWidth, "], got ", *width);
  }
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("PumaMsbStart")
    .Input("x_own: int64")
    .Input("x_next: int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Attr("party: int >= 0")
    .Attr("low_bit: int >= 0 = 0")
    .Attr("width: int = 64")
    .Attr("portable: bool = false")
    .Output("state: int64")
    .Output("z: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      int width = 0, low_bit = 0;
      TF_RETURN_IF_ERROR(GetWidth(c, &width));
      TF_RETURN_IF_ERROR(c->GetAttr("low_bit", &low_bit));
      if (low_bit + width > 64) {
        return ::tensorflow::errors::InvalidArgument("the window [low_bit, low_bit + width) = [",
                                                     low_bit, ", ", low_bit + width,
                                                     ") leaves the 64-bit word");
      }
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &x));
      ShapeHandle state;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(msb::kStateRows), x, &state));
      c->set_output(0, state);
      SetMessageShape(c, 1, 0, NumElements(c, x), width);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Round 0 of party i's MSB of an arithmetic share pair (x_i, x_{i+1}), x = x_0 + x_1 + x_2,
read in the window of `width` bits from `low_bit`: the circuit adds the shares' windows
w_j = x_j >> low_bit mod 2^width and returns bit width - 1 of the sum (the whole word's MSB
for the defaults 0 and 64; see tf_puma/protocols/compare.py for what a window means).
The addends A = w_0, B = w_1, C = w_2 as XOR sharings need no communication; the carry-save
adder gives S = A ^ B ^ C and the carries M = ((A ^ C) & (B ^ C)) ^ C. This op sends party i's
share of (A ^ C) & (B ^ C) on bits 0..width-2, packed, masked with the XOR zero share
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
    .Attr("width: int = 64")
    .Attr("portable: bool = false")
    .Output("state_out: int64")
    .Output("z: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      int round = 0, width = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("round", &round));
      TF_RETURN_IF_ERROR(GetWidth(c, &width));
      if (round >= msb::Rounds(width)) {
        return ::tensorflow::errors::InvalidArgument("round must be in [1, ", msb::Rounds(width),
                                                     ") for width ", width);
      }
      ShapeHandle values;
      TF_RETURN_IF_ERROR(c->Subshape(c->input(0), 1, &values));
      c->set_output(0, c->input(0));
      SetMessageShape(c, 1, round, NumElements(c, values), width);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Round r (1..7 for width 64, 1..6 for widths 18 to 33) of party i's MSB: takes the previous
round's packed AND shares (its own z_i and z_{i+1} received from party i+1), unpacks them into
the state, and sends its share of this round's ANDs (masked with a fresh XOR zero share under
`stream`). `width` is PumaMsbStart's.
Round 1: M = unpacked ^ C, carries Y = M << 1, P = S ^ Y (kept in E), AND S & Y on bits
1..width-2. Later rounds: G ^= unpacked G segment, P = unpacked P segment (if any), then
Kogge-Stone level s = 2^(r-2): G[i] ^= P[i] & G[i-s] and P[i] &= P[i-s] at the positions the
carry into bit width - 1 needs (custom_ops/msb_plan.h).
)doc");

REGISTER_OP("PumaMsbFinish")
    .Input("state: int64")
    .Input("z_own: int64")
    .Input("z_received: int64")
    .Attr("width: int = 64")
    .Attr("portable: bool = false")
    .Output("bit_own: int64")
    .Output("bit_next: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      int width = 0;
      TF_RETURN_IF_ERROR(GetWidth(c, &width));
      ShapeHandle values;
      TF_RETURN_IF_ERROR(c->Subshape(c->input(0), 1, &values));
      c->set_output(0, values);
      c->set_output(1, values);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's last MSB step (no communication): unpacks the last round's G segment into G, then
msb = P_(width-1) ^ G_(width-2) with P the original propagate bits, in bit 0 of (bit_own,
bit_next). `width` is PumaMsbStart's.
)doc");

}  // namespace tf_puma
