// Op interfaces: boolean (XOR) replicated shares, 64 bits packed per int64 word.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

#include <vector>

namespace tf_puma {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("PumaAndShare")
    .Input("x_own: int64")
    .Input("x_next: int64")
    .Input("y_own: int64")
    .Input("y_next: int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Input("stream: int64")
    .Output("z: int64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle merged = c->input(0);
      for (int i = 1; i < 4; ++i) TF_RETURN_IF_ERROR(c->Merge(merged, c->input(i), &merged));
      c->set_output(0, merged);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's local step of a bitwise AND of XOR-replicated shares (64 ANDs per word):
  z_i = (x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i) ^ beta_i,
beta_i = F(k_i, s, 0) ^ F(k_{i+1}, s, 0), a PRSS sharing of zero under XOR.
)doc");

}  // namespace tf_puma

namespace tf_puma {

REGISTER_OP("PumaBitPack")
    .Input("words: int64")
    .Attr("positions: list(int)")
    .Attr("portable: bool = false")
    .Output("packed: int64")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      std::vector<int32_t> positions;
      TF_RETURN_IF_ERROR(c->GetAttr("positions", &positions));
      ::tensorflow::shape_inference::ShapeHandle words;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &words));
      const auto n = c->Value(c->Dim(words, 0));
      if (n < 0) {
        c->set_output(0, c->Vector(::tensorflow::shape_inference::InferenceContext::kUnknownDim));
      } else {
        c->set_output(0, c->Vector((n * static_cast<int64_t>(positions.size()) + 63) / 64));
      }
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Bits `positions` (strictly increasing) of every word, packed densely: bit j of word e goes to bit e*P + j of the output
stream (P = len(positions), 64 bits per output word). Linear over XOR, so it applies share-wise.
BMI2's pext is used when the CPU has it; `portable` forces the plain loop (tests).
)doc");

REGISTER_OP("PumaBitUnpack")
    .Input("packed: int64")
    .Attr("positions: list(int)")
    .Attr("num_words: int >= 0")
    .Attr("portable: bool = false")
    .Output("words: int64")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      int64_t n;
      TF_RETURN_IF_ERROR(c->GetAttr("num_words", &n));
      c->set_output(0, c->Vector(n));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Inverse of PumaBitPack: word e gets stream bit e*P + j at bit positions[j]; other bits are 0.
)doc");

}  // namespace tf_puma

namespace tf_puma {

REGISTER_OP("PumaAndPackedShare")
    .Input("x_own: N * int64")
    .Input("x_next: N * int64")
    .Input("y_own: N * int64")
    .Input("y_next: N * int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Input("stream: int64")
    .Attr("N: int >= 1")
    .Attr("positions: list(int)")
    .Attr("y_positions: list(int)")
    .Attr("counts: list(int)")
    .Output("z: int64")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(::tensorflow::shape_inference::InferenceContext::kUnknownDim));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's local step of N bitwise ANDs restricted to bit positions: segment k uses the next
counts[k] entries of `positions` (strictly increasing) for x_k and of `y_positions` for y_k, so
result bit positions[j] is x_k[positions[j]] & y_k[y_positions[j]] (y_positions = positions - s
ANDs with y << s without shifting). Each segment's bits are packed densely across all words
(as PumaBitPack) and padded to whole words; segments follow each other. z = packed((x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i)) ^ beta_i, beta_i the XOR zero
share F(k_i, s, 0) ^ F(k_{i+1}, s, 0) over the packed words: one message of sum_k
ceil(n counts[k] / 64) words.
)doc");

REGISTER_OP("PumaBitUnpackSegments")
    .Input("packed: int64")
    .Input("like: int64")
    .Attr("N: int >= 1")
    .Attr("positions: list(int)")
    .Attr("counts: list(int)")
    .Output("words: N * int64")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      for (int k = 0; k < c->num_outputs(); ++k) c->set_output(k, c->input(1));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Inverse of the packing of PumaAndPackedShare: output k has the shape of `like` and holds
segment k's bits at its positions (other bits 0).
)doc");

}  // namespace tf_puma
