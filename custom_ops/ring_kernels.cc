// Kernels: ring matmul and the parties' local multiplication steps (interfaces in ring_ops.cc).
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "custom_ops/kernel_util.h"
#include "custom_ops/prg_draws.h"
#include "custom_ops/ring_gemm.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_puma {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

namespace {

// How a (possibly batched) op(a) @ op(b) maps onto 2-D GEMMs.
struct MatMulPlan {
  int64_t batch = 1, m = 0, k = 0, n = 0;
  int64_t a_stride = 0, b_stride = 0;  // elements between batch items; 0 = broadcast matrix
  TensorShape out_shape;
};

Status PlanMatMul(const TensorShape& a, const TensorShape& b, bool trans_a, bool trans_b,
                  MatMulPlan* plan) {
  if (a.dims() < 2 || b.dims() < 2) {
    return errors::InvalidArgument("ring matmul needs operands of rank >= 2; got ",
                                   a.DebugString(), " and ", b.DebugString());
  }
  const int ra = a.dims(), rb = b.dims();
  plan->m = a.dim_size(trans_a ? ra - 1 : ra - 2);
  plan->k = a.dim_size(trans_a ? ra - 2 : ra - 1);
  const int64_t kb = b.dim_size(trans_b ? rb - 1 : rb - 2);
  plan->n = b.dim_size(trans_b ? rb - 2 : rb - 1);
  if (plan->k != kb) {
    return errors::InvalidArgument("ring matmul inner dimensions differ: ", a.DebugString(),
                                   (trans_a ? "^T" : ""), " @ ", b.DebugString(),
                                   (trans_b ? "^T" : ""));
  }
  TensorShape batch;
  if (ra > 2 && rb > 2) {
    if (ra != rb) {
      return errors::InvalidArgument("ring matmul batch ranks differ: ", a.DebugString(), " @ ",
                                     b.DebugString(), "; broadcast them first");
    }
    for (int i = 0; i < ra - 2; ++i) {
      if (a.dim_size(i) != b.dim_size(i)) {
        return errors::InvalidArgument("ring matmul batch dimensions differ: ",
                                       a.DebugString(), " @ ", b.DebugString());
      }
      batch.AddDim(a.dim_size(i));
    }
  } else {
    const TensorShape& batched = ra > 2 ? a : b;
    for (int i = 0; i < batched.dims() - 2; ++i) batch.AddDim(batched.dim_size(i));
  }
  plan->batch = batch.num_elements();
  plan->a_stride = ra > 2 ? plan->m * plan->k : 0;
  plan->b_stride = rb > 2 ? plan->k * plan->n : 0;
  plan->out_shape = batch;
  plan->out_shape.AddDim(plan->m);
  plan->out_shape.AddDim(plan->n);
  return tensorflow::OkStatus();
}

// One term C_b += op(A_b) @ (op(B_b) + op(B2_b)) for every batch item b (b2 may be null).
struct GemmTerm {
  const uint64_t* a;
  const uint64_t* b;
  const uint64_t* b2;
};

// Runs one_batch(i, runner) for every batch item: small batched problems one item per thread
// (each serial), large ones item by item with each product split over the pool.
void ForEachBatch(const MatMulPlan& p, int64_t terms, const ParallelRunner& runner,
                  const std::function<void(int64_t, const ParallelRunner&)>& one_batch) {
  const int64_t work = p.m * p.n * p.k;
  if (p.batch > 1 && work < (int64_t{1} << 21)) {
    const ParallelRunner serial = SerialRunner();
    runner(p.batch, work * terms, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) one_batch(i, serial);
    });
  } else {
    for (int64_t i = 0; i < p.batch; ++i) one_batch(i, runner);
  }
}

