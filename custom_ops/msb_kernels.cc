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

// A party's XOR share word of x & (y >> shift) from its shares (x_i, x_{i+1}), (y_i, y_{i+1})
// (plus the zero share added by the caller): x_i y_i ^ x_i y_{i+1} ^ x_{i+1} y_i, y shifted up
// to x's bit positions so the AND is taken on whole words.
inline uint64_t AndShareWord(uint64_t x_own, uint64_t x_next, uint64_t y_own, uint64_t y_next,
                             int shift) {
  return (x_own & ((y_own ^ y_next) << shift)) ^ (x_next & (y_own << shift));
}

// z[0..total) ^= packed AndShareWord over the segments (x's bits at x_mask, y `shift` bits
// lower): one extract per value and segment, where packing x's and y's bits apart and ANDing
// the packed words took four packing passes.
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
                          return AndShareWord(word(o.x_own, e), word(o.x_next, e),
                                              word(o.y_own, e), word(o.y_next, e), shift);
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

bool ReadMessages(OpKernelContext* ctx, int first, int round, int64_t n, int width) {
  const int64_t words = msb::RoundWords(round, n, width);
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

// Round 0's two messages (own share, received share) unpacked into G: the carry-save AND,
// before round 1 makes it M. Later rounds absorb their messages in AbsorbAndPack and SignBits.
void AbsorbRoundZero(OpKernelContext* ctx, int64_t n, int width, bool portable,
                     const State& st) {
  const msb::Segment seg = msb::RoundSegments(0, width)[0];  // round 0 has one segment
  auto runner = TfRunner(ctx);
  for (int side = 0; side < 2; ++side) {
    bits::UnpackBits(RingData(ctx->input(1 + side)), n, seg.x_mask, seg.width(), portable,
                     st.g(side), runner);
  }
}

// Rounds 2..7 in one pass over the values: the previous round's messages absorbed into the
// state (G ^= its G segment, P = its P segment when it has one), then this round's ANDs packed
// into z (P & G, and P & P when it has a P segment). The same words as unpacking the messages
// and then XorPackedAnd, with the state read and written once.
template <typename Method>
void AbsorbAndPackWith(const uint64_t* const msgs[2], const std::vector<msb::Segment>& prev,
                       const std::vector<msb::Segment>& cur, int64_t n, const State& st,
                       uint64_t* z, const ParallelRunner& runner) {
  const int prev_g = prev[0].width(), prev_p = prev.size() > 1 ? prev[1].width() : 0;
  const int cur_g = cur[0].width(), cur_p = cur.size() > 1 ? cur[1].width() : 0;
  const int64_t prev_g_words = bits::PackedWords(n, prev_g);
  const int64_t prev_p_words = bits::PackedWords(n, prev_p);
  uint64_t* z_p = z + bits::PackedWords(n, cur_g);
  runner((n + 63) / 64, 64 * 40, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {  // 64 values fill whole words of z
      bits::XorBitWriter and_g{z + b * cur_g, cur_g}, and_p{z_p + b * cur_p, cur_p};
      const int64_t end = std::min(n, (b + 1) * 64);
      for (int64_t e = b * 64; e < end; ++e) {
        uint64_t p[2], g[2];
        for (int side = 0; side < 2; ++side) {
          g[side] = st.g(side)[e] ^ Method::Deposit(
              bits::PackedValue(msgs[side], prev_g_words, e, prev_g), prev[0].x_mask);
          st.g(side)[e] = g[side];
          if (prev_p) {
            p[side] = Method::Deposit(
                bits::PackedValue(msgs[side] + prev_g_words, prev_p_words, e, prev_p),
                prev[1].x_mask);
            st.p(side)[e] = p[side];
          } else {
            p[side] = st.p(side)[e];
          }
        }
        and_g.Put(Method::Extract(AndShareWord(p[0], p[1], g[0], g[1], cur[0].shift),
                                  cur[0].x_mask));
        if (cur_p) {
          and_p.Put(Method::Extract(AndShareWord(p[0], p[1], p[0], p[1], cur[1].shift),
                                    cur[1].x_mask));
        }
      }
      and_g.Flush();
      and_p.Flush();
    }
  });
}

void AbsorbAndPack(OpKernelContext* ctx, int round, int64_t n, int width, bool portable,
                   const State& st, uint64_t* z) {
  const uint64_t* const msgs[2] = {RingData(ctx->input(1)), RingData(ctx->input(2))};
  const auto prev = msb::RoundSegments(round - 1, width);
  const auto cur = msb::RoundSegments(round, width);
  bits::WithBitMethod(portable, [&](auto method) {
    AbsorbAndPackWith<decltype(method)>(msgs, prev, cur, n, st, z, TfRunner(ctx));
  });
}

// PumaMsbFinish's bits: side's ((P_0 >> top) ^ (G ^ the last G segment) >> (top - 1)) & 1,
// P_0 in E, top = width - 1.
template <typename Method>
void SignBits(const State& st, const uint64_t* const msgs[2], const msb::Segment& last,
              int top, int64_t n, uint64_t* const out[2], const ParallelRunner& runner) {
  const int last_bits = last.width();
  const int64_t words = bits::PackedWords(n, last_bits);
  for (int side = 0; side < 2; ++side) {
    const uint64_t *g = st.g(side), *p0 = st.e(side), *msg = msgs[side];
    uint64_t* bit = out[side];
    ParallelElementwise(runner, n, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const uint64_t g_last = g[i] ^ Method::Deposit(
            bits::PackedValue(msg, words, i, last_bits), last.x_mask);
        bit[i] = ((p0[i] >> top) ^ (g_last >> (top - 1))) & 1;
      }
    });
  }
}

