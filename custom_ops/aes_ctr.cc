// AES-128-CTR keystream: a VAES path (AVX-512, 4 blocks per instruction, 32 in flight), an
// AES-NI path (8 blocks in flight) and a portable FIPS-197 fallback.
#include "custom_ops/aes_ctr.h"

#include <immintrin.h>
#include <wmmintrin.h>

#include <cstring>

// GCC 12's AVX-512 intrinsics start from `__m512i __Y = __Y;` (an undefined vector), which its
// own -Wmaybe-uninitialized then reports at every inlined call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tf_puma {
namespace {

// ---- portable AES-128 (FIPS-197), byte oriented -------------------------------------------
constexpr uint8_t kSbox[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab,
    0x76, 0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4,
    0x72, 0xc0, 0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71,
    0xd8, 0x31, 0x15, 0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2,
    0xeb, 0x27, 0xb2, 0x75, 0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6,
    0xb3, 0x29, 0xe3, 0x2f, 0x84, 0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb,
    0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf, 0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45,
    0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8, 0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5,
    0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2, 0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44,
    0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73, 0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a,
    0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb, 0xe0, 0x32, 0x3a, 0x0a, 0x49,
    0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79, 0xe7, 0xc8, 0x37, 0x6d,
    0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08, 0xba, 0x78, 0x25,
    0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a, 0x70, 0x3e,
    0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e, 0xe1,
    0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb,
    0x16};

constexpr uint8_t kRcon[10] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36};

inline uint8_t XTime(uint8_t x) { return static_cast<uint8_t>((x << 1) ^ ((x >> 7) * 0x1b)); }

// 11 round keys of 16 bytes.
void ExpandKeyPortable(const uint8_t key[16], uint8_t round_keys[176]) {
  std::memcpy(round_keys, key, 16);
  for (int i = 4; i < 44; ++i) {
    uint8_t t[4];
    std::memcpy(t, round_keys + 4 * (i - 1), 4);
    if (i % 4 == 0) {
      const uint8_t first = t[0];
      t[0] = static_cast<uint8_t>(kSbox[t[1]] ^ kRcon[i / 4 - 1]);
      t[1] = kSbox[t[2]];
      t[2] = kSbox[t[3]];
      t[3] = kSbox[first];
    }
    for (int j = 0; j < 4; ++j) round_keys[4 * i + j] = round_keys[4 * (i - 4) + j] ^ t[j];
  }
}

void EncryptBlockPortable(const uint8_t round_keys[176], const uint8_t in[16], uint8_t out[16]) {
  uint8_t s[16];
  for (int i = 0; i < 16; ++i) s[i] = in[i] ^ round_keys[i];
  for (int round = 1; round <= 10; ++round) {
    uint8_t t[16];
    // SubBytes and ShiftRows (state is column-major: byte r + 4c is row r, column c).
    for (int c = 0; c < 4; ++c) {
      for (int r = 0; r < 4; ++r) t[r + 4 * c] = kSbox[s[r + 4 * ((c + r) % 4)]];
    }
    if (round < 10) {  // MixColumns
      for (int c = 0; c < 4; ++c) {
        uint8_t* col = t + 4 * c;
        const uint8_t a0 = col[0], a1 = col[1], a2 = col[2], a3 = col[3];
        const uint8_t all = a0 ^ a1 ^ a2 ^ a3;
        col[0] = a0 ^ all ^ XTime(a0 ^ a1);
        col[1] = a1 ^ all ^ XTime(a1 ^ a2);
        col[2] = a2 ^ all ^ XTime(a2 ^ a3);
        col[3] = a3 ^ all ^ XTime(a3 ^ a0);
      }
    }
    for (int i = 0; i < 16; ++i) s[i] = t[i] ^ round_keys[16 * round + i];
  }
  std::memcpy(out, s, 16);
}