// Accumulates all terms into out (already initialised), batch by batch.
void RunBatchedGemm(const MatMulPlan& p, bool trans_a, bool trans_b,
                    const std::vector<GemmTerm>& terms, uint64_t* out,
                    const ParallelRunner& runner, GemmPath path = GemmPath::kAuto,
                    int ring_bits = 64) {
  const int64_t lda = trans_a ? p.m : p.k;
  const int64_t ldb = trans_b ? p.k : p.n;
  ForEachBatch(p, terms.size(), runner, [&](int64_t i, const ParallelRunner& inner) {
    for (const GemmTerm& t : terms) {
      RingGemmAccumulate(p.m, p.n, p.k, t.a + i * p.a_stride, lda, trans_a,
                         t.b + i * p.b_stride, t.b2 ? t.b2 + i * p.b_stride : nullptr, ldb,
                         trans_b, out + i * p.m * p.n, p.n, inner, path, ring_bits);
    }
  });
}

// out += op(a1) @ (op(b1) + op(b2)) + op(a2) @ op(b1) per batch item, for plans with at most
// kThinRows rows (RingGemmThinAccumulate: the weights read once, unpacked). a2, b2 may be null.
void RunBatchedThin(const MatMulPlan& p, bool trans_a, bool trans_b, const uint64_t* a1,
                    const uint64_t* a2, const uint64_t* b1, const uint64_t* b2, uint64_t* out,
                    const ParallelRunner& runner, GemmPath path = GemmPath::kAuto) {
  const int64_t lda = trans_a ? p.m : p.k;
  const int64_t ldb = trans_b ? p.k : p.n;
  auto at = [](const uint64_t* base, int64_t offset) {
    return base == nullptr ? nullptr : base + offset;
  };
  ForEachBatch(p, b2 ? 3 : 1, runner, [&](int64_t i, const ParallelRunner& inner) {
    RingGemmThinAccumulate(p.m, p.n, p.k, a1 + i * p.a_stride, at(a2, i * p.a_stride), lda,
                           trans_a, b1 + i * p.b_stride, at(b2, i * p.b_stride), ldb, trans_b,
                           out + i * p.m * p.n, p.n, inner, path);
  });
}

// The `ring_bits` attribute of a product op: 64 (Z_2^64) or 32 (the product mod 2^32).
Status ReadRingBits(OpKernelConstruction* ctx, const char* op, int64_t* ring_bits) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("ring_bits", ring_bits));
  if (*ring_bits != 32 && *ring_bits != 64) {
    return errors::InvalidArgument(op, ": ring_bits must be 32 or 64, got ", *ring_bits);
  }
  return tensorflow::OkStatus();
}

// z mod 2^32, in [0, 2^32): a product's n values whose upper 32 bits the GEMM left unspecified.
void KeepLow32(uint64_t* z, int64_t n, const ParallelRunner& runner) {
  ParallelElementwise(runner, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) z[i] &= 0xffffffffu;
  });
}

class RingMatMulOp : public OpKernel {
 public:
  explicit RingMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &trans_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &trans_b_));
    std::string kernel;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kernel", &kernel));
    path_ = kernel == "portable" ? GemmPath::kPortable
            : kernel == "avx512" ? GemmPath::kAvx512
            : kernel == "amx"    ? GemmPath::kAmx
                                 : GemmPath::kAuto;
    OP_REQUIRES_OK(ctx, ReadRingBits(ctx, "PumaRingMatMul", &ring_bits_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    MatMulPlan plan;
    OP_REQUIRES_OK(ctx, PlanMatMul(a.shape(), b.shape(), trans_a_, trans_b_, &plan));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, plan.out_shape, &out));
    out->flat<int64_t>().setZero();
    if (plan.m <= kThinRows) {
      RunBatchedThin(plan, trans_a_, trans_b_, RingData(a), nullptr, RingData(b), nullptr,
                     RingData(out), TfRunner(ctx), path_);
    } else {
      RunBatchedGemm(plan, trans_a_, trans_b_, {{RingData(a), RingData(b), nullptr}},
                     RingData(out), TfRunner(ctx), path_, ring_bits_);
    }
    if (ring_bits_ == 32) KeepLow32(RingData(out), out->NumElements(), TfRunner(ctx));
  }

 private:
  bool trans_a_, trans_b_;
  GemmPath path_;
  int64_t ring_bits_;
};

// Reads the two keys that follow the four share inputs.
bool ReadPrss(OpKernelContext* ctx, PrgKey* own, PrgKey* next) {
  return ReadKey(ctx, 4, own) && ReadKey(ctx, 5, next);
}

