// Kernels: boolean-share local steps (interfaces in bool_ops.cc).
#include <algorithm>
#include <cstring>
#include <vector>

#include "custom_ops/bit_pack.h"
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
namespace errors = tensorflow::errors;

namespace {

class AndShareOp : public StreamOpKernel {
 public:
  explicit AndShareOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    if (!InputsShareShape(ctx, 4, "boolean AND")) return;
    const TensorShape& shape = ctx->input(0).shape();
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 4, &own) || !ReadKey(ctx, 5, &next)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, shape, &scratch));
    const int64_t n = shape.num_elements();
    auto runner = TfRunner(ctx);
    uint64_t* z = RingData(out);
    const uint64_t* theirs = RingData(scratch);
    OP_REQUIRES_OK(ctx, PrgFill(own, stream, draws::kZeroShare, z, n, runner));
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kZeroShare, RingData(&scratch), n, runner));
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

// Segments of a packed AND: segment k covers positions[offset_k .. offset_k + counts[k]).
struct Segments {
  std::vector<uint64_t> masks;
  std::vector<int> widths;

  int64_t Words(int64_t n, size_t k) const { return (n * widths[k] + 63) / 64; }
  int64_t TotalWords(int64_t n) const {
    int64_t total = 0;
    for (size_t k = 0; k < widths.size(); ++k) total += Words(n, k);
    return total;
  }
};

bool ReadSegments(OpKernelConstruction* ctx, const char* attr, Segments* seg) {
  std::vector<int32_t> positions, counts;
  int n_attr = 0;
  if (!ctx->GetAttr(attr, &positions).ok() || !ctx->GetAttr("counts", &counts).ok() ||
      !ctx->GetAttr("N", &n_attr).ok()) {
    ctx->CtxFailure(errors::InvalidArgument("missing positions/counts/N"));
    return false;
  }
  if (static_cast<int>(counts.size()) != n_attr) {
    ctx->CtxFailure(errors::InvalidArgument("counts must have N = ", n_attr, " entries"));
    return false;
  }
  size_t at = 0;
  for (int32_t count : counts) {
    uint64_t mask = 0;
    for (int32_t j = 0; j < count; ++j, ++at) {
      if (at >= positions.size() || positions[at] < 0 || positions[at] >= 64 ||
          (j > 0 && positions[at] <= positions[at - 1])) {
        ctx->CtxFailure(errors::InvalidArgument(
            "each segment's positions must be strictly increasing in [0, 64)"));
        return false;
      }
      mask |= uint64_t{1} << positions[at];
    }
    seg->masks.push_back(mask);
    seg->widths.push_back(count);
  }
  if (at != positions.size()) {
    ctx->CtxFailure(errors::InvalidArgument("counts do not add up to len(positions)"));
    return false;
  }
  return true;
}

class AndPackedShareOp : public StreamOpKernel {
 public:
  explicit AndPackedShareOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    if (ReadSegments(ctx, "positions", &seg_)) ReadSegments(ctx, "y_positions", &y_seg_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int num = static_cast<int>(seg_.widths.size());
    if (!InputsShareShape(ctx, 4 * num, "packed AND")) return;
    const TensorShape& shape = ctx->input(0).shape();
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 4 * num, &own) || !ReadKey(ctx, 4 * num + 1, &next)) return;
    const int64_t n = shape.num_elements();
    const int64_t total = seg_.TotalWords(n);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({total}), &out));
    Tensor scratch_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64,
                                           TensorShape({4 * std::max<int64_t>(total, 1)}),
                                           &scratch_t));
    uint64_t* z = RingData(out);
    uint64_t* scratch = RingData(&scratch_t);
    std::memset(scratch, 0, 4 * std::max<int64_t>(total, 1) * sizeof(uint64_t));
    uint64_t* xo = scratch;
    uint64_t* xn = scratch + total;
    uint64_t* yo = scratch + 2 * total;
    uint64_t* yn = scratch + 3 * total;
    auto runner = TfRunner(ctx);
    int64_t at = 0;
    for (int k = 0; k < num; ++k) {
      const Segments* segs[4] = {&seg_, &seg_, &y_seg_, &y_seg_};
      uint64_t* dsts[4] = {xo, xn, yo, yn};
      for (int operand = 0; operand < 4; ++operand) {
        bits::PackBits(RingData(ctx->input(operand * num + k)), n, segs[operand]->masks[k],
                 segs[operand]->widths[k], portable_, dsts[operand] + at, runner);
      }
      at += seg_.Words(n, k);
    }
    OP_REQUIRES_OK(ctx, PrgFill(own, stream, draws::kZeroShare, z, total, runner));
    Tensor theirs_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, TensorShape({total}),
                                           &theirs_t));
    uint64_t* theirs = RingData(&theirs_t);
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kZeroShare, theirs, total, runner));
    ParallelElementwise(runner, total, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        z[i] ^= theirs[i] ^ (xo[i] & (yo[i] ^ yn[i])) ^ (xn[i] & yo[i]);
      }
    });
  }

 private:
  Segments seg_, y_seg_;
  bool portable_ = false;
};

class BitUnpackSegmentsOp : public OpKernel {
 public:
  explicit BitUnpackSegmentsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadSegments(ctx, "positions", &seg_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& packed = ctx->input(0);
    const TensorShape& shape = ctx->input(1).shape();
    const int64_t n = shape.num_elements();
    OP_REQUIRES(ctx, packed.dims() == 1 && packed.dim_size(0) == seg_.TotalWords(n),
                errors::InvalidArgument("expected ", seg_.TotalWords(n), " packed words for ",
                                        n, " values, got shape ", packed.shape().DebugString()));
    auto runner = TfRunner(ctx);
    const uint64_t* src = RingData(packed);
    for (size_t k = 0; k < seg_.widths.size(); ++k) {
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(static_cast<int>(k), shape, &out));
      bits::UnpackBits(src, n, seg_.masks[k], seg_.widths[k], portable_, RingData(out),
                       runner);
      src += seg_.Words(n, k);
    }
  }

 private:
  Segments seg_;
  bool portable_ = false;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaAndShare").Device(DEVICE_CPU), AndShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaAndPackedShare").Device(DEVICE_CPU), AndPackedShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaBitUnpackSegments").Device(DEVICE_CPU), BitUnpackSegmentsOp);

}  // namespace tf_puma
