// Dense bit packing shared by the boolean-share kernels: the bits of each value under a mask
// (width = popcount(mask) bits), laid end to end across values and padded to whole words.
#ifndef TF_PUMA_CUSTOM_OPS_BIT_PACK_H_
#define TF_PUMA_CUSTOM_OPS_BIT_PACK_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "custom_ops/ring_gemm.h"

namespace tf_puma {
namespace bits {

// Bits of w under mask, moved to the low end in order (what pext does), and back (pdep): the
// portable fallback of Bmi2Instructions below.
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

// pext and pdep through inline assembly: they need no bmi2 target on the calling function, so
// the packing loops inline them (an intrinsic would be a function call per value). Used only
// where HasBmi2(); the loops are the portable fallback.
struct Bmi2Instructions {
  static inline uint64_t Extract(uint64_t w, uint64_t mask) {
    uint64_t out;
    asm("pextq %2, %1, %0" : "=r"(out) : "r"(w), "r"(mask));
    return out;
  }
  static inline uint64_t Deposit(uint64_t v, uint64_t mask) {
    uint64_t out;
    asm("pdepq %2, %1, %0" : "=r"(out) : "r"(v), "r"(mask));
    return out;
  }
};
struct PortableLoops {
  static inline uint64_t Extract(uint64_t w, uint64_t mask) { return ExtractPortable(w, mask); }
  static inline uint64_t Deposit(uint64_t v, uint64_t mask) { return DepositPortable(v, mask); }
};

// Words that n values of `width` packed bits take.
inline int64_t PackedWords(int64_t n, int width) { return (n * width + 63) / 64; }

// Appends `width`-bit values to words XORed into out[0], out[1], ... (the packed layout).
struct XorBitWriter {
  uint64_t* out;
  int width;
  uint64_t acc = 0;
  int fill = 0;
  inline void Put(uint64_t v) {
    acc |= v << fill;
    fill += width;
    if (fill >= 64) {
      *out++ ^= acc;
      fill -= 64;
      acc = fill ? v >> (width - fill) : 0;
    }
  }
  inline void Flush() {
    if (fill) *out ^= acc;
  }
};

// Value e's `width` bits (at the low end) of a packed array of `words` words.
inline uint64_t PackedValue(const uint64_t* src, int64_t words, int64_t e, int width) {
  if (width == 0) return 0;
  const int64_t bit = e * width;
  uint64_t v;
  if (width <= 57 && (bit >> 3) + 8 <= 8 * words) {
    // the value's bits lie within the 8 bytes from its first byte: one unaligned load, no
    // branch on whether they straddle two words
    std::memcpy(&v, reinterpret_cast<const unsigned char*>(src) + (bit >> 3), 8);
    v >>= bit & 7;
  } else {
    const int shift = static_cast<int>(bit & 63);
    v = src[bit >> 6] >> shift;
    if (shift && shift + width > 64) v |= src[(bit >> 6) + 1] << (64 - shift);
  }
  return width == 64 ? v : v & ((uint64_t{1} << width) - 1);
}

// fn(Bmi2Instructions{}) where this CPU has BMI2 and `portable` is false, else
// fn(PortableLoops{}): the one place the packing kernels choose their instructions.
template <typename Fn>
inline void WithBitMethod(bool portable, const Fn& fn) {
  if (HasBmi2() && !portable) {
    fn(Bmi2Instructions{});
  } else {
    fn(PortableLoops{});
  }
}

// dst[0..PackedWords(n, width)) ^= the bits `mask` (width bits) of value(0..n), packed densely
// as PackBits packs them: one pass, the words built in a register.
template <typename ValueFn>
inline void XorPackValues(int64_t n, uint64_t mask, int width, bool portable, uint64_t* dst,
                          const ParallelRunner& runner, const ValueFn& value) {
  if (width == 0) return;
  WithBitMethod(portable, [&](auto method) {
    using Method = decltype(method);
    runner((n + 63) / 64, 64 * 12, [&](int64_t b_begin, int64_t b_end) {
      for (int64_t b = b_begin; b < b_end; ++b) {  // 64 values fill exactly `width` words
        XorBitWriter writer{dst + b * width, width};
        const int64_t end = std::min(n, (b + 1) * 64);
        for (int64_t e = b * 64; e < end; ++e) writer.Put(Method::Extract(value(e), mask));
        writer.Flush();
      }
    });
  });
}

// Packs bits `mask` (width bits) of src[0..n) densely into dst (zeroed, PackedWords(n) words).
// Threads take blocks of 64 values, which fill whole words, so no word is shared.
inline void PackBits(const uint64_t* src, int64_t n, uint64_t mask, int width, bool portable,
                     uint64_t* dst, const ParallelRunner& runner) {
  XorPackValues(n, mask, width, portable, dst, runner, [src](int64_t e) { return src[e]; });
}

// The inverse: value e's packed bits back at `mask`'s positions in dst[e], other bits 0.
inline void UnpackBits(const uint64_t* src, int64_t n, uint64_t mask, int width, bool portable,
                       uint64_t* dst, const ParallelRunner& runner) {
  const int64_t words = PackedWords(n, width);
  WithBitMethod(portable, [&](auto method) {
    using Method = decltype(method);
    runner(n, 8, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        dst[e] = Method::Deposit(PackedValue(src, words, e, width), mask);
      }
    });
  });
}

}  // namespace bits
}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_BIT_PACK_H_
