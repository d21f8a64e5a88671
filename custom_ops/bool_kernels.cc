// Kernels: boolean-share local steps (interfaces in bool_ops.cc).
#include "custom_ops/kernel_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_puma {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

namespace {

class AndShareOp : public OpKernel {
 public:
  explicit AndShareOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const TensorShape& shape = ctx->input(0).shape();
    for (int i = 1; i < 4; ++i) {
      OP_REQUIRES(ctx, ctx->input(i).shape() == shape,
                  errors::InvalidArgument("boolean AND needs equal shapes (broadcast first); "
                                          "input 0 is ", shape.DebugString(), ", input ", i,
                                          " is ", ctx->input(i).shape().DebugString()));
    }
    PrgKey own, next;
    uint64_t stream;
    if (!ReadKey(ctx, 4, &own) || !ReadKey(ctx, 5, &next) || !ReadStream(ctx, 6, &stream)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, shape, &scratch));
    const int64_t n = shape.num_elements();
    auto runner = TfRunner(ctx);
    uint64_t* z = RingData(out);
    const uint64_t* theirs = RingData(scratch);
    PrgFill(own, stream, 0, z, n, runner);
    PrgFill(next, stream, 0, RingData(&scratch), n, runner);
    const uint64_t* xo = RingData(ctx->input(0));
    const uint64_t* xn = RingData(ctx->input(1));
    const uint64_t* yo = RingData(ctx->input(2));
    const uint64_t* yn = RingData(ctx->input(3));
    ParallelElementwise(runner, n, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        z[i] ^= theirs[i] ^ (xo[i] & (yo[i] ^ yn[i])) ^ (xn[i] & yo[i]);
      }
    });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaAndShare").Device(DEVICE_CPU), AndShareOp);

}  // namespace tf_puma
