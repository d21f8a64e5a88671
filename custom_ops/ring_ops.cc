// Op interfaces: ring arithmetic over Z_2^64 on int64 tensors (two's-complement wrap-around).
//
// Matmul batch semantics: a is [..., M, K] (or [..., K, M] with transpose_a), b is [..., K, N]
// (or [..., N, K]). Either both have the same batch dimensions, or one of them is a matrix that is
// broadcast over the other's batch.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_puma {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// Output shape of op(a) @ op(b) with the batch rule above.
Status RingMatMulShape(InferenceContext* c, int a_index, int b_index) {
  ShapeHandle a, b;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(a_index), 2, &a));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(b_index), 2, &b));
  bool trans_a, trans_b;
  TF_RETURN_IF_ERROR(c->GetAttr("transpose_a", &trans_a));
  TF_RETURN_IF_ERROR(c->GetAttr("transpose_b", &trans_b));
  const int ra = c->Rank(a), rb = c->Rank(b);
  DimensionHandle m = c->Dim(a, trans_a ? ra - 1 : ra - 2);
  DimensionHandle ka = c->Dim(a, trans_a ? ra - 2 : ra - 1);
  DimensionHandle kb = c->Dim(b, trans_b ? rb - 1 : rb - 2);
  DimensionHandle n = c->Dim(b, trans_b ? rb - 2 : rb - 1);
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->Merge(ka, kb, &unused));
  ShapeHandle batch;
  if (ra == 2) {
    TF_RETURN_IF_ERROR(c->Subshape(b, 0, rb - 2, &batch));
  } else if (rb == 2) {
    TF_RETURN_IF_ERROR(c->Subshape(a, 0, ra - 2, &batch));
  } else {
    ShapeHandle ba, bb;
    TF_RETURN_IF_ERROR(c->Subshape(a, 0, ra - 2, &ba));
    TF_RETURN_IF_ERROR(c->Subshape(b, 0, rb - 2, &bb));
    TF_RETURN_IF_ERROR(c->Merge(ba, bb, &batch));
  }
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Concatenate(batch, c->Matrix(m, n), &out));
  c->set_output(0, out);
  return ::tensorflow::OkStatus();
}

Status SameShapes(InferenceContext* c, int first, int count, ShapeHandle* merged) {
  *merged = c->input(first);
  for (int i = first + 1; i < first + count; ++i) {
    TF_RETURN_IF_ERROR(c->Merge(*merged, c->input(i), merged));
  }
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("PumaRingMatMul")
    .Input("a: int64")
    .Input("b: int64")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .Attr("kernel: {'auto', 'portable', 'avx512', 'amx'} = 'auto'")
    .Attr("ring_bits: int = 64")
    .Output("product: int64")
    .SetShapeFn([](InferenceContext* c) { return RingMatMulShape(c, 0, 1); })
    .Doc(R"doc(
op(a) @ op(b) mod 2^64, batched (see the batch rule in the file comment). `kernel` forces a
micro-kernel (tests compare them; 'amx' where AMX is unusable runs AVX-512, 'avx512' on a CPU
without it the portable one). ring_bits = 32: the product mod 2^32, in [0, 2^32) (the packed
paths then multiply 32-bit words, or the AMX path four byte limbs).
)doc");

REGISTER_OP("PumaRingGemmPaths")
    .Output("paths: string")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
The ring GEMM paths this process runs for real (not by falling back): "portable", then "avx512"
and "amx" where the CPU (and, for AMX, the OS) allows them. For tests and benchmarks.
)doc");

