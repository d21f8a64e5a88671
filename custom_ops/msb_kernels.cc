// Kernels: the fused MSB rounds, bit-sliced (interfaces and the math in msb_ops.cc; the plan and
// the state's and messages' layout in msb_plan.h).
//
// Each block of 64 values is transposed once, in PumaMsbStart, into planes (one word per bit
// position); every later AND, XOR and shift of the circuit is then a whole-word operation on
// 64 values at once, a shift by s bit positions being an offset of s planes. The per-value
// pext/pdep packing and unpacking of every round is gone, and the state is width / 64 of its
// per-value size.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "custom_ops/kernel_util.h"
#include "custom_ops/msb_plan.h"
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

// In place: afterwards bit e of a[j] is what bit j of a[e] was (a 64 x 64 bit transpose, bit 0
// the least significant). Six stages swap ever smaller off-diagonal blocks.
inline void Transpose64(uint64_t a[64]) {
  uint64_t m = 0x00000000FFFFFFFFull;
  for (int j = 32; j != 0; j >>= 1, m ^= m << j) {
    for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k] ^= t << j;
      a[k | j] ^= t;
    }
  }
}

// The window's planes of one block: planes[j] bit v = bit low + j of x[v] (v < count; 0 for the
// padding), j < width. Portable: the values shifted and transposed in six stages.
void BlockPlanesPortable(const uint64_t* x, int64_t count, int low, int width,
                         uint64_t planes[64]) {
  for (int64_t v = 0; v < count; ++v) planes[v] = x[v] >> low;
  for (int64_t v = count; v < 64; ++v) planes[v] = 0;
  Transpose64(planes);
  for (int j = width; j < 64; ++j) planes[j] = 0;
}

#define TF_PUMA_BIT_SLICE __attribute__((target("avx512f,avx512bw,avx512vbmi")))

bool BitSliceAvx512Usable() {
  static const bool usable = __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vbmi");
  return usable;
}

