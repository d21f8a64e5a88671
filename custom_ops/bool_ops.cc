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
    .Attr("stream: int >= 0")
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

}  // namespace tf_puma

namespace tf_puma {

REGISTER_OP("PumaAndPackedShare")
    .Input("x_own: N * int64")
    .Input("x_next: N * int64")
    .Input("y_own: N * int64")
    .Input("y_next: N * int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Attr("N: int >= 1")
    .Attr("positions: list(int)")
    .Attr("y_positions: list(int)")
    .Attr("counts: list(int)")
    .Attr("portable: bool = false")
    .Output("z: int64")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      // sum_k ceil(n counts[k] / 64) words, n = elements of each operand.
      std::vector<int32_t> counts;
      TF_RETURN_IF_ERROR(c->GetAttr("counts", &counts));
      ::tensorflow::shape_inference::ShapeHandle x = c->input(0);
      int64_t n = 1;
      for (int d = 0; c->RankKnown(x) && d < c->Rank(x); ++d) {
        const int64_t dim = c->Value(c->Dim(x, d));
        n = (dim < 0 || n < 0) ? -1 : n * dim;
      }
      if (!c->RankKnown(x) || n < 0) {
        c->set_output(0, c->Vector(::tensorflow::shape_inference::InferenceContext::kUnknownDim));
        return ::tensorflow::OkStatus();
      }
      int64_t words = 0;
      for (int32_t count : counts) words += (n * count + 63) / 64;
      c->set_output(0, c->Vector(words));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's local step of N bitwise ANDs restricted to bit positions: segment k uses the next
counts[k] entries of `positions` (strictly increasing) for x_k and of `y_positions` for y_k, so
result bit positions[j] is x_k[positions[j]] & y_k[y_positions[j]] (y_positions = positions - s
ANDs with y << s without shifting). Each segment's bits are packed densely across all words
(as PumaBitPack) and padded to whole words; segments follow each other. z = packed((x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i)) ^ beta_i, beta_i the XOR zero
share F(k_i, s, 0) ^ F(k_{i+1}, s, 0) over the packed words: one message of sum_k
ceil(n counts[k] / 64) words. Bits are gathered with BMI2's pext when the CPU has it;
`portable` forces the plain loop (tests compare both).
)doc");

REGISTER_OP("PumaBitUnpackSegments")
    .Input("packed: int64")
    .Input("like: int64")
    .Attr("N: int >= 1")
    .Attr("positions: list(int)")
    .Attr("counts: list(int)")
    .Attr("portable: bool = false")
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
