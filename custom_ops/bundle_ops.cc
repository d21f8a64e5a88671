// Op interface: a party's weight shares, loaded from its own bundle directory.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

REGISTER_OP("PumaLoadShare")
    .Attr("weight: string")
    .Attr("shape: shape")
    .Attr("bundle: string = ''")
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
This party's two shares (x_i, x_{i+1}) of the weight named `weight` in the bundle `bundle`, read
from the party process's share root TF_PUMA_SHARES (set by `tf-puma party --shares DIR`): the
bundle directory is DIR itself or a subdirectory of DIR whose index.txt starts "#bundle <id>"
(no such line: id ""). index.txt lines "name offset_own offset_next dims..." locate int64
little-endian data in shares.bin. Read once per process and kept resident; later calls return
the cached tensors without copying.
)doc");

}  // namespace tf_puma
