// Op interface: a party's weight shares, loaded from its own bundle directory.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

REGISTER_OP("PumaLoadShare")
    .Attr("weight: string")
    .Attr("shape: shape")
    .Output("share_own: int64")
    .Output("share_next: int64")
    .SetIsStateful()
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::PartialTensorShape shape;
      TF_RETURN_IF_ERROR(c->GetAttr("shape", &shape));
      ::tensorflow::shape_inference::ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromPartialTensorShape(shape, &out));
      c->set_output(0, out);
      c->set_output(1, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
This party's two shares (x_i, x_{i+1}) of the weight named `weight`, read from the bundle directory in the
party process's TF_PUMA_SHARES (set by `tf-puma party --shares DIR`): DIR/index.txt lines
"name offset_own offset_next dims...", int64 little-endian data in DIR/shares.bin. Read once per
process and kept resident; later calls return the cached tensors without copying.
)doc");

}  // namespace tf_puma
