// The AND rounds of the fused MSB circuit (PumaMsbStart / PumaMsbStep / PumaMsbFinish): which
// bits each round ANDs. Shared by the op shape functions and the kernels; the Python reference
// is tf_puma/protocols/boolean.py (_MSB_PLAN and msb_reference).
#ifndef TF_PUMA_CUSTOM_OPS_MSB_PLAN_H_
#define TF_PUMA_CUSTOM_OPS_MSB_PLAN_H_

#include <algorithm>
#include <cstdint>
#include <vector>

namespace tf_puma {
namespace msb {

constexpr int kRounds = 8;       // AND rounds: Start (0), Step 1..7; Finish only unpacks
constexpr int kStateRows = 6;    // state = (P, G, E), each an (own, next) pair of words

// One AND segment: result bit i (for i in x_mask) is x[i] & y[i - shift].
struct Segment {
  uint64_t x_mask;
  int shift;
  int width() const { return __builtin_popcountll(x_mask); }
  uint64_t y_mask() const { return x_mask >> shift; }
};

// Kogge-Stone levels s = 1, 2, ..., 32 restricted to the positions the carry into bit 63 needs
// (backwards from G[62]): G[i] ^= P[i] & G[i-s] for i in g, P[i] &= P[i-s] for i in p.
struct Level {
  int shift;
  uint64_t g, p;
};

inline std::vector<Level> Levels() {
  uint64_t need_g = uint64_t{1} << 62, need_p = 0;
  std::vector<Level> plan;
  for (int s = 32; s >= 1; s /= 2) {
    const uint64_t at_least_s = ~((uint64_t{1} << s) - 1);
    const uint64_t and_g = need_g & at_least_s, and_p = need_p & at_least_s;
    plan.push_back({s, and_g, and_p});
    need_p |= and_g | (and_p >> s);
    need_g |= and_g >> s;
  }
  std::reverse(plan.begin(), plan.end());
  return plan;
}

// Round r's segments: 0 = carry-save carries (A^C) & (B^C) on bits 0..62; 1 = G = S & (M<<1)
// on bits 1..62; 2..7 = Kogge-Stone level r-2 (its G segment, then its P segment if any).
inline std::vector<Segment> RoundSegments(int round) {
  const uint64_t low63 = (uint64_t{1} << 63) - 1;
  if (round == 0) return {{low63, 0}};
  if (round == 1) return {{low63 & ~uint64_t{1}, 1}};
  const Level level = Levels()[round - 2];
  std::vector<Segment> segs = {{level.g, level.shift}};
  if (level.p) segs.push_back({level.p, level.shift});
  return segs;
}

// Words of round r's packed message for n values.
inline int64_t RoundWords(int round, int64_t n) {
  int64_t words = 0;
  for (const Segment& seg : RoundSegments(round)) words += (n * seg.width() + 63) / 64;
  return words;
}

}  // namespace msb
}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_MSB_PLAN_H_
