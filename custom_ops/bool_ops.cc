// Op interfaces: boolean (XOR) replicated shares, 64 bits packed per int64 word.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

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
