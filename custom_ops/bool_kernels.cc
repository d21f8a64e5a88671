// Kernels: boolean-share local steps (interfaces in bool_ops.cc).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

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

// Reads the `positions` attribute: strictly increasing, each in [0, 64).
bool ReadPositions(OpKernelConstruction* ctx, std::vector<int32_t>* positions, uint64_t* mask) {
  if (!ctx->GetAttr("positions", positions).ok()) {
    ctx->CtxFailure(errors::InvalidArgument("missing positions"));
    return false;
  }
  *mask = 0;
  for (size_t j = 0; j < positions->size(); ++j) {
    const int32_t p = (*positions)[j];
    if (p < 0 || p >= 64 || (j > 0 && p <= (*positions)[j - 1])) {
      ctx->CtxFailure(errors::InvalidArgument(
          "bit positions must be strictly increasing in [0, 64), got ", p, " at index ", j));
      return false;
    }
    *mask |= uint64_t{1} << p;
  }
  return true;
}

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

class BitPackOp : public OpKernel {
 public:
  explicit BitPackOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadPositions(ctx, &positions_, &mask_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& words = ctx->input(0);
    OP_REQUIRES(ctx, words.dims() == 1,
                errors::InvalidArgument("PumaBitPack takes a vector of words, got shape ",
                                        words.shape().DebugString()));
    const int64_t n = words.dim_size(0);
    const int per = static_cast<int>(positions_.size());
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({(n * per + 63) / 64}), &out));
    uint64_t* dst = RingData(out);
    std::memset(dst, 0, out->NumElements() * sizeof(uint64_t));
    if (per == 0) return;
    const uint64_t* src = RingData(words);
    auto extract = HasBmi2() && !portable_ ? ExtractBmi2 : ExtractPortable;
    const uint64_t mask = mask_;
    // Blocks of 64 words fill whole output words (64 * per bits), so blocks never share one.
    TfRunner(ctx)((n + 63) / 64, 64 * 8, [&](int64_t b_begin, int64_t b_end) {
      for (int64_t e = b_begin * 64; e < std::min(n, b_end * 64); ++e) {
        const uint64_t v = extract(src[e], mask);
        const int64_t bit = e * per;
        const int shift = static_cast<int>(bit & 63);
        dst[bit >> 6] |= v << shift;
        if (shift && shift + per > 64) dst[(bit >> 6) + 1] |= v >> (64 - shift);
      }
    });
  }

 private:
  std::vector<int32_t> positions_;
  uint64_t mask_ = 0;
  bool portable_ = false;
};

class BitUnpackOp : public OpKernel {
 public:
  explicit BitUnpackOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadPositions(ctx, &positions_, &mask_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_words", &num_words_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& packed = ctx->input(0);
    const int per = static_cast<int>(positions_.size());
    OP_REQUIRES(ctx, packed.dims() == 1 && packed.dim_size(0) == (num_words_ * per + 63) / 64,
                errors::InvalidArgument("PumaBitUnpack expects ", (num_words_ * per + 63) / 64,
                                        " packed words for ", num_words_, " words of ", per,
                                        " bits, got shape ", packed.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_words_}), &out));
    const uint64_t* src = RingData(packed);
    uint64_t* dst = RingData(out);
    if (per == 0) {
      std::memset(dst, 0, num_words_ * sizeof(uint64_t));
      return;
    }
    auto deposit = HasBmi2() && !portable_ ? DepositBmi2 : DepositPortable;
    const uint64_t low = per == 64 ? ~uint64_t{0} : (uint64_t{1} << per) - 1;
    const uint64_t mask = mask_;
    TfRunner(ctx)(num_words_, 8, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t bit = e * per;
        const int shift = static_cast<int>(bit & 63);
        uint64_t v = src[bit >> 6] >> shift;
        if (shift && shift + per > 64) v |= src[(bit >> 6) + 1] << (64 - shift);
        dst[e] = deposit(v & low, mask);
      }
    });
  }

 private:
  std::vector<int32_t> positions_;
  uint64_t mask_ = 0;
  int64_t num_words_;
  bool portable_ = false;
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

// Packs bits `mask` (width bits) of src[0..n) densely into dst (zeroed, Words(n) words).
void PackBits(const uint64_t* src, int64_t n, uint64_t mask, int width, uint64_t* dst,
              const ParallelRunner& runner) {
  if (width == 0) return;
  auto extract = HasBmi2() ? ExtractBmi2 : ExtractPortable;
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
  }

  void Compute(OpKernelContext* ctx) override {
    const int num = static_cast<int>(seg_.widths.size());
    const TensorShape& shape = ctx->input(0).shape();
    for (int i = 1; i < 4 * num; ++i) {
      OP_REQUIRES(ctx, ctx->input(i).shape() == shape,
                  errors::InvalidArgument("packed AND operands must share one shape; got ",
                                          shape.DebugString(), " and ",
                                          ctx->input(i).shape().DebugString()));
    }
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
      PackBits(RingData(ctx->input(k)), n, seg_.masks[k], seg_.widths[k], xo + at, runner);
      PackBits(RingData(ctx->input(num + k)), n, seg_.masks[k], seg_.widths[k], xn + at, runner);
      PackBits(RingData(ctx->input(2 * num + k)), n, y_seg_.masks[k], y_seg_.widths[k],
               yo + at, runner);
      PackBits(RingData(ctx->input(3 * num + k)), n, y_seg_.masks[k], y_seg_.widths[k],
               yn + at, runner);
      at += seg_.Words(n, k);
    }
    PrgFill(own, stream, 0, z, total, runner);
    Tensor theirs_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, TensorShape({total}),
                                           &theirs_t));
    uint64_t* theirs = RingData(&theirs_t);
    PrgFill(next, stream, 0, theirs, total, runner);
    ParallelElementwise(runner, total, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        z[i] ^= theirs[i] ^ (xo[i] & (yo[i] ^ yn[i])) ^ (xn[i] & yo[i]);
      }
    });
  }

 private:
  Segments seg_, y_seg_;
};

class BitUnpackSegmentsOp : public OpKernel {
 public:
  explicit BitUnpackSegmentsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadSegments(ctx, "positions", &seg_);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& packed = ctx->input(0);
    const TensorShape& shape = ctx->input(1).shape();
    const int64_t n = shape.num_elements();
    OP_REQUIRES(ctx, packed.dims() == 1 && packed.dim_size(0) == seg_.TotalWords(n),
                errors::InvalidArgument("expected ", seg_.TotalWords(n), " packed words for ",
                                        n, " values, got shape ", packed.shape().DebugString()));
    auto deposit = HasBmi2() ? DepositBmi2 : DepositPortable;
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
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaAndShare").Device(DEVICE_CPU), AndShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaBitPack").Device(DEVICE_CPU), BitPackOp);
REGISTER_KERNEL_BUILDER(Name("PumaBitUnpack").Device(DEVICE_CPU), BitUnpackOp);
REGISTER_KERNEL_BUILDER(Name("PumaAndPackedShare").Device(DEVICE_CPU), AndPackedShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaBitUnpackSegments").Device(DEVICE_CPU), BitUnpackSegmentsOp);

}  // namespace tf_puma
