// Kernels: boolean-share local steps (interfaces in bool_ops.cc).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

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

class AndShareOp : public OpKernel {
 public:
  explicit AndShareOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    if (!InputsShareShape(ctx, 4, "boolean AND")) return;
    const TensorShape& shape = ctx->input(0).shape();
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

// Bits of w under mask, moved to the low end in order (BMI2 pext when available).
__attribute__((target("bmi2"))) uint64_t ExtractBmi2(uint64_t w, uint64_t mask) {
  return _pext_u64(w, mask);
}
__attribute__((target("bmi2"))) uint64_t DepositBmi2(uint64_t v, uint64_t mask) {
  return _pdep_u64(v, mask);
}
uint64_t ExtractPortable(uint64_t w, uint64_t mask) {
  uint64_t out = 0;
  for (int k = 0; mask; mask &= mask - 1, ++k) out |= ((w >> __builtin_ctzll(mask)) & 1) << k;
  return out;
}
uint64_t DepositPortable(uint64_t v, uint64_t mask) {
  uint64_t out = 0;
  for (int k = 0; mask; mask &= mask - 1, ++k) out |= ((v >> k) & 1) << __builtin_ctzll(mask);
  return out;
}
bool HasBmi2() {
  static const bool has = __builtin_cpu_supports("bmi2");
  return has;
}

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

// Packs bits `mask` (width bits) of src[0..n) densely into dst (zeroed, Words(n) words).
void PackBits(const uint64_t* src, int64_t n, uint64_t mask, int width, bool portable,
              uint64_t* dst, const ParallelRunner& runner) {
  if (width == 0) return;
  auto extract = HasBmi2() && !portable ? ExtractBmi2 : ExtractPortable;
  runner((n + 63) / 64, 64 * 8, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t e = b_begin * 64; e < std::min(n, b_end * 64); ++e) {
      const uint64_t v = extract(src[e], mask);
      const int64_t bit = e * width;
      const int shift = static_cast<int>(bit & 63);
      dst[bit >> 6] |= v << shift;
      if (shift && shift + width > 64) dst[(bit >> 6) + 1] |= v >> (64 - shift);
    }
  });
}

class AndPackedShareOp : public OpKernel {
 public:
  explicit AndPackedShareOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    if (ReadSegments(ctx, "positions", &seg_)) ReadSegments(ctx, "y_positions", &y_seg_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int num = static_cast<int>(seg_.widths.size());
    if (!InputsShareShape(ctx, 4 * num, "packed AND")) return;
    const TensorShape& shape = ctx->input(0).shape();
    PrgKey own, next;
    uint64_t stream;
    if (!ReadKey(ctx, 4 * num, &own) || !ReadKey(ctx, 4 * num + 1, &next) ||
        !ReadStream(ctx, 4 * num + 2, &stream)) {
      return;
    }
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
        PackBits(RingData(ctx->input(operand * num + k)), n, segs[operand]->masks[k],
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
    auto deposit = HasBmi2() && !portable_ ? DepositBmi2 : DepositPortable;
    auto runner = TfRunner(ctx);
    const uint64_t* src = RingData(packed);
    for (size_t k = 0; k < seg_.widths.size(); ++k) {
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(static_cast<int>(k), shape, &out));
      uint64_t* dst = RingData(out);
      const int width = seg_.widths[k];
      const uint64_t mask = seg_.masks[k];
      const uint64_t low = width == 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
      if (width == 0) {
        std::memset(dst, 0, n * sizeof(uint64_t));
      } else {
        runner(n, 8, [&](int64_t begin, int64_t end) {
          for (int64_t e = begin; e < end; ++e) {
            const int64_t bit = e * width;
            const int shift = static_cast<int>(bit & 63);
            uint64_t v = src[bit >> 6] >> shift;
            if (shift && shift + width > 64) v |= src[(bit >> 6) + 1] << (64 - shift);
            dst[e] = deposit(v & low, mask);
          }
        });
      }
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
