// The layout of TruncPr's dealer correlation for B (PumaTruncPrDeal -> PumaTruncPrFinishB):
// n words of rc_B, then the low bits + 1 bits of each rb_B packed densely (bit_pack.h's layout).
// B multiplies rb_B by 2^(63 - bits), so its higher bits never matter.
#ifndef TF_PUMA_CUSTOM_OPS_TRUNC_CORR_H_
#define TF_PUMA_CUSTOM_OPS_TRUNC_CORR_H_

#include <cstdint>

namespace tf_puma {
namespace trunc_corr {

// Bits of rb_B kept per value.
inline int MsbShareBits(int bits) { return bits + 1; }

// Words of the correlation for n values.
inline int64_t Words(int64_t n, int bits) {
  return n + (n * MsbShareBits(bits) + 63) / 64;
}

}  // namespace trunc_corr
}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_TRUNC_CORR_H_
