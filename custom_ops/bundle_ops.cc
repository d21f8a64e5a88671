// Op interface: a party's weight shares, loaded from its own bundle directory.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

REGISTER_OP("PumaLoadShare")
    .Attr("weight: string")
    .Attr("shape: shape")
    .Attr("bundle: string = ''")
    .Attr("party: int = -1")
    .Attr("frac_bits: int = -1")
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
from the party process's share root (set once at start by PumaSetShareRoot, i.e. `tf-puma party
--shares DIR --task I`): the bundle directory is DIR itself or a subdirectory of DIR whose
index.txt starts "#bundle <id>" (a directory without that line is never used; `bundle` must be
non-empty). The header's "#party I" must be this process's party (and `party`, when given);
"#frac_bits F" must equal `frac_bits`, when given. index.txt lines "name OWN NEXT dims..." give
each share as a byte offset of int64 little-endian data in shares.bin or as "prg:HEX", a 128-bit
seed whose chunk c of "#prg_chunk N" values is F(seed, 0, c) (AES-128-CTR, as PumaPrgUniform).
Read or expanded once per process and kept resident; later calls return the cached tensors
without copying.
)doc");

REGISTER_OP("PumaSetShareRoot")
    .Attr("root: string")
    .Attr("party: int")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs)
    .Doc(R"doc(
Sets this process's share root (its --shares directory) and party index for PumaLoadShare. Run
once, eagerly, by the party process before it serves; setting another root later is an error.
)doc");

}  // namespace tf_puma
