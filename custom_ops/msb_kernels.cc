// Kernels: the fused MSB rounds (interfaces and the math in msb_ops.cc, plan in msb_plan.h).
#include <cstring>
#include <vector>

#include "custom_ops/bit_pack.h"
#include "custom_ops/kernel_util.h"
#include "custom_ops/msb_plan.h"
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

// One segment's operand pairs; nullptr stands for a zero share.
struct AndOperands {
  const uint64_t *x_own, *x_next, *y_own, *y_next;
};

// z[0..total) ^= packed((x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i)) over the segments,
// y taken `shift` bits lower. The AND is done on whole words (y shifted up to x's positions),
// then one extract per value and segment: packing x's and y's bits apart and ANDing the packed
// words gives the same bits with four packing passes.
void XorPackedAnd(OpKernelContext* ctx, const std::vector<msb::Segment>& segs,
                  const std::vector<AndOperands>& operands, int64_t n, bool portable,
                  uint64_t* z) {
  auto runner = TfRunner(ctx);
  for (size_t k = 0; k < segs.size(); ++k) {
    const AndOperands& o = operands[k];
    const int shift = segs[k].shift;
    auto word = [](const uint64_t* side, int64_t e) { return side ? side[e] : uint64_t{0}; };
    bits::XorPackValues(n, segs[k].x_mask, segs[k].width(), portable, z, runner,
                        [&](int64_t e) {
                          const uint64_t yo = word(o.y_own, e) << shift;
                          const uint64_t yn = word(o.y_next, e) << shift;
                          return (word(o.x_own, e) & (yo ^ yn)) ^ (word(o.x_next, e) & yo);
                        });
    z += bits::PackedWords(n, segs[k].width());
  }
}

// The state's six rows: P, G, E as (own, next) pairs of n words each.
struct State {
  uint64_t* row[msb::kStateRows];
  uint64_t* p(int side) const { return row[side]; }
  uint64_t* g(int side) const { return row[2 + side]; }
  uint64_t* e(int side) const { return row[4 + side]; }
};

State Rows(uint64_t* base, int64_t n) {
  State s;
  for (int r = 0; r < msb::kStateRows; ++r) s.row[r] = base + r * n;
  return s;
}

bool ReadState(OpKernelContext* ctx, int64_t* n) {
  const Tensor& state = ctx->input(0);
  if (state.dims() < 1 || state.dim_size(0) != msb::kStateRows) {
    ctx->CtxFailure(errors::InvalidArgument("MSB state must have ", msb::kStateRows,
                                            " rows first, got shape ",
                                            state.shape().DebugString()));
    return false;
  }
  *n = state.NumElements() / msb::kStateRows;
  return true;
}

bool ReadMessages(OpKernelContext* ctx, int first, int round, int64_t n) {
  const int64_t words = msb::RoundWords(round, n);
  for (int k = first; k < first + 2; ++k) {
    const Tensor& z = ctx->input(k);
    if (z.dims() != 1 || z.dim_size(0) != words) {
      ctx->CtxFailure(errors::InvalidArgument("expected round ", round, "'s ", words,
                                              " packed words for ", n, " values, got shape ",
                                              z.shape().DebugString()));
      return false;
    }
  }
  return true;
}

// Unpacks round `round`'s two messages (own share, received share) into the state:
// round 0 -> G (the carry-save AND, before it becomes M), otherwise G ^= its G segment and
// P = its P segment (when the round has one).
void Absorb(OpKernelContext* ctx, int round, int64_t n, bool portable, const State& st) {
  const auto segs = msb::RoundSegments(round);
  auto runner = TfRunner(ctx);
  for (int side = 0; side < 2; ++side) {
    const uint64_t* src = RingData(ctx->input(1 + side));
    bits::UnpackBits(src, n, segs[0].x_mask, segs[0].width(), portable,
                     /*xor_into=*/round > 0, st.g(side), runner);
    if (segs.size() > 1) {
      bits::UnpackBits(src + bits::PackedWords(n, segs[0].width()), n, segs[1].x_mask,
                       segs[1].width(), portable, /*xor_into=*/false, st.p(side), runner);
    }
  }
}

class MsbStartOp : public StreamOpKernel {
 public:
  explicit MsbStartOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("party", &party_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
    OP_REQUIRES(ctx, party_ < 3, errors::InvalidArgument("party must be 0, 1 or 2"));
  }