// iv + delta as a 128-bit big-endian counter, in two words (carry included).
struct Counter128 {
  uint64_t hi, lo;
};
inline Counter128 CounterAt(const uint8_t iv[16], uint64_t delta) {
  uint64_t hi = 0, lo = 0;
  for (int i = 0; i < 8; ++i) hi = (hi << 8) | iv[i];
  for (int i = 8; i < 16; ++i) lo = (lo << 8) | iv[i];
  const uint64_t new_lo = lo + delta;
  return {hi + (new_lo < lo ? 1 : 0), new_lo};
}

// Adds `delta` to a 128-bit big-endian counter.
void CounterAdd(const uint8_t iv[16], uint64_t delta, uint8_t out[16]) {
  Counter128 c = CounterAt(iv, delta);
  for (int i = 7; i >= 0; --i, c.hi >>= 8) out[i] = static_cast<uint8_t>(c.hi);
  for (int i = 15; i >= 8; --i, c.lo >>= 8) out[i] = static_cast<uint8_t>(c.lo);
}

void KeystreamPortable(const uint8_t key[16], const uint8_t iv[16], uint64_t first_block,
                       uint64_t n_blocks, uint8_t* out) {
  uint8_t round_keys[176];
  ExpandKeyPortable(key, round_keys);
  uint8_t counter[16];
  for (uint64_t j = 0; j < n_blocks; ++j) {
    CounterAdd(iv, first_block + j, counter);
    EncryptBlockPortable(round_keys, counter, out + 16 * j);
  }
}

// ---- AES-NI -------------------------------------------------------------------------------
#define TF_PUMA_AESNI __attribute__((target("aes,sse4.1,ssse3")))

template <int kRcon>
TF_PUMA_AESNI inline __m128i ExpandStep(__m128i key) {
  __m128i t = _mm_aeskeygenassist_si128(key, kRcon);
  t = _mm_shuffle_epi32(t, 0xff);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, t);
}

TF_PUMA_AESNI void ExpandKeyNi(const uint8_t key[16], __m128i rk[11]) {
  rk[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
  rk[1] = ExpandStep<0x01>(rk[0]);
  rk[2] = ExpandStep<0x02>(rk[1]);
  rk[3] = ExpandStep<0x04>(rk[2]);
  rk[4] = ExpandStep<0x08>(rk[3]);
  rk[5] = ExpandStep<0x10>(rk[4]);
  rk[6] = ExpandStep<0x20>(rk[5]);
  rk[7] = ExpandStep<0x40>(rk[6]);
  rk[8] = ExpandStep<0x80>(rk[7]);
  rk[9] = ExpandStep<0x1b>(rk[8]);
  rk[10] = ExpandStep<0x36>(rk[9]);
}

// Counter blocks as (hi, lo) little-endian integers; byte-swapped into big-endian blocks.
TF_PUMA_AESNI inline __m128i CounterBlock(uint64_t hi, uint64_t lo, __m128i bswap) {
  return _mm_shuffle_epi8(_mm_set_epi64x(static_cast<int64_t>(hi), static_cast<int64_t>(lo)),
                          bswap);
}

TF_PUMA_AESNI void KeystreamNi(const uint8_t key[16], const uint8_t iv[16], uint64_t first_block,
                               uint64_t n_blocks, uint8_t* out) {
  __m128i rk[11];
  ExpandKeyNi(key, rk);
  const __m128i bswap = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const Counter128 start = CounterAt(iv, first_block);
  uint64_t hi = start.hi, lo = start.lo;
  auto next = [&]() {
    const __m128i block = CounterBlock(hi, lo, bswap);
    if (++lo == 0) ++hi;
    return block;
  };
  uint64_t j = 0;
  for (; j + 8 <= n_blocks; j += 8) {
    __m128i b[8];
    for (int i = 0; i < 8; ++i) b[i] = _mm_xor_si128(next(), rk[0]);
    for (int r = 1; r < 10; ++r) {
      for (int i = 0; i < 8; ++i) b[i] = _mm_aesenc_si128(b[i], rk[r]);
    }
    for (int i = 0; i < 8; ++i) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * (j + i)),
                       _mm_aesenclast_si128(b[i], rk[10]));
    }
  }
  for (; j < n_blocks; ++j) {
    __m128i b = _mm_xor_si128(next(), rk[0]);
    for (int r = 1; r < 10; ++r) b = _mm_aesenc_si128(b, rk[r]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * j), _mm_aesenclast_si128(b, rk[10]));
  }
}

