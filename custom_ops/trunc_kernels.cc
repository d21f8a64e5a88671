// Kernels: local steps of the TruncPr protocol (interfaces and roles in trunc_ops.cc).
//
// All arithmetic is on uint64 (Z_2^64); ">>" below is a logical shift.
#include <algorithm>
#include <vector>

#include "custom_ops/bit_pack.h"
#include "custom_ops/kernel_util.h"
#include "custom_ops/prg_draws.h"
#include "custom_ops/trunc_corr.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_puma {

using tensorflow::DEVICE_CPU;
using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

namespace {

constexpr uint64_t kOffset = uint64_t{1} << 62;  // shifts |x| < 2^62 into [0, 2^63)

int64_t ReadBits(OpKernelConstruction* ctx) {
  int64_t bits = 0;
  auto status = ctx->GetAttr("bits", &bits);
  if (!status.ok()) {
    ctx->CtxFailure(status);
  } else if (bits < 1 || bits > 61) {
    ctx->CtxFailure(errors::InvalidArgument("TruncPr shifts by 1..61 bits, got ", bits));
  }
  return bits;
}

// c = masked_own + masked_other + sum(extras), all of one shape; returns false on error.
bool OpenMasked(OpKernelContext* ctx, const ParallelRunner& runner, Tensor* c) {
  const Tensor& own = ctx->input(0);
  const Tensor& other = ctx->input(1);
  OpInputList extras;
  if (!ctx->input_list("extras", &extras).ok()) return false;
  std::vector<const uint64_t*> parts = {RingData(own), RingData(other)};
  for (const Tensor& e : extras) parts.push_back(RingData(e));
  const TensorShape& shape = own.shape();
  if (other.shape() != shape) {
    ctx->CtxFailure(errors::InvalidArgument("masked values differ in shape: ",
                                            shape.DebugString(), " vs ",
                                            other.shape().DebugString()));
    return false;
  }
  for (const Tensor& e : extras) {
    if (e.shape() != shape) {
      ctx->CtxFailure(errors::InvalidArgument("extra share of shape ", e.shape().DebugString(),
                                              " does not match ", shape.DebugString()));
      return false;
    }
  }
  if (!ctx->allocate_temp(tensorflow::DT_INT64, shape, c).ok()) return false;
  uint64_t* out = RingData(c);
  ParallelElementwise(runner, c->NumElements(), static_cast<int64_t>(parts.size()),
                      [&](int64_t b, int64_t e) {
                        for (int64_t i = b; i < e; ++i) {
                          uint64_t s = 0;
                          for (const uint64_t* p : parts) s += p[i];
                          out[i] = s;
                        }
                      });
  return true;
}

class TruncPrDealOp : public StreamOpKernel {
 public:
  explicit TruncPrDealOp(OpKernelConstruction* ctx)
      : StreamOpKernel(ctx), bits_(ReadBits(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    PrgKey own, next;
    const uint64_t stream = stream_;
    TensorShape shape;
    if (!ReadKey(ctx, 0, &own) || !ReadKey(ctx, 1, &next) || 
        !ReadShape(ctx, 2, &shape)) {
      return;
    }
    OP_REQUIRES(ctx, shape.num_elements() <= kMaxDrawWords,
                errors::InvalidArgument("a TruncPr of shape ", shape.DebugString(), " exceeds "
                                        "2^33 values per PRG draw: split it"));
    const int64_t n = shape.num_elements();
    const int bits = static_cast<int>(bits_);
    Tensor* corr = AllocateLike(ctx, 0, TensorShape({trunc_corr::Words(n, bits)}));
    Tensor* share_own = AllocateLike(ctx, 1, shape);
    Tensor* share_next = AllocateLike(ctx, 2, shape);
    if (!corr || !share_own || !share_next) return;
    auto runner = TfRunner(ctx);
    Tensor r_t, mask_t;  // r = r_A + r_B; mask_t holds r_B, then A's share of msb(r)
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, shape, &r_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, shape, &mask_t));
    uint64_t* r = RingData(&r_t);
    uint64_t* mask = RingData(&mask_t);
    uint64_t* rc_b = RingData(corr);
    uint64_t* packed_rb = rc_b + n;
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kTruncMask, r, n, runner));  // A's (k_j)
    OP_REQUIRES_OK(ctx, PrgFill(own, stream, draws::kTruncMask, mask, n, runner));  // B's
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kTruncLowShare, rc_b, n, runner));
    ParallelElementwise(runner, n, 3, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        r[i] += mask[i];
        rc_b[i] = ((r[i] << 1) >> (bits + 1)) - rc_b[i];
      }
    });
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kTruncMsbShare, mask, n, runner));
    const int kept = trunc_corr::MsbShareBits(bits);
    std::fill(packed_rb, RingData(corr) + trunc_corr::Words(n, bits), uint64_t{0});
    bits::XorPackValues(n, (uint64_t{1} << kept) - 1, kept, /*portable=*/false, packed_rb, runner,
                        [&](int64_t i) { return (r[i] >> 63) - mask[i]; });  // rb_B
    OP_REQUIRES_OK(ctx, PrgFill(own, stream, draws::kTruncOutShare, RingData(share_own), n,
                                runner));
    OP_REQUIRES_OK(ctx, PrgFill(next, stream, draws::kTruncOutShare, RingData(share_next), n,
                                runner));
  }

 private:
  const int64_t bits_;
};