  void Compute(OpKernelContext* ctx) override {
    if (!InputsShareShape(ctx, 2, "MSB")) return;
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 2, &own) || !ReadKey(ctx, 3, &next)) return;
    const TensorShape& shape = ctx->input(0).shape();
    const int64_t n = shape.num_elements();
    TensorShape state_shape({msb::kStateRows});
    state_shape.AppendShape(shape);
    Tensor* state_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, state_shape, &state_t));
    const int64_t total = msb::RoundWords(0, n);
    Tensor* z_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({total}), &z_t));
    const uint64_t* x[2] = {RingData(ctx->input(0)), RingData(ctx->input(1))};
    // Addend j's XOR sharing: party i holds x_i in slot j = i (own) and x_{i+1} in j = i+1.
    auto addend = [&](int j, int side) -> const uint64_t* {
      return (party_ + side) % 3 == j ? x[side] : nullptr;
    };
    const State st = Rows(RingData(state_t), n);
    for (int side = 0; side < 2; ++side) {
      std::memcpy(st.p(side), x[side], n * sizeof(uint64_t));  // S = A ^ B ^ C
      std::memset(st.g(side), 0, n * sizeof(uint64_t));
      const uint64_t* c = addend(2, side);
      if (c) {
        std::memcpy(st.e(side), c, n * sizeof(uint64_t));
      } else {
        std::memset(st.e(side), 0, n * sizeof(uint64_t));
      }
    }
    // A ^ C and B ^ C: each side's word sits in at most one addend, so each is x or 0.
    auto either = [&](int j, int side) -> const uint64_t* {
      const uint64_t* w = addend(j, side);
      return w ? w : addend(2, side);
    };
    const AndOperands operands{either(0, 0), either(0, 1), either(1, 0), either(1, 1)};
    uint64_t* z = RingData(z_t);
    Tensor scratch_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, TensorShape({total}), &scratch_t));
    auto runner = TfRunner(ctx);
    OP_REQUIRES_OK(ctx, FillXorZeroShare(own, next, stream, z, RingData(&scratch_t), total,
                                         runner));
    XorPackedAnd(ctx, msb::RoundSegments(0), {operands}, n, portable_, z);
  }

 private:
  int party_ = 0;
  bool portable_ = false;
};

class MsbStepOp : public StreamOpKernel {
 public:
  explicit MsbStepOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("round", &round_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
    OP_REQUIRES(ctx, round_ >= 1 && round_ < msb::kRounds,
                errors::InvalidArgument("round must be in [1, ", msb::kRounds, ")"));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t n = 0;
    if (!ReadState(ctx, &n) || !ReadMessages(ctx, 1, round_ - 1, n)) return;
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 3, &own) || !ReadKey(ctx, 4, &next)) return;
    Tensor* state_t = nullptr;  // the previous round's state, updated in place when unshared
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, ctx->input(0).shape(),
                                                               &state_t));
    if (RingData(state_t) != RingData(ctx->input(0))) {
      std::memcpy(RingData(state_t), RingData(ctx->input(0)),
                  msb::kStateRows * n * sizeof(uint64_t));
    }
    const State st = Rows(RingData(state_t), n);
    Absorb(ctx, round_ - 1, n, portable_, st);
    auto runner = TfRunner(ctx);
    if (round_ == 1) {  // G holds (A^C)&(B^C): M = that ^ C, Y = M << 1, P = S ^ Y (into E)
      for (int side = 0; side < 2; ++side) {
        uint64_t *p = st.p(side), *g = st.g(side), *e = st.e(side);
        ParallelElementwise(runner, n, 2, [&](int64_t b, int64_t end) {
          for (int64_t i = b; i < end; ++i) {
            g[i] ^= e[i];
            e[i] = p[i] ^ (g[i] << 1);
          }
        });
      }
    }
    const auto segs = msb::RoundSegments(round_);
    const int64_t total = msb::RoundWords(round_, n);
    Tensor* z_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({total}), &z_t));
    uint64_t* z = RingData(z_t);
    Tensor scratch_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, TensorShape({total}), &scratch_t));
    OP_REQUIRES_OK(ctx, FillXorZeroShare(own, next, stream, z, RingData(&scratch_t), total,
                                         runner));
    // round 1: S & Y (S in P, carries M in G; Y = M << 1 is the shift of the segment);
    // later rounds: P & G (G segment), P & P (P segment).
    std::vector<AndOperands> operands = {{st.p(0), st.p(1), st.g(0), st.g(1)}};
    if (segs.size() > 1) operands.push_back({st.p(0), st.p(1), st.p(0), st.p(1)});
    XorPackedAnd(ctx, segs, operands, n, portable_, z);
    if (round_ == 1) {  // from now on P = G's propagate bits, E keeps the original P
      for (int side = 0; side < 2; ++side) {
        std::memcpy(st.p(side), st.e(side), n * sizeof(uint64_t));
        std::memset(st.g(side), 0, n * sizeof(uint64_t));
      }
    }
  }

 private:
  int round_ = 1;
  bool portable_ = false;
};

class MsbFinishOp : public OpKernel {
 public:
  explicit MsbFinishOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t n = 0;
    if (!ReadState(ctx, &n) || !ReadMessages(ctx, 1, msb::kRounds - 1, n)) return;
    Tensor state_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT64, ctx->input(0).shape(),
                                           &state_t));
    std::memcpy(RingData(&state_t), RingData(ctx->input(0)),
                msb::kStateRows * n * sizeof(uint64_t));
    const State st = Rows(RingData(&state_t), n);
    Absorb(ctx, msb::kRounds - 1, n, portable_, st);
    TensorShape values = ctx->input(0).shape();
    values.RemoveDim(0);
    auto runner = TfRunner(ctx);
    for (int side = 0; side < 2; ++side) {
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(side, values, &out));
      uint64_t* bit = RingData(out);
      const uint64_t *g = st.g(side), *p0 = st.e(side);
      ParallelElementwise(runner, n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) bit[i] = ((p0[i] >> 63) ^ (g[i] >> 62)) & 1;
      });
    }
  }

 private:
  bool portable_ = false;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaMsbStart").Device(DEVICE_CPU), MsbStartOp);
REGISTER_KERNEL_BUILDER(Name("PumaMsbStep").Device(DEVICE_CPU), MsbStepOp);
REGISTER_KERNEL_BUILDER(Name("PumaMsbFinish").Device(DEVICE_CPU), MsbFinishOp);

}  // namespace tf_puma
