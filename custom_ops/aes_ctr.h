// AES-128 in counter mode: the PRG behind every party's correlated randomness.
//
// Keystream block j is AES-128_k(iv + j), iv a 128-bit big-endian counter (NIST SP 800-38A, CTR).
// AES-NI is used when the CPU has it (checked at run time); a portable table-free implementation
// is the fallback, so the same seeds give the same stream on every machine.
#ifndef TF_PUMA_CUSTOM_OPS_AES_CTR_H_
#define TF_PUMA_CUSTOM_OPS_AES_CTR_H_

#include <cstddef>
#include <cstdint>

namespace tf_puma {

// True when this CPU supports AES-NI (and the fast path is taken).
bool AesNiAvailable();

// Writes n_blocks 16-byte keystream blocks to out: block j = AES_key(iv + first_block + j),
// counter arithmetic big-endian over all 128 bits of iv. `force_portable` selects the fallback
// (for tests that compare both paths).
void Aes128CtrKeystream(const uint8_t key[16], const uint8_t iv[16], uint64_t first_block,
                        uint64_t n_blocks, uint8_t* out, bool force_portable = false);

}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_AES_CTR_H_