REGISTER_OP("PumaMatMulShare")
    .Input("x_own: int64")
    .Input("x_next: int64")
    .Input("y_own: int64")
    .Input("y_next: int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .Attr("ring_bits: int = 64")
    .Output("z: int64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->input(2), c->input(3), &unused));
      return RingMatMulShape(c, 0, 2);
    })
    .Doc(R"doc(
Party i's local step of replicated-share matmul (ABY3): its 3-out-of-3 share of x @ y,
  z_i = x_i @ (y_i + y_{i+1}) + x_{i+1} @ y_i + alpha_i,
with alpha_i its PRSS zero share (PumaZeroShare with the same keys and stream). Two GEMMs.
ring_bits = 32: z_i mod 2^32 (in [0, 2^32)), a share of x @ y mod 2^32; the AMX path then
multiplies only the four low byte limbs of each operand (10 limb pairs instead of 36), the
AVX-512 path 32-bit words (16 lanes a register instead of 8).
)doc");

REGISTER_OP("PumaMulShare")
    .Input("x_own: int64")
    .Input("x_next: int64")
    .Input("y_own: int64")
    .Input("y_next: int64")
    .Input("key_own: int64")
    .Input("key_next: int64")
    .Attr("stream: int >= 0")
    .Output("z: int64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle merged;
      TF_RETURN_IF_ERROR(SameShapes(c, 0, 4, &merged));
      c->set_output(0, merged);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Party i's local step of elementwise replicated-share multiplication (equal shapes):
  z_i = x_i*y_i + x_i*y_{i+1} + x_{i+1}*y_i + alpha_i.
)doc");

REGISTER_OP("PumaLinearCombination")
    .Input("terms: N * int64")
    .Attr("N: int >= 1")
    .Attr("coefficients: list(int)")
    .Output("sum: int64")
    .SetShapeFn([](InferenceContext* c) {
      std::vector<int64_t> coefficients;
      TF_RETURN_IF_ERROR(c->GetAttr("coefficients", &coefficients));
      if (static_cast<int>(coefficients.size()) != c->num_inputs()) {
        return ::tensorflow::errors::InvalidArgument(
            "PumaLinearCombination takes one coefficient per term: ", c->num_inputs(),
            " terms, ", coefficients.size(), " coefficients");
      }
      ShapeHandle merged;
      TF_RETURN_IF_ERROR(SameShapes(c, 0, c->num_inputs(), &merged));
      c->set_output(0, merged);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
sum_k coefficients[k] * terms[k] mod 2^64, elementwise over terms of one shape: a public linear
combination of one party's shares (local, exact), in one pass where Mul and AddV2 per term took
2N - 1 ops and passes.
)doc");

REGISTER_OP("PumaHalves")
    .Input("x: N * int64")
    .Attr("N: int >= 1")
    .Attr("axis: int >= 0")
    .Output("lo: N * int64")
    .Output("diff: N * int64")
    .Output("neg_diff: N * int64")
    .SetShapeFn([](InferenceContext* c) {
      int64_t axis;
      TF_RETURN_IF_ERROR(c->GetAttr("axis", &axis));
      const int n = c->num_inputs();
      for (int i = 0; i < n; ++i) {
        ShapeHandle half = c->input(i);
        if (c->RankKnown(half)) {
          if (axis >= c->Rank(half)) {
            return ::tensorflow::errors::InvalidArgument(
                "PumaHalves: axis ", axis, " is out of range for a tensor of rank ",
                c->Rank(half));
          }
          const ::tensorflow::shape_inference::DimensionHandle dim = c->Dim(half, axis);
          ::tensorflow::shape_inference::DimensionHandle halved = c->UnknownDim();
          if (c->ValueKnown(dim)) halved = c->MakeDim(c->Value(dim) / 2);
          TF_RETURN_IF_ERROR(c->ReplaceDim(half, axis, halved, &half));
        }
        c->set_output(i, half);
        c->set_output(n + i, half);
        c->set_output(2 * n + i, half);
      }
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Along `axis` (h = floor(size / 2); an odd last position is left out), for each x:
lo = x[:h], diff = x[h:2h] - lo, neg_diff = lo - x[h:2h], mod 2^64. One level of a pairwise max
tree on one party's shares (local): where four Slice and four Sub ops per level and party did it.
)doc");

}  // namespace tf_puma
