// The AND rounds of the fused MSB circuit (PumaMsbStart / PumaMsbStep / PumaMsbFinish): which
// bits each round ANDs, for a window of `width` bits whose top bit (width - 1) is the sign.
// Shared by the op shape functions and the kernels; the Python mirror is
// tf_puma/protocols/boolean.py (msb_plan).
//
// The rounds run bit-sliced: values go in blocks of 64, and plane j of a block is one word
// holding bit j of its 64 values (bit e of the word: value 64 b + e). The state is
// [kStateRows][width planes][blocks] words; a round's message is, segment by segment, one
// plane of `blocks` words per bit of the segment's mask, in increasing bit order.
#ifndef TF_PUMA_CUSTOM_OPS_MSB_PLAN_H_
#define TF_PUMA_CUSTOM_OPS_MSB_PLAN_H_

#include <algorithm>
#include <cstdint>
#include <vector>

namespace tf_puma {
namespace msb {

constexpr int kStateRows = 6;    // state = (P, G, E), each an (own, next) pair of words
constexpr int kMinWidth = 8;     // the narrowest window a comparison may use
constexpr int kMaxWidth = 64;

// One AND segment: result bit i (for i in x_mask) is x[i] & y[i - shift].
struct Segment {
  uint64_t x_mask;
  int shift;
  int width() const { return __builtin_popcountll(x_mask); }
  uint64_t y_mask() const { return x_mask >> shift; }
};

// Kogge-Stone levels s = 1, 2, ..., up to the largest power of two below width - 1, restricted
// to the positions the carry into the top bit (width - 1) needs (backwards from G[width - 2]):
// G[i] ^= P[i] & G[i-s] for i in g, P[i] &= P[i-s] for i in p. width 64: s = 1..32.
struct Level {
  int shift;
  uint64_t g, p;
};

inline std::vector<Level> Levels(int width) {
  uint64_t need_g = uint64_t{1} << (width - 2), need_p = 0;
  std::vector<Level> plan;
  for (int s = 32; s >= 1; s /= 2) {
    if (s > width - 2) continue;  // no carry position as far as s below the top bit
    const uint64_t at_least_s = ~((uint64_t{1} << s) - 1);
    const uint64_t and_g = need_g & at_least_s, and_p = need_p & at_least_s;
    plan.push_back({s, and_g, and_p});
    need_p |= and_g | (and_p >> s);
    need_g |= and_g >> s;
  }
  std::reverse(plan.begin(), plan.end());
  return plan;
}

// AND rounds of a width's circuit: Start (0), Step 1..Rounds-1; Finish only unpacks.
// width 64: 8; 32: 7.
inline int Rounds(int width) { return 2 + static_cast<int>(Levels(width).size()); }

inline bool ValidWidth(int width) { return width >= kMinWidth && width <= kMaxWidth; }

// Round r's segments: 0 = carry-save carries (A^C) & (B^C) on bits 0..width-2; 1 = G = S &
// (M<<1) on bits 1..width-2; 2.. = Kogge-Stone level r-2 (its G segment, then its P segment if
// any).
inline std::vector<Segment> RoundSegments(int round, int width) {
  const uint64_t low = (uint64_t{1} << (width - 1)) - 1;
  if (round == 0) return {{low, 0}};
  if (round == 1) return {{low & ~uint64_t{1}, 1}};
  const Level level = Levels(width)[round - 2];
  std::vector<Segment> segs = {{level.g, level.shift}};
  if (level.p) segs.push_back({level.p, level.shift});
  return segs;
}

// Blocks of 64 values that n values take (the last one padded).
inline int64_t Blocks(int64_t n) { return (n + 63) / 64; }

// Words of round r's message for `blocks` blocks of values: a plane per AND bit.
inline int64_t RoundWords(int round, int64_t blocks, int width) {
  int64_t planes = 0;
  for (const Segment& seg : RoundSegments(round, width)) planes += seg.width();
  return planes * blocks;
}

}  // namespace msb
}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_MSB_PLAN_H_