class MatMulShareOp : public StreamOpKernel {
 public:
  explicit MatMulShareOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &trans_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &trans_b_));
    OP_REQUIRES_OK(ctx, ReadRingBits(ctx, "PumaMatMulShare", &ring_bits_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_own = ctx->input(0);
    const Tensor& x_next = ctx->input(1);
    const Tensor& y_own = ctx->input(2);
    const Tensor& y_next = ctx->input(3);
    OP_REQUIRES(ctx, x_own.shape() == x_next.shape() && y_own.shape() == y_next.shape(),
                errors::InvalidArgument("the two shares of an operand must have one shape; got ",
                                        x_own.shape().DebugString(), " vs ",
                                        x_next.shape().DebugString(), " and ",
                                        y_own.shape().DebugString(), " vs ",
                                        y_next.shape().DebugString()));
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadPrss(ctx, &own, &next)) return;
    MatMulPlan plan;
    OP_REQUIRES_OK(ctx, PlanMatMul(x_own.shape(), y_own.shape(), trans_a_, trans_b_, &plan));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, plan.out_shape, &out));
    const int64_t n_out = out->NumElements();
    // z = alpha + x_own @ (y_own + y_next) + x_next @ y_own; y_own + y_next is never stored
    // (added while packing, or read in place by the thin product).
    auto runner = TfRunner(ctx);
    OP_REQUIRES_OK(ctx, FillZeroShare(own, next, stream, RingData(out), n_out, runner));
    if (plan.m <= kThinRows) {
      RunBatchedThin(plan, trans_a_, trans_b_, RingData(x_own), RingData(x_next), RingData(y_own),
                     RingData(y_next), RingData(out), runner);
    } else {
      RunBatchedGemm(plan, trans_a_, trans_b_,
                     {{RingData(x_own), RingData(y_own), RingData(y_next)},
                      {RingData(x_next), RingData(y_own), nullptr}},
                     RingData(out), runner, GemmPath::kAuto, ring_bits_);
    }
    if (ring_bits_ == 32) KeepLow32(RingData(out), n_out, runner);
  }

 private:
  bool trans_a_, trans_b_;
  int64_t ring_bits_;
};

class MulShareOp : public StreamOpKernel {
 public:
  explicit MulShareOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    if (!InputsShareShape(ctx, 4, "elementwise share multiplication")) return;
    const TensorShape& shape = ctx->input(0).shape();
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadPrss(ctx, &own, &next)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    const int64_t n = out->NumElements();
    auto runner = TfRunner(ctx);
    uint64_t* z = RingData(out);
    OP_REQUIRES_OK(ctx, FillZeroShare(own, next, stream, z, n, runner));
    const uint64_t* xo = RingData(ctx->input(0));
    const uint64_t* xn = RingData(ctx->input(1));
    const uint64_t* yo = RingData(ctx->input(2));
    const uint64_t* yn = RingData(ctx->input(3));
    ParallelElementwise(runner, n, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) z[i] += xo[i] * (yo[i] + yn[i]) + xn[i] * yo[i];
    });
  }
};

// sum_k c_k t_k mod 2^64 (PumaLinearCombination), a cache-sized piece of the output at a time.
class LinearCombinationOp : public OpKernel {
 public:
  explicit LinearCombinationOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int64_t> coefficients;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("coefficients", &coefficients));
    for (int64_t c : coefficients) coefficients_.push_back(static_cast<uint64_t>(c));
  }

  void Compute(OpKernelContext* ctx) override {
    const int terms = ctx->num_inputs();
    OP_REQUIRES(ctx, static_cast<int>(coefficients_.size()) == terms,
                errors::InvalidArgument("PumaLinearCombination takes one coefficient per term: ",
                                        terms, " terms, ", coefficients_.size(),
                                        " coefficients"));
    if (!InputsShareShape(ctx, terms, "linear combination")) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(0).shape(), &out));
    std::vector<const uint64_t*> t(terms);
    for (int k = 0; k < terms; ++k) t[k] = RingData(ctx->input(k));
    uint64_t* z = RingData(out);
    ParallelElementwise(TfRunner(ctx), out->NumElements(), 2 * terms,
                        [&](int64_t b, int64_t e) {
      constexpr int64_t kPiece = 2048;  // 16 KiB of output stays in L1 over the terms
      for (int64_t p = b; p < e; p += kPiece) {
        const int64_t q = std::min(e, p + kPiece);
        const uint64_t c0 = coefficients_[0];
        for (int64_t i = p; i < q; ++i) z[i] = c0 * t[0][i];
        for (int k = 1; k < terms; ++k) {
          const uint64_t c = coefficients_[k];
          const uint64_t* tk = t[k];
          for (int64_t i = p; i < q; ++i) z[i] += c * tk[i];
        }
      }
    });
  }

 private:
  std::vector<uint64_t> coefficients_;
};