class TruncPrMaskOp : public StreamOpKernel {
 public:
  explicit TruncPrMaskOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("add_offset", &add_offset_));
  }

  void Compute(OpKernelContext* ctx) override {
    PrgKey key;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 1, &key)) return;
    const Tensor& u = ctx->input(0);
    Tensor* out = AllocateLike(ctx, 0, u.shape());
    if (!out) return;
    const int64_t n = u.NumElements();
    auto runner = TfRunner(ctx);
    uint64_t* m = RingData(out);
    OP_REQUIRES_OK(ctx, PrgFill(key, stream, draws::kTruncMask, m, n, runner));
    const uint64_t* in = RingData(u);
    const uint64_t offset = add_offset_ ? kOffset : 0;
    ParallelElementwise(runner, n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) m[i] += in[i] + offset;
    });
  }

 private:
  bool add_offset_;
};

// A's finish for both variants; with opener = 1 a third output, c's msb bits packed, for B,
// which then needs no c.
class TruncPrFinishAOp : public StreamOpKernel {
 public:
  explicit TruncPrFinishAOp(OpKernelConstruction* ctx)
      : StreamOpKernel(ctx), bits_(ReadBits(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    const int n_extras = ctx->num_inputs() - 3;  // masked_own, masked_other, key_own
    PrgKey key;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 2 + n_extras, &key)) return;
    auto runner = TfRunner(ctx);
    Tensor c_t;
    if (!OpenMasked(ctx, runner, &c_t)) return;
    const TensorShape& shape = c_t.shape();
    Tensor* msg = AllocateLike(ctx, 0, shape);
    Tensor* share = AllocateLike(ctx, 1, shape);
    if (!msg || !share) return;
    const int64_t n = shape.num_elements();
    uint64_t* y = RingData(msg);   // holds rb_A, then msg
    Tensor rc_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, shape, &rc_t));
    uint64_t* rc = RingData(&rc_t);
    uint64_t* t = RingData(share);
    OP_REQUIRES_OK(ctx, PrgFill(key, stream, draws::kTruncMsbShare, y, n, runner));
    OP_REQUIRES_OK(ctx, PrgFill(key, stream, draws::kTruncLowShare, rc, n, runner));
    OP_REQUIRES_OK(ctx, PrgFill(key, stream, draws::kTruncOutShare, t, n, runner));
    const uint64_t* c = RingData(c_t);
    const int bits = static_cast<int>(bits_);
    const uint64_t offset_out = uint64_t{1} << (62 - bits);
    ParallelElementwise(runner, n, 6, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const uint64_t c63 = c[i] >> 63;
        const uint64_t b_share = y[i] + c63 - 2 * c63 * y[i];
        const uint64_t y_a =
            ((c[i] << 1) >> (bits + 1)) - rc[i] + (b_share << (63 - bits)) - offset_out;
        y[i] = y_a - t[i];
      }
    });
    if (ctx->num_outputs() < 3) return;
    Tensor* msb = AllocateLike(ctx, 2, TensorShape({bits::PackedWords(n, 1)}));
    if (!msb) return;
    std::fill(RingData(msb), RingData(msb) + bits::PackedWords(n, 1), uint64_t{0});
    bits::PackBits(c, n, uint64_t{1} << 63, 1, /*portable=*/false, RingData(msb), runner);
  }

 private:
  const int64_t bits_;
};

// Checks the dealer's correlation holds n values' words (trunc_corr.h); false after failing.
bool CorrFits(OpKernelContext* ctx, const Tensor& corr, int64_t n, int bits) {
  const int64_t words = trunc_corr::Words(n, bits);
  if (corr.dims() == 1 && corr.dim_size(0) == words) return true;
  ctx->CtxFailure(errors::InvalidArgument("dealer correlation for ", n, " values must have ",
                                          words, " words, got shape ",
                                          corr.shape().DebugString()));
  return false;
}