// ---- VAES (AVX-512): each 128-bit lane of a zmm register is one block --------------------
#define TF_PUMA_VAES __attribute__((target("aes,sse4.1,ssse3,avx512f,avx512bw,vaes")))

constexpr uint64_t kVaesChunk = 32;  // blocks per iteration: 8 registers of 4 blocks

TF_PUMA_VAES void KeystreamVaes(const uint8_t key[16], const uint8_t iv[16],
                                uint64_t first_block, uint64_t n_blocks, uint8_t* out) {
  __m128i rk128[11];
  ExpandKeyNi(key, rk128);
  __m512i rk[11];
  for (int r = 0; r < 11; ++r) rk[r] = _mm512_broadcast_i32x4(rk128[r]);
  // vpshufb shuffles within each 128-bit lane: every lane's (lo, hi) counter becomes big-endian.
  const __m512i bswap = _mm512_broadcast_i32x4(
      _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i step = _mm512_set_epi64(0, 4, 0, 4, 0, 4, 0, 4);  // +4 on each lane's lo
  uint64_t j = 0;
  for (; j + kVaesChunk <= n_blocks; j += kVaesChunk) {
    const Counter128 chunk = CounterAt(iv, first_block + j);  // the chunk's first counter
    if (chunk.lo > ~uint64_t{0} - (kVaesChunk - 1)) {
      // The low word wraps inside this chunk: the AES-NI path carries into the high word.
      KeystreamNi(key, iv, first_block + j, kVaesChunk, out + 16 * j);
      continue;
    }
    const int64_t h = static_cast<int64_t>(chunk.hi), l = static_cast<int64_t>(chunk.lo);
    __m512i ctr = _mm512_set_epi64(h, l + 3, h, l + 2, h, l + 1, h, l);
    __m512i b[8];
    for (int i = 0; i < 8; ++i) {
      b[i] = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, bswap), rk[0]);
      ctr = _mm512_add_epi64(ctr, step);
    }
    for (int r = 1; r < 10; ++r) {
      for (int i = 0; i < 8; ++i) b[i] = _mm512_aesenc_epi128(b[i], rk[r]);
    }
    for (int i = 0; i < 8; ++i) {
      _mm512_storeu_si512(out + 16 * (j + 4 * i), _mm512_aesenclast_epi128(b[i], rk[10]));
    }
  }
  if (j < n_blocks) KeystreamNi(key, iv, first_block + j, n_blocks - j, out + 16 * j);
}

}  // namespace

bool AesNiAvailable() {
  static const bool available = __builtin_cpu_supports("aes") &&
                                __builtin_cpu_supports("sse4.1") &&
                                __builtin_cpu_supports("ssse3");
  return available;
}

bool VaesAvailable() {
  static const bool available = AesNiAvailable() && __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("vaes");
  return available;
}

bool AesPathAvailable(AesPath path) {
  switch (path) {
    case AesPath::kPortable:
    case AesPath::kAuto:
      return true;
    case AesPath::kAesNi:
      return AesNiAvailable();
    case AesPath::kVaes:
      return VaesAvailable();
  }
  return false;
}

void Aes128CtrKeystream(const uint8_t key[16], const uint8_t iv[16], uint64_t first_block,
                        uint64_t n_blocks, uint8_t* out, AesPath path) {
  if (path == AesPath::kAuto) {
    path = VaesAvailable() ? AesPath::kVaes
                           : (AesNiAvailable() ? AesPath::kAesNi : AesPath::kPortable);
  }
  if (path == AesPath::kVaes && VaesAvailable()) {
    KeystreamVaes(key, iv, first_block, n_blocks, out);
  } else if (path != AesPath::kPortable && AesNiAvailable()) {
    KeystreamNi(key, iv, first_block, n_blocks, out);
  } else {
    KeystreamPortable(key, iv, first_block, n_blocks, out);
  }
}

}  // namespace tf_puma
