// AES-128 in counter mode: the PRG behind every party's correlated randomness.
//
// Keystream block j is AES-128_k(iv + j), iv a 128-bit big-endian counter (NIST SP 800-38A, CTR).
// VAES or AES-NI is used when the CPU has it (checked at run time); a portable table-free
// implementation is the fallback, so the same seeds give the same stream on every machine.
#ifndef TF_PUMA_CUSTOM_OPS_AES_CTR_H_
#define TF_PUMA_CUSTOM_OPS_AES_CTR_H_

#include <cstddef>
#include <cstdint>

namespace tf_puma {

// Which implementation computes the keystream: every path gives the same bytes. kAuto takes
// the quickest this CPU has (VAES, else AES-NI, else portable); an unavailable explicit path
// falls back the same way (tests ask AesPathAvailable first).
enum class AesPath { kAuto, kPortable, kAesNi, kVaes };

// True when this CPU supports AES-NI / VAES with AVX-512 (checked at run time).
bool AesNiAvailable();
bool VaesAvailable();
bool AesPathAvailable(AesPath path);

// Writes n_blocks 16-byte keystream blocks to out: block j = AES_key(iv + first_block + j),
// counter arithmetic big-endian over all 128 bits of iv.
void Aes128CtrKeystream(const uint8_t key[16], const uint8_t iv[16], uint64_t first_block,
                        uint64_t n_blocks, uint8_t* out, AesPath path = AesPath::kAuto);

}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_AES_CTR_H_