// As BlockPlanesPortable, on AVX-512: register q holds values 8q..8q+7; a byte shuffle makes its
// qword k the bytes k of those values, an 8 x 8 qword transpose gathers byte k of all 64 values
// in t[k], and a plane is then one byte test (vptestmb) of t[k] against its bit.
TF_PUMA_BIT_SLICE void BlockPlanesAvx512(const uint64_t* x, int64_t count, int low, int width,
                                         uint64_t planes[64]) {
  alignas(64) uint8_t idx[64];
  for (int k = 0; k < 8; ++k) {
    for (int v = 0; v < 8; ++v) idx[8 * k + v] = static_cast<uint8_t>(8 * v + k);
  }
  const __m512i bytes_by_k = _mm512_load_si512(idx);
  __m512i r[8];
  for (int q = 0; q < 8; ++q) {
    const int64_t left = count - 8 * q;
    const __mmask8 live = left >= 8 ? 0xFF : left <= 0 ? 0 : (1u << left) - 1;
    // the maskz form: the plain intrinsic's undefined pass-through draws a GCC warning
    r[q] = _mm512_maskz_permutexvar_epi8(~__mmask64{0}, bytes_by_k,
                                         _mm512_maskz_loadu_epi64(live, x + 8 * q));
  }
  // 8 x 8 transpose of qwords: t[k] qword q = r[q] qword k, in three steps of pairs.
  const __m512i lo1 = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i hi1 = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  const __m512i lo2 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i hi2 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  const __m512i lo3 = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
  const __m512i hi3 = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
  __m512i a[8], b[8], t[8];
  for (int q = 0; q < 8; q += 2) {  // a[q]: (r_q, r_q+1) qwords 0..3; a[q+1]: 4..7
    a[q] = _mm512_permutex2var_epi64(r[q], lo1, r[q + 1]);
    a[q + 1] = _mm512_permutex2var_epi64(r[q], hi1, r[q + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // b[4h + m]: registers 4h..4h+3 at k = 2m and 2m + 1
    for (int g = 0; g < 2; ++g) {
      b[4 * h + 2 * g] = _mm512_permutex2var_epi64(a[4 * h + g], lo2, a[4 * h + 2 + g]);
      b[4 * h + 2 * g + 1] = _mm512_permutex2var_epi64(a[4 * h + g], hi2, a[4 * h + 2 + g]);
    }
  }
  for (int m = 0; m < 4; ++m) {  // b[m] (registers 0..3) and b[4 + m] (4..7) hold k = 2m, 2m + 1
    const int k0 = 2 * m;
    t[k0] = _mm512_permutex2var_epi64(b[m], lo3, b[4 + m]);
    t[k0 + 1] = _mm512_permutex2var_epi64(b[m], hi3, b[4 + m]);
  }
  for (int j = 0; j < width; ++j) {
    const int bit = low + j;
    planes[j] = _mm512_test_epi8_mask(t[bit / 8],
                                      _mm512_set1_epi8(static_cast<char>(1 << (bit % 8))));
  }
  for (int j = width; j < 64; ++j) planes[j] = 0;
}

// out[v] = bit v of w, v < count.
void UnpackWordPortable(uint64_t w, int64_t count, uint64_t* out) {
  for (int64_t v = 0; v < count; ++v) out[v] = (w >> v) & 1;
}

TF_PUMA_BIT_SLICE void UnpackWordAvx512(uint64_t w, int64_t count, uint64_t* out) {
  if (count < 64) {
    UnpackWordPortable(w, count, out);
    return;
  }
  const __m512i one = _mm512_set1_epi64(1);
  for (int q = 0; q < 8; ++q) {
    _mm512_storeu_si512(out + 8 * q,
                        _mm512_maskz_mov_epi64(static_cast<__mmask8>(w >> (8 * q)), one));
  }
}

// A party's XOR share of x & y from its shares (x_i, x_{i+1}), (y_i, y_{i+1}), before the zero
// share: x_i y_i ^ x_i y_{i+1} ^ x_{i+1} y_i.
inline uint64_t AndShare(uint64_t x_own, uint64_t x_next, uint64_t y_own, uint64_t y_next) {
  return (x_own & (y_own ^ y_next)) ^ (x_next & y_own);
}

// The state: rows P, G, E as (own, next) pairs, each `width` planes of `blocks` words.
struct Planes {
  uint64_t* base;
  int width;
  int64_t blocks;
  uint64_t* at(int row, int plane) const { return base + (row * width + plane) * blocks; }
  uint64_t* p(int side, int plane) const { return at(side, plane); }
  uint64_t* g(int side, int plane) const { return at(2 + side, plane); }
  uint64_t* e(int side, int plane) const { return at(4 + side, plane); }
};

// Bit positions of a mask, in increasing order (the order of a segment's planes).
std::vector<int> Positions(uint64_t mask) {
  std::vector<int> out;
  for (; mask; mask &= mask - 1) out.push_back(__builtin_ctzll(mask));
  return out;
}

bool ReadState(OpKernelContext* ctx, int width, int64_t* blocks) {
  const Tensor& state = ctx->input(0);
  if (state.dims() != 3 || state.dim_size(0) != msb::kStateRows ||
      state.dim_size(1) != width) {
    ctx->CtxFailure(errors::InvalidArgument(
        "MSB state must be [", msb::kStateRows, ", ", width, " planes, blocks] (PumaMsbStart's "
        "with the same width), got shape ", state.shape().DebugString()));
    return false;
  }
  *blocks = state.dim_size(2);
  return true;
}

bool ReadMessages(OpKernelContext* ctx, int first, int round, int64_t blocks, int width) {
  const int64_t words = msb::RoundWords(round, blocks, width);
  for (int k = first; k < first + 2; ++k) {
    const Tensor& z = ctx->input(k);
    if (z.dims() != 1 || z.dim_size(0) != words) {
      ctx->CtxFailure(errors::InvalidArgument("expected round ", round, "'s ", words,
                                              " packed words for ", blocks,
                                              " blocks of 64 values, got shape ",
                                              z.shape().DebugString()));
      return false;
    }
  }
  return true;
}

// z's segment planes ^= AndShare(x plane j, y plane j - shift) for each bit j of the segment
// (blocks [b0, b1)); x(side, j) and y(side, j) give a plane.
template <typename X, typename Y>
void XorSegmentAnds(const msb::Segment& seg, int64_t blocks, int64_t b0, int64_t b1,
                    const X& x, const Y& y, uint64_t* z) {
  int m = 0;
  for (uint64_t mask = seg.x_mask; mask; mask &= mask - 1, ++m) {
    const int j = __builtin_ctzll(mask);
    const uint64_t *__restrict xo = x(0, j), *__restrict xn = x(1, j),
                   *__restrict yo = y(0, j - seg.shift), *__restrict yn = y(1, j - seg.shift);
    uint64_t* __restrict out = z + m * blocks;
    for (int64_t b = b0; b < b1; ++b) out[b] ^= AndShare(xo[b], xn[b], yo[b], yn[b]);
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
    OP_REQUIRES_OK(ctx, ctx->GetAttr("low_bit", &low_bit_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
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
    const int64_t n = ctx->input(0).NumElements();
    const int64_t blocks = msb::Blocks(n);
    const int width = width_, low = low_bit_;
    Tensor* state_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({msb::kStateRows, width, blocks}),
                                             &state_t));
    const int64_t total = msb::RoundWords(0, blocks, width);
    Tensor* z_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({total}), &z_t));
    const uint64_t* x[2] = {RingData(ctx->input(0)), RingData(ctx->input(1))};
    const Planes st{RingData(state_t), width, blocks};
    // Addend j's XOR sharing: party i holds w_i in slot j = i (own) and w_{i+1} in j = i+1.
    int addend_of[2];
    for (int side = 0; side < 2; ++side) addend_of[side] = (party_ + side) % 3;
    auto runner = TfRunner(ctx);
    // P = the windows w = x >> low_bit as planes (S = A ^ B ^ C: each side's word is in one
    // addend), E = C; G is written by round 1 before it is read. Then round 0's AND
    // (A ^ C) & (B ^ C) on bits 0..width-2 from the same planes, into z (zero share first).
    uint64_t* z = RingData(z_t);
    OP_REQUIRES_OK(ctx, FillXorZeroShare(own, next, stream, z, total, runner));
    const auto block_planes = portable_ || !BitSliceAvx512Usable() ? BlockPlanesPortable
                                                                    : BlockPlanesAvx512;
    // A ^ C and B ^ C: each side's word sits in at most one addend, so each is w or 0.
    bool in_a_xor_c[2], in_b_xor_c[2];
    for (int side = 0; side < 2; ++side) {
      in_a_xor_c[side] = addend_of[side] != 1;
      in_b_xor_c[side] = addend_of[side] != 0;
    }
    runner(blocks, 64 * 8, [&](int64_t b0, int64_t b1) {
      // kChunk blocks at a time, so that each plane is written a cache line at once (the
      // planes of one block are `blocks` words apart and would share few cache sets).
      constexpr int64_t kChunk = 8;
      alignas(64) uint64_t a[64], chunk[2][64][kChunk];
      for (int64_t c0 = b0; c0 < b1; c0 += kChunk) {
        const int64_t c1 = std::min(b1, c0 + kChunk), len = c1 - c0;
        for (int side = 0; side < 2; ++side) {
          for (int64_t b = c0; b < c1; ++b) {
            const int64_t first = b * 64;
            block_planes(x[side] + first, std::min<int64_t>(64, n - first), low, width, a);
            for (int j = 0; j < width; ++j) chunk[side][j][b - c0] = a[j];
          }
          const bool holds_c = addend_of[side] == 2;
          for (int j = 0; j < width; ++j) {
            uint64_t *pj = st.p(side, j) + c0, *ej = st.e(side, j) + c0;
            for (int64_t k = 0; k < len; ++k) {
              pj[k] = chunk[side][j][k];
              ej[k] = holds_c ? chunk[side][j][k] : 0;
            }
          }
        }
        for (int j = 0; j < width - 1; ++j) {  // round 0's segment: bits 0..width-2, in order
          uint64_t* out = z + j * blocks + c0;
          for (int64_t k = 0; k < len; ++k) {
            const uint64_t w0 = chunk[0][j][k], w1 = chunk[1][j][k];
            out[k] ^= AndShare(in_a_xor_c[0] ? w0 : 0, in_a_xor_c[1] ? w1 : 0,
                               in_b_xor_c[0] ? w0 : 0, in_b_xor_c[1] ? w1 : 0);
          }
        }
      }
    });
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
    ReadWidth(ctx, &width_);
    if (!ctx->status().ok()) return;
    OP_REQUIRES(ctx, round_ >= 1 && round_ < msb::Rounds(width_),
                errors::InvalidArgument("round must be in [1, ", msb::Rounds(width_),
                                        ") for width ", width_));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t blocks = 0;
    const int width = width_;
    if (!ReadState(ctx, width, &blocks) || !ReadMessages(ctx, 1, round_ - 1, blocks, width)) {
      return;
    }
    PrgKey own, next;
    const uint64_t stream = stream_;
    if (!ReadKey(ctx, 3, &own) || !ReadKey(ctx, 4, &next)) return;
    Tensor* state_t = nullptr;  // the previous round's state, updated in place when unshared
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, ctx->input(0).shape(),
                                                               &state_t));
    if (RingData(state_t) != RingData(ctx->input(0))) {
      std::memcpy(RingData(state_t), RingData(ctx->input(0)),
                  ctx->input(0).NumElements() * sizeof(uint64_t));
    }
    const Planes st{RingData(state_t), width, blocks};
    const uint64_t* const msgs[2] = {RingData(ctx->input(1)), RingData(ctx->input(2))};
    const auto prev = msb::RoundSegments(round_ - 1, width);
    const auto cur = msb::RoundSegments(round_, width);
    const int64_t total = msb::RoundWords(round_, blocks, width);
    Tensor* z_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({total}), &z_t));
    uint64_t* z = RingData(z_t);
    auto runner = TfRunner(ctx);
    OP_REQUIRES_OK(ctx, FillXorZeroShare(own, next, stream, z, total, runner));
    auto p = [&](int side, int j) -> const uint64_t* { return st.p(side, j); };
    auto g = [&](int side, int j) -> const uint64_t* { return st.g(side, j); };
    if (round_ == 1) {
      // G = round 0's (A^C)&(B^C); M = that ^ C (into G), P_0 = S ^ (M << 1) (into E); the AND
      // S & (M << 1) on bits 1..width-2; then P = P_0 and G = 0 for the prefix levels.
      const std::vector<int> bits = Positions(prev[0].x_mask);  // 0..width-2
      runner(blocks, 16 * width, [&](int64_t b0, int64_t b1) {
        for (int side = 0; side < 2; ++side) {
          for (size_t m = 0; m < bits.size(); ++m) {
            const int j = bits[m];
            const uint64_t* in = msgs[side] + m * blocks;
            uint64_t *gj = st.g(side, j), *ej = st.e(side, j);
            for (int64_t b = b0; b < b1; ++b) gj[b] = in[b] ^ ej[b];
          }
          for (int j = 0; j < width; ++j) {
            const uint64_t *pj = st.p(side, j), *carry = j ? st.g(side, j - 1) : nullptr;
            uint64_t* ej = st.e(side, j);
            for (int64_t b = b0; b < b1; ++b) ej[b] = pj[b] ^ (carry ? carry[b] : 0);
          }
        }
        XorSegmentAnds(cur[0], blocks, b0, b1, p, g, z);
        for (int side = 0; side < 2; ++side) {
          for (int j = 0; j < width; ++j) {
            std::copy(st.e(side, j) + b0, st.e(side, j) + b1, st.p(side, j) + b0);
            std::fill(st.g(side, j) + b0, st.g(side, j) + b1, 0);
          }
        }
      });
      return;
    }
    // Absorb the previous round's messages (G ^= its G segment; P = its P segment when it has
    // one, 0 at the other bits), then this round's ANDs: P & G on the G segment's bits, P & P on
    // the P segment's.
    const std::vector<int> prev_g = Positions(prev[0].x_mask);
    const uint64_t prev_p_mask = prev.size() > 1 ? prev[1].x_mask : 0;
    const std::vector<int> prev_p = Positions(prev_p_mask);
    const int64_t g_words = static_cast<int64_t>(prev_g.size()) * blocks;
    const int64_t cur_g_words = static_cast<int64_t>(cur[0].width()) * blocks;
    runner(blocks, 12 * width, [&](int64_t b0, int64_t b1) {
      for (int side = 0; side < 2; ++side) {
        for (size_t m = 0; m < prev_g.size(); ++m) {
          const uint64_t* in = msgs[side] + m * blocks;
          uint64_t* gj = st.g(side, prev_g[m]);
          for (int64_t b = b0; b < b1; ++b) gj[b] ^= in[b];
        }
        if (!prev_p_mask) continue;
        for (int j = 0; j < width; ++j) {
          if (!((prev_p_mask >> j) & 1)) std::fill(st.p(side, j) + b0, st.p(side, j) + b1, 0);
        }
        for (size_t m = 0; m < prev_p.size(); ++m) {
          const uint64_t* in = msgs[side] + g_words + m * blocks;
          std::copy(in + b0, in + b1, st.p(side, prev_p[m]) + b0);
        }
      }
      XorSegmentAnds(cur[0], blocks, b0, b1, p, g, z);
      if (cur.size() > 1) XorSegmentAnds(cur[1], blocks, b0, b1, p, p, z + cur_g_words);
    });
  }

 private:
  int round_ = 1;
  int width_ = 64;
};