// lo = x[:h], diff = x[h:2h] - lo, neg_diff = lo - x[h:2h] along `axis` for each input
// (PumaHalves): one level of a pairwise max tree, a party's shares in one pass.
class HalvesOp : public OpKernel {
 public:
  explicit HalvesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = ctx->num_inputs();
    for (int i = 0; i < n; ++i) {
      const Tensor& x = ctx->input(i);
      OP_REQUIRES(ctx, axis_ < x.dims(),
                  errors::InvalidArgument("PumaHalves: axis ", axis_,
                                          " is out of range for a tensor of rank ", x.dims()));
      OP_REQUIRES(ctx, x.dim_size(axis_) >= 2,
                  errors::InvalidArgument("PumaHalves needs at least 2 positions along axis ",
                                          axis_, ", got shape ", x.shape().DebugString()));
      int64_t outer = 1, inner = 1;
      for (int d = 0; d < axis_; ++d) outer *= x.dim_size(d);
      for (int d = axis_ + 1; d < x.dims(); ++d) inner *= x.dim_size(d);
      const int64_t size = x.dim_size(axis_), run = size / 2 * inner;
      TensorShape half_shape = x.shape();
      half_shape.set_dim(axis_, size / 2);
      Tensor *lo = nullptr, *diff = nullptr, *neg_diff = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, half_shape, &lo));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(n + i, half_shape, &diff));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(2 * n + i, half_shape, &neg_diff));
      const uint64_t* src = RingData(x);
      uint64_t *l = RingData(lo), *d = RingData(diff), *nd = RingData(neg_diff);
      ParallelElementwise(TfRunner(ctx), outer * run, 3, [&](int64_t b, int64_t e) {
        int64_t o = b / run, r = b % run;  // position j = o * run + r of the outputs
        for (int64_t j = b; j < e; ++j) {
          const int64_t at = o * size * inner + r;
          const uint64_t first = src[at], second = src[at + run];
          l[j] = first;
          d[j] = second - first;
          nd[j] = first - second;
          if (++r == run) {
            r = 0;
            ++o;
          }
        }
      });
    }
  }

 private:
  int64_t axis_;
};

// The ring GEMM paths this process runs for real (PumaRingGemmPaths).
class RingGemmPathsOp : public OpKernel {
 public:
  explicit RingGemmPathsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    std::vector<std::string> paths = {"portable"};
    if (Avx512Available()) paths.push_back("avx512");
    if (AmxAvailable()) paths.push_back("amx");
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({static_cast<int64_t>(paths.size())}),
                                             &out));
    for (size_t i = 0; i < paths.size(); ++i) out->vec<tensorflow::tstring>()(i) = paths[i];
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaRingMatMul").Device(DEVICE_CPU), RingMatMulOp);
REGISTER_KERNEL_BUILDER(Name("PumaRingGemmPaths").Device(DEVICE_CPU), RingGemmPathsOp);
REGISTER_KERNEL_BUILDER(Name("PumaMatMulShare").Device(DEVICE_CPU), MatMulShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaMulShare").Device(DEVICE_CPU), MulShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaLinearCombination").Device(DEVICE_CPU), LinearCombinationOp);
REGISTER_KERNEL_BUILDER(Name("PumaHalves").Device(DEVICE_CPU), HalvesOp);

}  // namespace tf_puma