// The window's width, checked (the op's shape function checks it first in a graph).
void ReadWidth(OpKernelConstruction* ctx, int* width) {
  OP_REQUIRES_OK(ctx, ctx->GetAttr("width", width));
  OP_REQUIRES(ctx, msb::ValidWidth(*width),
              errors::InvalidArgument("width must be in [", msb::kMinWidth, ", ",
                                      msb::kMaxWidth, "], got ", *width));
}

class MsbStartOp : public StreamOpKernel {
 public:
  explicit MsbStartOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("party", &party_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("low_bit", &low_bit_));
    ReadWidth(ctx, &width_);
    OP_REQUIRES(ctx, party_ < 3, errors::InvalidArgument("party must be 0, 1 or 2"));
    OP_REQUIRES(ctx, low_bit_ + width_ <= 64,
                errors::InvalidArgument("the window [low_bit, low_bit + width) leaves the word"));
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
    const int64_t total = msb::RoundWords(0, n, width_);
    Tensor* z_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({total}), &z_t));
    const uint64_t* x[2] = {RingData(ctx->input(0)), RingData(ctx->input(1))};
    const State st = Rows(RingData(state_t), n);
    // The windows w = x >> low_bit go to P (S = A ^ B ^ C: each side's word is in one addend);
    // bits at and above the width are never read.
    auto runner = TfRunner(ctx);
    for (int side = 0; side < 2; ++side) {
      const uint64_t* in = x[side];
      uint64_t* out = st.p(side);
      const int low = low_bit_;
      ParallelElementwise(runner, n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = in[i] >> low;
      });
    }
    // Addend j's XOR sharing: party i holds w_i in slot j = i (own) and w_{i+1} in j = i+1.
    auto addend = [&](int j, int side) -> const uint64_t* {
      return (party_ + side) % 3 == j ? st.p(side) : nullptr;
    };
    for (int side = 0; side < 2; ++side) {
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
    OP_REQUIRES_OK(ctx, FillXorZeroShare(own, next, stream, z, total, runner));
    XorPackedAnd(ctx, msb::RoundSegments(0, width_), {operands}, n, portable_, z);
  }

 private:
  int party_ = 0;
  int low_bit_ = 0;
  int width_ = 64;
  bool portable_ = false;
};

class MsbStepOp : public StreamOpKernel {
 public:
  explicit MsbStepOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("round", &round_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
    ReadWidth(ctx, &width_);
    if (!ctx->status().ok()) return;
    OP_REQUIRES(ctx, round_ >= 1 && round_ < msb::Rounds(width_),
                errors::InvalidArgument("round must be in [1, ", msb::Rounds(width_),
                                        ") for width ", width_));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t n = 0;
    if (!ReadState(ctx, &n) || !ReadMessages(ctx, 1, round_ - 1, n, width_)) return;
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
    auto runner = TfRunner(ctx);
    if (round_ == 1) {  // G holds (A^C)&(B^C): M = that ^ C, Y = M << 1, P = S ^ Y (into E)
      AbsorbRoundZero(ctx, n, width_, portable_, st);
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
    const auto segs = msb::RoundSegments(round_, width_);
    const int64_t total = msb::RoundWords(round_, n, width_);
    Tensor* z_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({total}), &z_t));
    uint64_t* z = RingData(z_t);
    OP_REQUIRES_OK(ctx, FillXorZeroShare(own, next, stream, z, total, runner));
    if (round_ > 1) {  // P & G (G segment), P & P (P segment), the state updated on the way
      AbsorbAndPack(ctx, round_, n, width_, portable_, st, z);
      return;
    }
    // round 1: S & Y (S in P, carries M in G; Y = M << 1 is the shift of the segment)
    XorPackedAnd(ctx, segs, {{st.p(0), st.p(1), st.g(0), st.g(1)}}, n, portable_, z);
    for (int side = 0; side < 2; ++side) {  // from now on P = G's propagate bits, E keeps
      std::memcpy(st.p(side), st.e(side), n * sizeof(uint64_t));  // the original P
      std::memset(st.g(side), 0, n * sizeof(uint64_t));
    }
  }

 private:
  int round_ = 1;
  int width_ = 64;
  bool portable_ = false;
};

class MsbFinishOp : public OpKernel {
 public:
  explicit MsbFinishOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
    ReadWidth(ctx, &width_);
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t n = 0;
    const int last_round = msb::Rounds(width_) - 1;
    if (!ReadState(ctx, &n) || !ReadMessages(ctx, 1, last_round, n, width_)) return;
    // The sign bit is P_0[top] ^ G[top - 1] after the last round's G segment: read from the
    // state and the two messages as they stand, without copying the state.
    const uint64_t* state = RingData(ctx->input(0));
    const uint64_t* const msgs[2] = {RingData(ctx->input(1)), RingData(ctx->input(2))};
    const msb::Segment last = msb::RoundSegments(last_round, width_)[0];
    TensorShape values = ctx->input(0).shape();
    values.RemoveDim(0);
    uint64_t* bits_out[2];
    for (int side = 0; side < 2; ++side) {
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(side, values, &out));
      bits_out[side] = RingData(out);
    }
    const State st = Rows(const_cast<uint64_t*>(state), n);  // read only
    bits::WithBitMethod(portable_, [&](auto method) {
      SignBits<decltype(method)>(st, msgs, last, width_ - 1, n, bits_out, TfRunner(ctx));
    });
  }

 private:
  int width_ = 64;
  bool portable_ = false;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaMsbStart").Device(DEVICE_CPU), MsbStartOp);
REGISTER_KERNEL_BUILDER(Name("PumaMsbStep").Device(DEVICE_CPU), MsbStepOp);
REGISTER_KERNEL_BUILDER(Name("PumaMsbFinish").Device(DEVICE_CPU), MsbFinishOp);

}  // namespace tf_puma
