// Kernels: bit injection (B2A) by role (interfaces and the math in b2a_ops.cc).
#include "custom_ops/kernel_util.h"
#include "custom_ops/prg_draws.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_puma {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// Outputs 0..count-1 with input 0's shape, as ring words; false (error set) on failure.
bool AllocateLikeInput0(OpKernelContext* ctx, int count, uint64_t** outs) {
  for (int k = 0; k < count; ++k) {
    Tensor* t = AllocateLike(ctx, k, ctx->input(0).shape());
    if (t == nullptr) return false;
    outs[k] = RingData(t);
  }
  return true;
}

class B2aParty0Op : public StreamOpKernel {
 public:
  explicit B2aParty0Op(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    if (!InputsShareShape(ctx, 2, "B2A")) return;
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 2, &own) || !ReadKey(ctx, 3, &next)) return;
    const int64_t n = ctx->input(0).NumElements();
    uint64_t* out[3];
    if (!AllocateLikeInput0(ctx, 3, out)) return;
    uint64_t *c1 = out[0], *y_own = out[1], *y_next = out[2];
    Tensor s0_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, ctx->input(0).shape(), &s0_t));
    uint64_t* s0 = RingData(&s0_t);
    auto runner = TfRunner(ctx);
    OP_REQUIRES_OK(ctx, PrgFill(own, stream, draws::kB2aBitShare, y_own, n, runner));  // c_0
    OP_REQUIRES_OK(ctx, PrgFill(own, stream, draws::kB2aProductShare, s0, n, runner));
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kB2aProductShare, y_next, n, runner));
    const uint64_t* b0 = RingData(ctx->input(0));
    const uint64_t* b1 = RingData(ctx->input(1));
    ParallelElementwise(runner, n, 2, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const uint64_t c0 = y_own[i];
        c1[i] = ((b0[i] ^ b1[i]) & 1) - c0;
        y_own[i] = c0 - 2 * s0[i];
        y_next[i] = c1[i] - 2 * y_next[i];  // y_next held s_1
      }
    });
  }
};

class B2aParty1Op : public StreamOpKernel {
 public:
  explicit B2aParty1Op(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    if (!InputsShareShape(ctx, 2, "B2A")) return;
    PrgKey own;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 2, &own)) return;
    const int64_t n = ctx->input(0).NumElements();
    uint64_t* out[3];
    if (!AllocateLikeInput0(ctx, 3, out)) return;
    uint64_t *m1 = out[0], *y_own = out[1], *d = out[2];
    auto runner = TfRunner(ctx);
    OP_REQUIRES_OK(ctx, PrgFill(own, stream, draws::kB2aProductShare, y_own, n, runner));  // s_1
    const uint64_t* b2 = RingData(ctx->input(0));
    const uint64_t* c1 = RingData(ctx->input(1));
    ParallelElementwise(runner, n, 2, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const uint64_t s1 = y_own[i];
        d[i] = b2[i] & 1;
        m1[i] = c1[i] * d[i] - s1;
        y_own[i] = c1[i] - 2 * s1;
      }
    });
  }
};

class B2aParty2Op : public StreamOpKernel {
 public:
  explicit B2aParty2Op(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    PrgKey next;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 1, &next)) return;
    const int64_t n = ctx->input(0).NumElements();
    uint64_t* out[3];
    if (!AllocateLikeInput0(ctx, 3, out)) return;
    uint64_t *m2 = out[0], *d = out[1], *y_next = out[2];
    Tensor s0_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, ctx->input(0).shape(), &s0_t));
    uint64_t* s0 = RingData(&s0_t);
    auto runner = TfRunner(ctx);
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kB2aBitShare, y_next, n, runner));  // c_0
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kB2aProductShare, s0, n, runner));
    const uint64_t* b2 = RingData(ctx->input(0));
    ParallelElementwise(runner, n, 2, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const uint64_t c0 = y_next[i];
        d[i] = b2[i] & 1;
        m2[i] = c0 * d[i] - s0[i];
        y_next[i] = c0 - 2 * s0[i];
      }
    });
  }
};

class B2aFinishOp : public OpKernel {
 public:
  explicit B2aFinishOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    if (!InputsShareShape(ctx, 3, "B2A")) return;
    const int64_t n = ctx->input(0).NumElements();
    uint64_t* y;
    if (!AllocateLikeInput0(ctx, 1, &y)) return;
    const uint64_t* d = RingData(ctx->input(0));
    const uint64_t* m_own = RingData(ctx->input(1));
    const uint64_t* m_received = RingData(ctx->input(2));
    ParallelElementwise(TfRunner(ctx), n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) y[i] = d[i] - 2 * (m_own[i] + m_received[i]);
    });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaB2aParty0").Device(DEVICE_CPU), B2aParty0Op);
REGISTER_KERNEL_BUILDER(Name("PumaB2aParty1").Device(DEVICE_CPU), B2aParty1Op);
REGISTER_KERNEL_BUILDER(Name("PumaB2aParty2").Device(DEVICE_CPU), B2aParty2Op);
REGISTER_KERNEL_BUILDER(Name("PumaB2aFinish").Device(DEVICE_CPU), B2aFinishOp);

}  // namespace tf_puma
