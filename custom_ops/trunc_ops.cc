// Op interfaces: the parties' local steps of probabilistic truncation TruncPr.
//
// Refer to: Dalskov, Escudero, Keller, "Secure Evaluation of Quantized Neural Networks",
// Section 3.2.2 (truncation by a public value), with the dealer variant for 3 parties.
// Roles for one call: A = party j, B = party j+1, D (dealer) = party j+2. A and D share key k_j
// (A's own, D's next), B and D share k_{j+2} (B's next, D's own).
// Input x = u_A + u_B + sum(extras) (mod 2^64), |x| < 2^62; output a replicated sharing of
// floor(x / 2^bits) + e, e in {0, 1} (floor(a) - floor(b) - floor(a - b) for the opened c and r):
//   D:  PumaTruncPrDeal    -> corr for B (2 ring elements per value), D's output shares
//   A:  PumaTruncPrMask    m_A = u_A + 2^62 + r_A          (r_A = F(k_j, s, 0))
//   B:  PumaTruncPrMask    m_B = u_B + r_B                 (r_B = F(k_{j+2}, s, 0))
//   A, B exchange m_A, m_B (and receive the extras) -> both know c = x + 2^62 + r
//   A:  PumaTruncPrFinishA -> msg_A, t_j       B: PumaTruncPrFinishB -> msg_B, t_{j+2}
//   A, B exchange msg_A, msg_B; t_{j+1} = msg_A + msg_B.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("PumaTruncPrDeal")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Input("shape: int64")
    .Attr("bits: int >= 1")
    .Output("corr: int64")
    .Output("share_own: int64")
    .Output("share_next: int64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle out, corr;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(2, &out));
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(2), out, &corr));
      c->set_output(0, corr);
      c->set_output(1, out);
      c->set_output(2, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Dealer D's step: r = F(k_next, s, 0) + F(k_own, s, 0); corr = [msb(r) - F(k_next, s, 1),
((r << 1) >> (bits + 1)) - F(k_next, s, 2)] for B; D's output shares F(k_own, s, 3),
F(k_next, s, 3).
)doc");

REGISTER_OP("PumaTruncPrMask")
    .Input("u: int64")
    .Input("key: int64")
    .Attr("stream: int >= 0")
    .Attr("add_offset: bool")
    .Output("masked: int64")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(R"doc(
u + F(key, s, 0), plus 2^62 when add_offset (A's side), to be exchanged between A and B.
)doc");

REGISTER_OP("PumaTruncPrFinishA")
    .Input("masked_own: int64")
    .Input("masked_other: int64")
    .Input("extras: N * int64")
    .Input("key_own: int64")
    .Attr("stream: int >= 0")
    .Attr("N: int >= 0")
    .Attr("bits: int >= 1")
    .Output("msg: int64")
    .Output("share_own: int64")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
A's step: c = masked_own + masked_other + sum(extras); with rb_A = F(k_j, s, 1),
rc_A = F(k_j, s, 2), b_A = rb_A + c_63 - 2 c_63 rb_A:
y_A = ((c << 1) >> (bits + 1)) - rc_A + b_A 2^(63-bits) - 2^(62-bits); share_own = F(k_j, s, 3);
msg = y_A - share_own.
)doc");

REGISTER_OP("PumaTruncPrFinishB")
    .Input("masked_own: int64")
    .Input("masked_other: int64")
    .Input("extras: N * int64")
    .Input("corr: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Attr("N: int >= 0")
    .Attr("bits: int >= 1")
    .Output("msg: int64")
    .Output("share_next: int64")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
B's step: c as for A; with [rb_B, rc_B] = corr: y_B = -rc_B + (rb_B - 2 c_63 rb_B) 2^(63-bits);
share_next = F(k_{j+2}, s, 3); msg = y_B - share_next.
)doc");

}  // namespace tf_puma