class MsbFinishOp : public OpKernel {
 public:
  explicit MsbFinishOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("portable", &portable_));
    ReadWidth(ctx, &width_);
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t blocks = 0;
    const int width = width_;
    const int last_round = msb::Rounds(width) - 1;
    if (!ReadState(ctx, width, &blocks) || !ReadMessages(ctx, 1, last_round, blocks, width)) {
      return;
    }
    const TensorShape& values = ctx->input(3).shape();
    const int64_t n = values.num_elements();
    OP_REQUIRES(ctx, msb::Blocks(n) == blocks,
                errors::InvalidArgument("`like` has ", n, " values but the MSB state holds ",
                                        blocks, " blocks of 64: pass PumaMsbStart's x_own"));
    // The sign bit is P_0[top] ^ G[top - 1] after the last round's G segment, read from the
    // state and the two messages as they stand, without copying the state.
    const Planes st{const_cast<uint64_t*>(RingData(ctx->input(0))), width, blocks};
    const uint64_t* const msgs[2] = {RingData(ctx->input(1)), RingData(ctx->input(2))};
    const uint64_t last = msb::RoundSegments(last_round, width)[0].x_mask;
    const int top = width - 1;
    const bool in_last = (last >> (top - 1)) & 1;
    const int64_t m = __builtin_popcountll(last & ((uint64_t{1} << (top - 1)) - 1));
    uint64_t* bits_out[2];
    for (int side = 0; side < 2; ++side) {
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(side, values, &out));
      bits_out[side] = RingData(out);
    }
    const auto unpack = portable_ || !BitSliceAvx512Usable() ? UnpackWordPortable
                                                              : UnpackWordAvx512;
    TfRunner(ctx)(blocks, 64 * 2, [&](int64_t b0, int64_t b1) {
      for (int side = 0; side < 2; ++side) {
        const uint64_t *p0 = st.e(side, top), *g = st.g(side, top - 1);
        const uint64_t* msg = in_last ? msgs[side] + m * blocks : nullptr;
        for (int64_t b = b0; b < b1; ++b) {
          const uint64_t w = p0[b] ^ g[b] ^ (msg ? msg[b] : 0);
          const int64_t first = b * 64;
          unpack(w, std::min<int64_t>(64, n - first), bits_out[side] + first);
        }
      }
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
