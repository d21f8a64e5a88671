// Dense bit packing shared by the boolean-share kernels: the bits of each value under a mask
// (width = popcount(mask) bits), laid end to end across values and padded to whole words.
#ifndef TF_PUMA_CUSTOM_OPS_BIT_PACK_H_
#define TF_PUMA_CUSTOM_OPS_BIT_PACK_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "custom_ops/ring_gemm.h"

namespace tf_puma {
namespace bits {

// Bits of w under mask, moved to the low end in order (BMI2 pext when available), and back.
__attribute__((target("bmi2"))) inline uint64_t ExtractBmi2(uint64_t w, uint64_t mask) {
  return _pext_u64(w, mask);
}
__attribute__((target("bmi2"))) inline uint64_t DepositBmi2(uint64_t v, uint64_t mask) {
  return _pdep_u64(v, mask);
}
inline uint64_t ExtractPortable(uint64_t w, uint64_t mask) {
  uint64_t out = 0;
  for (int k = 0; mask; mask &= mask - 1, ++k) out |= ((w >> __builtin_ctzll(mask)) & 1) << k;
  return out;
}
inline uint64_t DepositPortable(uint64_t v, uint64_t mask) {
  uint64_t out = 0;
  for (int k = 0; mask; mask &= mask - 1, ++k) out |= ((v >> k) & 1) << __builtin_ctzll(mask);
  return out;
}
inline bool HasBmi2() {
  static const bool has = __builtin_cpu_supports("bmi2");
  return has;
}

// Words that n values of `width` packed bits take.
inline int64_t PackedWords(int64_t n, int width) { return (n * width + 63) / 64; }

// Packs bits `mask` (width bits) of src[0..n) densely into dst (zeroed, PackedWords(n) words).
// Threads take blocks of 64 values, which fill whole words, so no word is shared.
inline void PackBits(const uint64_t* src, int64_t n, uint64_t mask, int width, bool portable,
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

// The inverse: value e's packed bits back at `mask`'s positions, other bits 0; with
// xor_into, XORed into dst[e] instead of stored.
inline void UnpackBits(const uint64_t* src, int64_t n, uint64_t mask, int width, bool portable,
                       bool xor_into, uint64_t* dst, const ParallelRunner& runner) {
  auto deposit = HasBmi2() && !portable ? DepositBmi2 : DepositPortable;
  const uint64_t low = width == 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
  runner(n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      uint64_t v = 0;
      if (width) {
        const int64_t bit = e * width;
        const int shift = static_cast<int>(bit & 63);
        v = src[bit >> 6] >> shift;
        if (shift && shift + width > 64) v |= src[(bit >> 6) + 1] << (64 - shift);
        v = deposit(v & low, mask);
      }
      dst[e] = xor_into ? dst[e] ^ v : v;
    }
  });
}

}  // namespace bits
}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_BIT_PACK_H_
