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

// Round r's message: a vector of RoundWords(r, blocks, width) words (unknown blocks: -1).
void SetMessageShape(InferenceContext* c, int output, int round, int64_t blocks, int width) {
  c->set_output(output, c->Vector(blocks < 0 ? InferenceContext::kUnknownDim
                                             : msb::RoundWords(round, blocks, width)));
}

// The state's blocks dimension (-1 when unknown).
int64_t StateBlocks(InferenceContext* c) {
  ShapeHandle state = c->input(0);
  if (!c->RankKnown(state) || c->Rank(state) != 3) return -1;
  return c->Value(c->Dim(state, 2));
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
      const int64_t n = NumElements(c, x);
      const int64_t blocks = n < 0 ? -1 : msb::Blocks(n);
      c->set_output(0, c->MakeShape({c->MakeDim(msb::kStateRows), c->MakeDim(width),
                                     blocks < 0 ? c->UnknownDim() : c->MakeDim(blocks)}));
      SetMessageShape(c, 1, 0, blocks, width);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Round 0 of party i's MSB of an arithmetic share pair (x_i, x_{i+1}), x = x_0 + x_1 + x_2,
read in the window of `width` bits from `low_bit`: the circuit adds the shares' windows
w_j = x_j >> low_bit mod 2^width and returns bit width - 1 of the sum (the whole word's MSB
for the defaults 0 and 64; see tf_puma/protocols/compare.py for what a window means).
The addends A = w_0, B = w_1, C = w_2 as XOR sharings need no communication; the carry-save
adder gives S = A ^ B ^ C and the carries M = ((A ^ C) & (B ^ C)) ^ C. This op sends party i's
share of (A ^ C) & (B ^ C) on bits 0..width-2, masked with the XOR zero share
F(k_i, s, 0) ^ F(k_{i+1}, s, 0). The rounds run bit-sliced (custom_ops/msb_plan.h): state =
(P, G, E) pairs as [6, width, blocks] planes, here P = S and E = C (G is written by round 1
before it is read); a message holds one plane of
`blocks` words per AND bit. `portable`: transpose without AVX-512 (taken anyway on a CPU without
it; the same result).
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
      c->set_output(0, c->input(0));
      SetMessageShape(c, 1, round, StateBlocks(c), width);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Round r (1..7 for width 64, 1..6 for widths 18 to 33) of party i's MSB: takes the previous
round's AND shares (its own z_i and z_{i+1} received from party i+1), absorbs them into the
state, and sends its share of this round's ANDs (masked with a fresh XOR zero share under
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
    .Input("like: int64")
    .Attr("width: int = 64")
    .Attr("portable: bool = false")
    .Output("bit_own: int64")
    .Output("bit_next: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      int width = 0;
      TF_RETURN_IF_ERROR(GetWidth(c, &width));
      c->set_output(0, c->input(3));
      c->set_output(1, c->input(3));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's last MSB step (no communication): unpacks the last round's G segment into G, then
msb = P_(width-1) ^ G_(width-2) with P the original propagate bits, in bit 0 of (bit_own,
bit_next), shaped as `like` (PumaMsbStart's x_own: only its shape is read). `width` is
PumaMsbStart's; `portable` as there (the planes unpacked without AVX-512).
)doc");

}  // namespace tf_puma
