// Op interfaces: keys and the AES-128-CTR PRG for pseudo-random secret sharing (PRSS).
//
// A key is an int64[2] tensor (16 bytes, little-endian words). F(key, stream, sub) is the
// AES-128-CTR keystream with the 128-bit big-endian counter block
//   stream (64 bits) || sub (32 bits) || block index (32 bits),
// read as little-endian 64-bit ring elements. Every op that draws randomness takes a `stream`
// scalar that the protocol layer makes unique per call site, and uses fixed small `sub` values.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

Status KeyShape(InferenceContext* c, int input) {
  ShapeHandle key;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 1, &key));
  ::tensorflow::shape_inference::DimensionHandle unused;
  return c->WithValue(c->Dim(key, 0), 2, &unused);
}

}  // namespace

REGISTER_OP("PumaNewKey")
    .Output("key: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(2));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
A fresh 128-bit key from the operating system's entropy source (getrandom). Stateful: every
execution draws a new key, so randomness derived from it is fresh on every call.
)doc");

REGISTER_OP("PumaPrgUniform")
    .Input("key: int64")
    .Attr("stream: int >= 0")
    .Input("shape: int64")
    .Attr("sub: int = 0")
    .Output("out: int64")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(KeyShape(c, 0));
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(1, &out));
      c->set_output(0, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Uniform ring elements F(key, stream, sub) of the given shape (deterministic in its inputs).
)doc");

REGISTER_OP("PumaMaskInput")
    .Input("value: int64")
    .Input("key_0: int64")
    .Input("key_1: int64")
    .Attr("stream: int >= 0")
    .Output("masked: int64")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(KeyShape(c, 1));
      TF_RETURN_IF_ERROR(KeyShape(c, 2));
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
The client's third share of its encoded input: value - F(key_0, stream, 0) - F(key_1, stream, 0),
the keystream made in small pieces and subtracted in value's buffer when nothing else reads it
(one tensor of value's size in memory, where three separate ops held four).
)doc");

REGISTER_OP("PumaZeroShare")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Input("shape: int64")
    .Output("alpha: int64")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(KeyShape(c, 0));
      TF_RETURN_IF_ERROR(KeyShape(c, 1));
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(2, &out));
      c->set_output(0, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's share of zero: alpha_i = F(k_i, stream, 0) - F(k_{i+1}, stream, 0); the three shares
sum to 0 mod 2^64 and each is uniform to anyone missing one of the keys.
)doc");

REGISTER_OP("PumaPrgDrawTable")
    .Output("draws: string")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(::tensorflow::shape_inference::InferenceContext::kUnknownDim));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
The kernels' PRG draws (custom_ops/prg_draws.h), one "op family key_input sub" line each (sub -1:
the op's `sub` attribute). Read by the static reuse audit; draws nothing.
)doc");

REGISTER_OP("PumaAes128Ctr")
    .Input("key: int64")
    .Input("iv: int64")
    .Attr("num_blocks: int >= 0")
    .Attr("path: {'auto', 'portable', 'aesni', 'vaes'} = 'auto'")
    .Output("keystream: int64")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(KeyShape(c, 0));
      TF_RETURN_IF_ERROR(KeyShape(c, 1));
      int64_t n;
      TF_RETURN_IF_ERROR(c->GetAttr("num_blocks", &n));
      c->set_output(0, c->Vector(2 * n));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Raw AES-128-CTR keystream (key and iv as 16 bytes each, packed little-endian in two int64),
for checking the PRG against published test vectors. `path` picks the implementation: 'auto' (the
kernels' choice: VAES, else AES-NI, else portable) or one of them; a path this CPU lacks is an
error.
)doc");

}  // namespace tf_puma