// B's message y[i] = y_B - t[i], y_B = -rc_B + (rb_B - 2 c_63 rb_B) 2^(63-bits), with rc_B and
// rb_B from the correlation and c_63 = c63(i).
template <typename MsbFn>
void MessageOfB(const ParallelRunner& runner, const Tensor& corr, int64_t n, int bits,
                const uint64_t* t, uint64_t* y, const MsbFn& c63) {
  const uint64_t* rc = RingData(corr);
  const uint64_t* packed_rb = rc + n;
  const int kept = trunc_corr::MsbShareBits(bits);
  const int64_t packed_words = trunc_corr::Words(n, bits) - n;
  ParallelElementwise(runner, n, 6, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint64_t rb = bits::PackedValue(packed_rb, packed_words, i, kept);
      const uint64_t b_share = rb - 2 * c63(i) * rb;
      y[i] = (b_share << (63 - bits)) - rc[i] - t[i];
    }
  });
}

class TruncPrFinishBOp : public StreamOpKernel {
 public:
  explicit TruncPrFinishBOp(OpKernelConstruction* ctx)
      : StreamOpKernel(ctx), bits_(ReadBits(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    const int n_extras = ctx->num_inputs() - 4;  // and corr, key_next
    const Tensor& corr = ctx->input(2 + n_extras);
    PrgKey key;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 3 + n_extras, &key)) return;
    auto runner = TfRunner(ctx);
    Tensor c_t;
    if (!OpenMasked(ctx, runner, &c_t)) return;
    const TensorShape& shape = c_t.shape();
    const int64_t n = shape.num_elements();
    const int bits = static_cast<int>(bits_);
    if (!CorrFits(ctx, corr, n, bits)) return;
    Tensor* msg = AllocateLike(ctx, 0, shape);
    Tensor* share = AllocateLike(ctx, 1, shape);
    if (!msg || !share) return;
    uint64_t* t = RingData(share);
    OP_REQUIRES_OK(ctx, PrgFill(key, stream, draws::kTruncOutShare, t, n, runner));
    const uint64_t* c = RingData(c_t);
    MessageOfB(runner, corr, n, bits, t, RingData(msg), [c](int64_t i) { return c[i] >> 63; });
  }

 private:
  const int64_t bits_;
};

// B's finish in the 3-round variant: from c's msb bits (sent by A) instead of c.
class TruncPrFinishBMsbOp : public StreamOpKernel {
 public:
  explicit TruncPrFinishBMsbOp(OpKernelConstruction* ctx)
      : StreamOpKernel(ctx), bits_(ReadBits(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    const TensorShape& shape = ctx->input(0).shape();  // B's own masked value: the shape
    const Tensor& c_msb = ctx->input(1);
    const Tensor& corr = ctx->input(2);
    PrgKey key;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 3, &key)) return;
    const int64_t n = shape.num_elements();
    const int bits = static_cast<int>(bits_);
    OP_REQUIRES(ctx, c_msb.dims() == 1 && c_msb.dim_size(0) == bits::PackedWords(n, 1),
                errors::InvalidArgument("c's msb bits for ", n, " values must have ",
                                        bits::PackedWords(n, 1), " words, got shape ",
                                        c_msb.shape().DebugString()));
    if (!CorrFits(ctx, corr, n, bits)) return;
    Tensor* msg = AllocateLike(ctx, 0, shape);
    Tensor* share = AllocateLike(ctx, 1, shape);
    if (!msg || !share) return;
    auto runner = TfRunner(ctx);
    uint64_t* t = RingData(share);
    OP_REQUIRES_OK(ctx, PrgFill(key, stream, draws::kTruncOutShare, t, n, runner));
    const uint64_t* msb = RingData(c_msb);
    const int64_t msb_words = c_msb.dim_size(0);
    MessageOfB(runner, corr, n, bits, t, RingData(msg),
               [msb, msb_words](int64_t i) { return bits::PackedValue(msb, msb_words, i, 1); });
  }

 private:
  const int64_t bits_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaTruncPrDeal").Device(DEVICE_CPU).HostMemory("shape"),
                        TruncPrDealOp);
REGISTER_KERNEL_BUILDER(Name("PumaTruncPrMask").Device(DEVICE_CPU), TruncPrMaskOp);
REGISTER_KERNEL_BUILDER(Name("PumaTruncPrFinishA").Device(DEVICE_CPU), TruncPrFinishAOp);
REGISTER_KERNEL_BUILDER(Name("PumaTruncPrFinishBMsb").Device(DEVICE_CPU), TruncPrFinishBMsbOp);
REGISTER_KERNEL_BUILDER(Name("PumaTruncPrFinishB").Device(DEVICE_CPU), TruncPrFinishBOp);

}  // namespace tf_puma
