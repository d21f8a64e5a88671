// The one table of PRG draws: which keys each kernel expands, under which sub-id.
//
// F(key, stream, sub) is drawn by kernels only; the protocol layer gives every kernel call its
// own stream (runtime.new_stream) and the kernel owns every sub of it. The privacy rule is that
// no party draws the same (key, stream, sub) twice in one execution: sharing a stream between
// two calls (as the fused product once did with its TruncPr) hands a party both a mask and the
// PRG output that removes it. Kernels name their subs from this header, and the static audit
// (tf_puma/audit.py) reads the same table through the PumaPrgDrawTable op, so the two cannot
// drift apart.
#ifndef TF_PUMA_CUSTOM_OPS_PRG_DRAWS_H_
#define TF_PUMA_CUSTOM_OPS_PRG_DRAWS_H_

#include <cstdint>

namespace tf_puma {
namespace draws {

// PRSS zero shares (arithmetic and XOR): F(k_own, s, 0) and F(k_next, s, 0).
constexpr uint32_t kZeroShare = 0;
// TruncPr (one stream per truncation): the opening masks r_A = F(k_j, s, 0), r_B = F(k_{j+2}, s,
// 0); A's shares of msb(r) and of r's shifted low bits; the output shares t_j, t_{j+2}.
constexpr uint32_t kTruncMask = 0;
constexpr uint32_t kTruncMsbShare = 1;
constexpr uint32_t kTruncLowShare = 2;
constexpr uint32_t kTruncOutShare = 3;
// B2A (one stream per bit injection): P0's share c_0 = F(k_0, s, 0) of c = b_0 ^ b_1, and the
// reshare s_0 = F(k_0, s, 1), s_1 = F(k_1, s, 1) of c b_2.
constexpr uint32_t kB2aBitShare = 0;
constexpr uint32_t kB2aProductShare = 1;
// The client's input sharing: x_2 = v - F(c_0, s, 0) - F(c_1, s, 0); the parties holding c_0
// and c_1 expand the same words with PumaPrgUniform (sub 0).
constexpr uint32_t kInputMask = 0;
// PumaPrgUniform takes its sub from its `sub` attribute.
constexpr int64_t kSubFromAttr = -1;

struct Draw {
  const char* op;         // op type
  const char* family;     // protocol step that owns the stream
  const char* key_input;  // the op input holding the key
  int64_t sub;            // the sub drawn, or kSubFromAttr
};

// Every draw of every kernel. A kernel that draws must be listed here, once per draw.
constexpr Draw kDraws[] = {
    {"PumaMulShare", "zero_share", "key_own", kZeroShare},
    {"PumaMulShare", "zero_share", "key_next", kZeroShare},
    {"PumaMatMulShare", "zero_share", "key_own", kZeroShare},
    {"PumaMatMulShare", "zero_share", "key_next", kZeroShare},
    {"PumaZeroShare", "zero_share", "key_own", kZeroShare},
    {"PumaZeroShare", "zero_share", "key_next", kZeroShare},
    {"PumaAndShare", "xor_zero_share", "key_own", kZeroShare},
    {"PumaAndShare", "xor_zero_share", "key_next", kZeroShare},
    {"PumaAndPackedShare", "xor_zero_share", "key_own", kZeroShare},
    {"PumaAndPackedShare", "xor_zero_share", "key_next", kZeroShare},
    {"PumaMsbStart", "xor_zero_share", "key_own", kZeroShare},
    {"PumaMsbStart", "xor_zero_share", "key_next", kZeroShare},
    {"PumaMsbStep", "xor_zero_share", "key_own", kZeroShare},
    {"PumaMsbStep", "xor_zero_share", "key_next", kZeroShare},
    {"PumaTruncPrDeal", "trunc_pr", "key_next", kTruncMask},
    {"PumaTruncPrDeal", "trunc_pr", "key_own", kTruncMask},
    {"PumaTruncPrDeal", "trunc_pr", "key_next", kTruncMsbShare},
    {"PumaTruncPrDeal", "trunc_pr", "key_next", kTruncLowShare},
    {"PumaTruncPrDeal", "trunc_pr", "key_own", kTruncOutShare},
    {"PumaTruncPrDeal", "trunc_pr", "key_next", kTruncOutShare},
    {"PumaTruncPrMask", "trunc_pr", "key", kTruncMask},
    {"PumaTruncPrFinishA", "trunc_pr", "key_own", kTruncMsbShare},
    {"PumaTruncPrFinishA", "trunc_pr", "key_own", kTruncLowShare},
    {"PumaTruncPrFinishA", "trunc_pr", "key_own", kTruncOutShare},
    {"PumaTruncPrFinishB", "trunc_pr", "key_next", kTruncOutShare},
    {"PumaTruncPrFinishBMsb", "trunc_pr", "key_next", kTruncOutShare},
    {"PumaB2aParty0", "b2a", "key_own", kB2aBitShare},
    {"PumaB2aParty0", "b2a", "key_own", kB2aProductShare},
    {"PumaB2aParty0", "b2a", "key_next", kB2aProductShare},
    {"PumaB2aParty1", "b2a", "key_own", kB2aProductShare},
    {"PumaB2aParty2", "b2a", "key_next", kB2aBitShare},
    {"PumaB2aParty2", "b2a", "key_next", kB2aProductShare},
    {"PumaPrgUniform", "prg", "key", kSubFromAttr},
    {"PumaMaskInput", "prg", "key_0", kInputMask},
    {"PumaMaskInput", "prg", "key_1", kInputMask},
};

}  // namespace draws
}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_PRG_DRAWS_H_
