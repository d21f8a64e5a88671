// Op interfaces: the parties' local steps of probabilistic truncation TruncPr.
//
// Refer to: Dalskov, Escudero, Keller, "Secure Evaluation of Quantized Neural Networks",
// Section 3.2.2 (truncation by a public value), with the dealer variant for 3 parties.
// Roles for one call: A = party j, B = party j+1, D (dealer) = party j+2. A and D share key k_j
// (A's own, D's next), B and D share k_{j+2} (B's next, D's own).
// Input x = u_A + u_B + sum(extras) (mod 2^64), |x| < 2^62; output a replicated sharing of
// floor(x / 2^bits) + e, e in {0, 1} (floor(a) - floor(b) - floor(a - b) for the opened c and r):
//   D:  PumaTruncPrDeal    -> corr for B (a ring element and bits + 1 bits per value), D's
//                             output shares
//   A:  PumaTruncPrMask    m_A = u_A + 2^62 + r_A          (r_A = F(k_j, s, 0))
//   B:  PumaTruncPrMask    m_B = u_B + r_B                 (r_B = F(k_{j+2}, s, 0))
//   A, B exchange m_A, m_B (and receive the extras) -> both know c = x + 2^62 + r
//   A:  PumaTruncPrFinishA -> msg_A, t_j       B: PumaTruncPrFinishB -> msg_B, t_{j+2}
//   A, B exchange msg_A, msg_B; t_{j+1} = msg_A + msg_B.
#include "custom_ops/trunc_corr.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// A finish step's outputs: its message and output share, shaped like input 0.
Status MessageAndShareLikeInput(InferenceContext* c) {
  c->set_output(0, c->input(0));
  c->set_output(1, c->input(0));
  return ::tensorflow::OkStatus();
}

}  // namespace

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
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(2, &out));
      int64_t bits = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("bits", &bits));
      int64_t n = -1;
      if (c->FullyDefined(out)) {
        n = 1;
        for (int d = 0; d < c->Rank(out); ++d) n *= c->Value(c->Dim(out, d));
      }
      c->set_output(0, c->Vector(n < 0 ? InferenceContext::kUnknownDim
                                       : trunc_corr::Words(n, static_cast<int>(bits))));
      c->set_output(1, out);
      c->set_output(2, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Dealer D's step: r = F(k_next, s, 0) + F(k_own, s, 0); B's shares rc_B = ((r << 1) >>
(bits + 1)) - F(k_next, s, 2) and rb_B = msb(r) - F(k_next, s, 1), of which B only uses the low
bits + 1 (it multiplies rb_B by 2^(63 - bits)): corr = rc_B (n words) then rb_B's low bits + 1
bits packed (custom_ops/trunc_corr.h), 1 + (bits + 1) / 64 ring elements per value instead of 2.
D's output shares F(k_own, s, 3), F(k_next, s, 3).
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
    .Attr("opener: int >= 0 = 0")
    .Output("msg: int64")
    .Output("share_own: int64")
    .Output("c_msb: opener * int64")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      int opener = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("opener", &opener));
      if (opener > 1) {
        return ::tensorflow::errors::InvalidArgument("opener is 0 or 1, got ", opener);
      }
      if (opener) {
        int64_t n = -1;  // values; c_msb is ceil(n / 64) words
        if (c->FullyDefined(c->input(0))) {
          n = 1;
          for (int d = 0; d < c->Rank(c->input(0)); ++d) n *= c->Value(c->Dim(c->input(0), d));
        }
        c->set_output(2, c->Vector(n < 0 ? InferenceContext::kUnknownDim : (n + 63) / 64));
      }
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
A's step: c = masked_own + masked_other + sum(extras); with rb_A = F(k_j, s, 1),
rc_A = F(k_j, s, 2), b_A = rb_A + c_63 - 2 c_63 rb_A:
y_A = ((c << 1) >> (bits + 1)) - rc_A + b_A 2^(63-bits) - 2^(62-bits); share_own = F(k_j, s, 3);
msg = y_A - share_own. opener = 1 is the 3-round variant, where A alone opens c (B sends
masked_other, D its share as the extra, A sends nothing in the first round): c_msb then holds
c's msb bits packed one per value (ceil(n / 64) words) for B, whose share needs only them.
)doc");

REGISTER_OP("PumaTruncPrFinishBMsb")
    .Input("masked_own: int64")
    .Input("c_msb: int64")
    .Input("corr: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Attr("bits: int >= 1")
    .Output("msg: int64")
    .Output("share_next: int64")
    .SetShapeFn(MessageAndShareLikeInput)
    .Doc(R"doc(
B's step in the 3-round variant: as PumaTruncPrFinishB with c_63 read from A's packed msb bits
(masked_own, B's own masked value, gives only the shape). c_63 = msb(x + 2^62 + r_A + r_B) is
a uniform bit to B, which does not know r_A.
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
    .SetShapeFn(MessageAndShareLikeInput)
    .Doc(R"doc(
B's step: c as for A; with rc_B and rb_B (its low bits + 1) from corr:
y_B = -rc_B + (rb_B - 2 c_63 rb_B) 2^(63-bits); share_next = F(k_{j+2}, s, 3);
msg = y_B - share_next.
)doc");

}  // namespace tf_puma
