// Ring GEMM over Z_2^64: packed panels, register-blocked micro-kernels, run-time dispatch.
//
// The inner dimension is taken kKc at a time. For each slice, op(A) is packed into micro-panels
// ([M/MR][kc][MR], zero-padded) and op(B) (+ op(B2)) kNc columns at a time ([kNc/NR][kc][NR]), so
// the scratch is at most M x kKc plus kKc x kNc, never a copy of a weight matrix or of a one-hot
// row block (an embedding's product has K = the vocabulary: 49,152 for SmolLM2, whose panels
// packed over the full K took 250 MB), and a tile's A and B panels stay in cache
// (benchmarks/ring_gemm.py, [128,30522]x[30522,384]: 12 -> 20 G multiply-adds/s).
// For each column block the MR x NR tiles of C are computed in parallel over the slice and
// added to C. The AVX-512 micro-kernel keeps an 8 x 16 tile of C in 16 zmm registers and multiplies
// with vpmullq (AVX512DQ); the portable kernel does the same arithmetic in scalar code. Where
// AMX-INT8 is usable, packed products with an inner dimension of at least kAmxMinInner take
// byte-limb tiles instead (RingGemmAccumulateAmx, below). All give the exact product mod 2^64,
// so results are bit-identical.
#include "custom_ops/ring_gemm.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

// GCC 12's AVX-512 intrinsics start from `__m512i __Y = __Y;` (an undefined vector), which its
// own -Wmaybe-uninitialized then reports at every inlined call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tf_puma {
namespace {

constexpr int64_t kMr = 8;   // rows of a micro-tile
constexpr int64_t kNr = 16;  // columns of a micro-tile (two zmm registers of 8 lanes)
constexpr int64_t kNc = 512;  // columns of op(B) packed at a time (a multiple of kNr)
constexpr int64_t kKc = 1024;  // inner-dimension slice packed at a time (a tile's panels: L2)

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The matrix x (null stays null) from inner index k0 on, with the inner dimension along its
// rows (`k_along_rows`: x stored [K][..]) or along its columns: a slice's op(A) or op(B).
inline const uint64_t* FromInner(const uint64_t* x, int64_t k0, int64_t ld, bool k_along_rows) {
  return x == nullptr ? nullptr : k_along_rows ? x + k0 * ld : x + k0;
}

// Columns of a micro-tile for packed words T: two zmm registers' lanes (16 for Z_2^64, 32 for
// a product wanted mod 2^32 only, which multiplies 32-bit lanes: twice the products per
// instruction).
template <typename T>
constexpr int64_t NrOf() {
  return 2 * 64 / static_cast<int64_t>(sizeof(T));
}
static_assert(NrOf<uint64_t>() == kNr && kNc % NrOf<uint32_t>() == 0, "tile widths");

// Packs op(A) (M x K) into panels of kMr rows: panel p, step k holds A[p*kMr + r][k], r < kMr
// (its low bits when T is 32-bit).
template <typename T>
void PackA(int64_t M, int64_t K, const uint64_t* A, int64_t lda, bool trans, T* out,
           int64_t p_begin, int64_t p_end) {
  for (int64_t p = p_begin; p < p_end; ++p) {
    T* dst = out + p * K * kMr;
    const int64_t rows = std::min(kMr, M - p * kMr);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t r = 0; r < kMr; ++r) {
        const int64_t i = p * kMr + r;
        dst[k * kMr + r] = r < rows ? static_cast<T>(trans ? A[k * lda + i] : A[i * lda + k]) : 0;
      }
    }
  }
}

// Packs op(B) + op(B2) (K x N; B2 may be null) into panels of NrOf<T>() columns: panel q, step
// k holds B[k][q*nr + c] (+ B2[k][q*nr + c]), written at out + (q - q_base) * K * nr.
template <typename T>
void PackB(int64_t N, int64_t K, const uint64_t* B, const uint64_t* B2, int64_t ldb, bool trans,
           T* out, int64_t q_base, int64_t q_begin, int64_t q_end) {
  constexpr int64_t nr = NrOf<T>();
  auto at = [&](const uint64_t* m, int64_t k, int64_t j) {
    return trans ? m[j * ldb + k] : m[k * ldb + j];
  };
  for (int64_t q = q_begin; q < q_end; ++q) {
    T* dst = out + (q - q_base) * K * nr;
    const int64_t cols = std::min(nr, N - q * nr);
    for (int64_t k = 0; k < K; ++k) {
      if (!trans && cols == nr && B2 == nullptr) {
        const uint64_t* row = B + k * ldb + q * nr;
        for (int64_t c = 0; c < nr; ++c) dst[k * nr + c] = static_cast<T>(row[c]);
        continue;
      }
      for (int64_t c = 0; c < nr; ++c) {
        const int64_t j = q * nr + c;
        dst[k * nr + c] = static_cast<T>(c >= cols ? 0 : B2 ? at(B, k, j) + at(B2, k, j)
                                                            : at(B, k, j));
      }
    }
  }
}

// tile[kMr][nr] = sum_k a[k][:] (x) b[k][:] in T's ring, portable.
template <typename T>
void MicroKernelPortable(int64_t K, const T* a, const T* b, T* tile) {
  constexpr int64_t nr = NrOf<T>();
  T acc[kMr][nr] = {};
  for (int64_t k = 0; k < K; ++k) {
    const T* ak = a + k * kMr;
    const T* bk = b + k * nr;
    for (int64_t r = 0; r < kMr; ++r) {
      for (int64_t c = 0; c < nr; ++c) acc[r][c] = static_cast<T>(acc[r][c] + ak[r] * bk[c]);
    }
  }
  std::memcpy(tile, acc, sizeof(acc));
}

__attribute__((target("avx512f,avx512dq"))) void MicroKernelAvx512(int64_t K,
                                                                     const uint64_t* a,
                                                                     const uint64_t* b,
                                                                     uint64_t* tile) {
  __m512i c00 = _mm512_setzero_si512(), c01 = _mm512_setzero_si512();
  __m512i c10 = _mm512_setzero_si512(), c11 = _mm512_setzero_si512();
  __m512i c20 = _mm512_setzero_si512(), c21 = _mm512_setzero_si512();
  __m512i c30 = _mm512_setzero_si512(), c31 = _mm512_setzero_si512();
  __m512i c40 = _mm512_setzero_si512(), c41 = _mm512_setzero_si512();
  __m512i c50 = _mm512_setzero_si512(), c51 = _mm512_setzero_si512();
  __m512i c60 = _mm512_setzero_si512(), c61 = _mm512_setzero_si512();
  __m512i c70 = _mm512_setzero_si512(), c71 = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; ++k) {
    const __m512i b0 = _mm512_loadu_si512(b + k * kNr);
    const __m512i b1 = _mm512_loadu_si512(b + k * kNr + 8);
    const uint64_t* ak = a + k * kMr;
#define TF_PUMA_ROW(r, lo, hi)                                          \
  {                                                                      \
    const __m512i ar = _mm512_set1_epi64(static_cast<int64_t>(ak[r]));   \
    lo = _mm512_add_epi64(lo, _mm512_mullo_epi64(ar, b0));               \
    hi = _mm512_add_epi64(hi, _mm512_mullo_epi64(ar, b1));               \
  }
    TF_PUMA_ROW(0, c00, c01)
    TF_PUMA_ROW(1, c10, c11)
    TF_PUMA_ROW(2, c20, c21)
    TF_PUMA_ROW(3, c30, c31)
    TF_PUMA_ROW(4, c40, c41)
    TF_PUMA_ROW(5, c50, c51)
    TF_PUMA_ROW(6, c60, c61)
    TF_PUMA_ROW(7, c70, c71)
#undef TF_PUMA_ROW
  }
  const __m512i rows[kMr][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                                {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
  for (int64_t r = 0; r < kMr; ++r) {
    _mm512_storeu_si512(tile + r * kNr, rows[r][0]);
    _mm512_storeu_si512(tile + r * kNr + 8, rows[r][1]);
  }
}

// The same tile in 32-bit lanes (vpmulld, AVX512F): 8 x 32 values of Z_2^32 in 16 zmm.
__attribute__((target("avx512f"))) void MicroKernelAvx512U32(int64_t K, const uint32_t* a,
                                                             const uint32_t* b, uint32_t* tile) {
  constexpr int64_t nr = NrOf<uint32_t>();
  __m512i acc[kMr][2];
#pragma GCC unroll 8
  for (int64_t r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; ++k) {
    const __m512i b0 = _mm512_loadu_si512(b + k * nr);
    const __m512i b1 = _mm512_loadu_si512(b + k * nr + 16);
    const uint32_t* ak = a + k * kMr;
#pragma GCC unroll 8
    for (int64_t r = 0; r < kMr; ++r) {  // unrolled: acc stays in registers
      const __m512i ar = _mm512_set1_epi32(static_cast<int32_t>(ak[r]));
      acc[r][0] = _mm512_add_epi32(acc[r][0], _mm512_mullo_epi32(ar, b0));
      acc[r][1] = _mm512_add_epi32(acc[r][1], _mm512_mullo_epi32(ar, b1));
    }
  }
#pragma GCC unroll 8
  for (int64_t r = 0; r < kMr; ++r) {
    _mm512_storeu_si512(tile + r * nr, acc[r][0]);
    _mm512_storeu_si512(tile + r * nr + 16, acc[r][1]);
  }
}

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return has;
}

template <typename T>
using MicroKernel = void (*)(int64_t, const T*, const T*, T*);

// The packed kernel for words T: AVX-512 unless the portable path is asked for or the CPU has
// no AVX-512.
template <typename T>
MicroKernel<T> ChooseKernel(GemmPath path) {
  const bool avx512 = path != GemmPath::kPortable && CpuHasAvx512();
  if constexpr (sizeof(T) == 8) {
    return avx512 ? MicroKernelAvx512 : MicroKernelPortable<uint64_t>;
  } else {
    return avx512 ? MicroKernelAvx512U32 : MicroKernelPortable<uint32_t>;
  }
}

// ---- thin products: few rows of A, B streamed once ------------------------------------------
// Thin bodies are inlined into a portable and an AVX-512 caller, each compiling them for its
// own target.
#define TF_PUMA_ALWAYS_INLINE __attribute__((always_inline)) inline
constexpr int64_t kThinCols = 512;  // columns of C per block (M x kThinCols stays in L1/L2)

// The rows of op(A) as a dense [M][K] array (A is small: M <= kThinRows).
std::vector<uint64_t> DenseRows(int64_t M, int64_t K, const uint64_t* A, int64_t lda,
                                bool trans) {
  std::vector<uint64_t> rows(M * K, 0);
  if (A == nullptr) return rows;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) rows[m * K + k] = trans ? A[k * lda + m] : A[m * lda + k];
  }
  return rows;
}

// B stored [K][N] (not transposed): for each k, row k of B1 (and B2) updates the M rows of a
// block of C columns [n0, n1). The inner loop runs over contiguous columns (vectorised).
template <bool kHasB2>
TF_PUMA_ALWAYS_INLINE void ThinRowsBody(int64_t M, int64_t K, const uint64_t* a1,
                                        const uint64_t* a2, const uint64_t* B1,
                                        const uint64_t* B2, int64_t ldb, int64_t n0, int64_t n1,
                                        uint64_t* acc) {
  const int64_t w = n1 - n0;
  for (int64_t k = 0; k < K; ++k) {
    const uint64_t* __restrict b1 = B1 + k * ldb + n0;
    const uint64_t* __restrict b2 = kHasB2 ? B2 + k * ldb + n0 : nullptr;
    for (int64_t m = 0; m < M; ++m) {
      const uint64_t s1 = a1[m * K + k], s2 = a2[m * K + k];
      uint64_t* __restrict c = acc + m * w;
      if (kHasB2) {
        for (int64_t j = 0; j < w; ++j) c[j] += s1 * (b1[j] + b2[j]) + s2 * b1[j];
      } else {
        for (int64_t j = 0; j < w; ++j) c[j] += (s1 + s2) * b1[j];
      }
    }
  }
}

// B stored [N][K] (transposed): each column n of C is M dot products over row n of B.
template <bool kHasB2>
TF_PUMA_ALWAYS_INLINE void ThinDotsBody(int64_t M, int64_t K, const uint64_t* a1,
                                        const uint64_t* a2, const uint64_t* B1,
                                        const uint64_t* B2, int64_t ldb, int64_t n0, int64_t n1,
                                        uint64_t* acc) {
  const int64_t w = n1 - n0;
  for (int64_t n = n0; n < n1; ++n) {
    const uint64_t* __restrict b1 = B1 + n * ldb;
    const uint64_t* __restrict b2 = kHasB2 ? B2 + n * ldb : nullptr;
    for (int64_t m = 0; m < M; ++m) {
      const uint64_t* __restrict r1 = a1 + m * K;
      const uint64_t* __restrict r2 = a2 + m * K;
      uint64_t sum = 0;
      if (kHasB2) {
        for (int64_t k = 0; k < K; ++k) sum += r1[k] * (b1[k] + b2[k]) + r2[k] * b1[k];
      } else {
        for (int64_t k = 0; k < K; ++k) sum += (r1[k] + r2[k]) * b1[k];
      }
      acc[m * w + (n - n0)] += sum;
    }
  }
}

// The body for B's layout and whether B2 is given. Always inlined (as are the bodies), so each
// caller below compiles the same C++ for its own target.
TF_PUMA_ALWAYS_INLINE void ThinBlock(bool trans_b, bool has_b2, int64_t M, int64_t K,
                                     const uint64_t* a1, const uint64_t* a2, const uint64_t* B1,
                                     const uint64_t* B2, int64_t ldb, int64_t n0, int64_t n1,
                                     uint64_t* acc) {
  if (trans_b) {
    if (has_b2) ThinDotsBody<true>(M, K, a1, a2, B1, B2, ldb, n0, n1, acc);
    else ThinDotsBody<false>(M, K, a1, a2, B1, B2, ldb, n0, n1, acc);
  } else {
    if (has_b2) ThinRowsBody<true>(M, K, a1, a2, B1, B2, ldb, n0, n1, acc);
    else ThinRowsBody<false>(M, K, a1, a2, B1, B2, ldb, n0, n1, acc);
  }
}

void ThinPortable(bool trans_b, bool has_b2, int64_t M, int64_t K, const uint64_t* a1,
                  const uint64_t* a2, const uint64_t* B1, const uint64_t* B2, int64_t ldb,
                  int64_t n0, int64_t n1, uint64_t* acc) {
  ThinBlock(trans_b, has_b2, M, K, a1, a2, B1, B2, ldb, n0, n1, acc);
}

// The same C++ compiled for AVX-512 (vpmullq): the compiler vectorises the inner loops.
__attribute__((target("avx512f,avx512dq"))) void ThinAvx512(
    bool trans_b, bool has_b2, int64_t M, int64_t K, const uint64_t* a1, const uint64_t* a2,
    const uint64_t* B1, const uint64_t* B2, int64_t ldb, int64_t n0, int64_t n1, uint64_t* acc) {
  ThinBlock(trans_b, has_b2, M, K, a1, a2, B1, B2, ldb, n0, n1, acc);
}

// ---- AMX-INT8: 64-bit products from 8-bit limbs -------------------------------------------
// a b mod 2^64 = sum_{s<8} 2^(8s) sum_{i+j=s} a_i b_j, with a_i, b_j the bytes of a and b
// (36 byte pairs). TDPBUUD multiplies a 16 x 64 tile of u8 by a 64 x 16 one into 16 x 16
// int32: 16,384 byte products in 16 cycles, so the 36 pairs give ~28 ring multiply-adds a cycle
// against ~6 for vpmullq. Sums are exact: per slice (kc <= 1,024) and s, at most
// 8 x 1,024 x 255^2 < 2^32 (read as uint32). op(A)'s bytes are packed as row tiles (16 rows x
// 64 of the inner dimension, one tile per limb), op(B)'s as column tiles in TDPBUUD's layout
// (row r, byte 4n + t holds B[4r + t][n]; AmxTileAt), over kcp = kc rounded up to 64 and rows
// and columns rounded up to pairs of tiles, zero-padded. Each worker computes 2 x 2 blocks of
// 16 x 16 tiles (tmm0-3: C for one s, tmm4-5: A, tmm6-7: B) and adds sum_s C_s << 8s into C
// (AmxBlock).
constexpr int64_t kAmxTile = 16;  // rows and columns of a C tile
constexpr int64_t kAmxK = 64;     // inner-dimension bytes of one TDPBUUD
constexpr int64_t kLimbs = 8;

struct AmxTileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// The CPU has AMX-TILE and AMX-INT8, the OS saves their state (XCR0 bits 17-18), and Linux
// granted this process the tile data (arch_prctl ARCH_REQ_XCOMP_PERM; it can refuse, e.g. when
// a thread's signal stack is too small for the larger frame): then, and only then, AMX runs.
bool AmxUsable() {
  static const bool usable = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 24)) || !(d & (1u << 25))) return false;  // AMX-TILE, AMX-INT8
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const uint64_t xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
    if ((xcr0 & (uint64_t{3} << 17)) != (uint64_t{3} << 17)) return false;
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vbmi")) {
      return false;  // the packing's byte shuffles
    }
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

#define TF_PUMA_AMX_PACK __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#define TF_PUMA_AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw")))

// vpermb index: byte 8j + e of the result = byte j of 64-bit value e (an 8 x 8 byte transpose).
TF_PUMA_AMX_PACK inline __m512i LimbTransposeIndex() {
  alignas(64) uint8_t idx[64];
  for (int j = 0; j < 8; ++j) {
    for (int e = 0; e < 8; ++e) idx[8 * j + e] = static_cast<uint8_t>(8 * e + j);
  }
  return _mm512_load_si512(idx);
}

// Tiles are stored whole (16 rows of 64 bytes, 1 KiB), ordered [row or column tile][64-wide
// chunk of the slice][limb]: a 2 x 2 block's operands for one chunk are four runs of 8 KiB, which
// stay in L1 while its 36 limb pairs use them (planes of kcp-byte rows put a tile's 16 rows in
// 4 cache sets and thrashed).
// `limbs` is the number of low byte limbs kept: 8 for Z_2^64, 4 for a product wanted mod 2^32.
inline uint8_t* AmxTileAt(uint8_t* packed, int64_t tile, int64_t chunk, int64_t limb,
                          int64_t kcp, int64_t limbs) {
  return packed + ((tile * (kcp / kAmxK) + chunk) * limbs + limb) * kAmxTile * kAmxK;
}
inline const uint8_t* AmxTileAt(const uint8_t* packed, int64_t tile, int64_t chunk,
                                int64_t limb, int64_t kcp, int64_t limbs) {
  return AmxTileAt(const_cast<uint8_t*>(packed), tile, chunk, limb, kcp, limbs);
}

// Row tiles of op(A)[:, slice]: tile (p, chunk, i), row r, byte k % 64 = byte i of
// op(A)[16p + r][k] for k in the chunk. Rows p_begin * 16 .. p_end * 16 (zero beyond M).
TF_PUMA_AMX_PACK void PackAmxA(int64_t M, int64_t kc, int64_t kcp, const uint64_t* A,
                               int64_t lda, bool trans, uint8_t* packed, int64_t p_begin,
                               int64_t p_end, int64_t limbs) {
  const __m512i transpose = LimbTransposeIndex();
  for (int64_t p = p_begin; p < p_end; ++p) {
    for (int64_t r = 0; r < kAmxTile; ++r) {
      const int64_t m = p * kAmxTile + r;
      for (int64_t k = 0; k < kcp; k += 8) {
        __m512i v;
        if (m < M && !trans && k + 8 <= kc) {
          v = _mm512_loadu_si512(A + m * lda + k);
        } else {
          alignas(64) uint64_t e[8];
          for (int64_t d = 0; d < 8; ++d) {
            e[d] = m >= M || k + d >= kc ? 0 : trans ? A[(k + d) * lda + m] : A[m * lda + k + d];
          }
          v = _mm512_load_si512(e);
        }
        alignas(64) uint64_t limb_bytes[8];  // qword i: byte i of the 8 values
        _mm512_store_si512(limb_bytes, _mm512_permutexvar_epi8(transpose, v));
        for (int64_t i = 0; i < limbs; ++i) {
          std::memcpy(AmxTileAt(packed, p, k / kAmxK, i, kcp, limbs) + r * kAmxK + k % kAmxK,
                      &limb_bytes[i], 8);
        }
      }
    }
  }
}

// op(B)[k][j .. j + 7] (+ op(B2)), zero beyond the slice's kc rows and N columns: one load
// (two with B2) for a row of B stored [K][N], else element by element.
TF_PUMA_AMX_PACK inline __m512i EightOfB(const uint64_t* B, const uint64_t* B2, int64_t ldb,
                                         bool trans, int64_t kc, int64_t N, int64_t k,
                                         int64_t j) {
  if (!trans && k < kc && j + 8 <= N) {
    const __m512i v = _mm512_loadu_si512(B + k * ldb + j);
    return B2 ? _mm512_add_epi64(v, _mm512_loadu_si512(B2 + k * ldb + j)) : v;
  }
  alignas(64) uint64_t v[8];
  for (int64_t n = 0; n < 8; ++n) {
    const int64_t at = trans ? (j + n) * ldb + k : k * ldb + j + n;
    v[n] = k >= kc || j + n >= N ? 0 : B2 ? B[at] + B2[at] : B[at];
  }
  return _mm512_load_si512(v);
}

// Column tiles of op(B)[slice, :] (+ op(B2)) in TDPBUUD's layout: tile (q, chunk, j), row r,
// byte 4n + t = byte j of op(B)[64 chunk + 4r + t][16q + n]. Columns q_begin * 16 ..
// q_end * 16 (zero beyond N).
TF_PUMA_AMX_PACK void PackAmxB(int64_t N, int64_t kc, int64_t kcp, const uint64_t* B,
                               const uint64_t* B2, int64_t ldb, bool trans, uint8_t* packed,
                               int64_t q_begin, int64_t q_end, int64_t limbs) {
  const __m512i transpose = LimbTransposeIndex();
  // Within each 32-byte half: byte 4n + t of the result = byte 8t + n (4 rows interleaved).
  alignas(64) uint8_t interleave_idx[64];
  for (int g = 0; g < 2; ++g) {
    for (int n = 0; n < 8; ++n) {
      for (int t = 0; t < 4; ++t) interleave_idx[32 * g + 4 * n + t] = 32 * g + 8 * t + n;
    }
  }
  const __m512i interleave = _mm512_load_si512(interleave_idx);
  const __m512i pair_lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i pair_hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  const __m512i quad_lo = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i quad_hi = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  for (int64_t q = q_begin; q < q_end; ++q) {
    for (int64_t r = 0; r < kcp / 4; ++r) {  // row r % 16 of the tiles of chunk r / 16
      for (int64_t h = 0; h < 2; ++h) {  // columns 8h .. 8h + 7
        __m512i t[4];
        for (int64_t row = 0; row < 4; ++row) {  // qword j of t[row]: byte j of 8 values
          t[row] = _mm512_permutexvar_epi8(
              transpose, EightOfB(B, B2, ldb, trans, kc, N, 4 * r + row, q * kAmxTile + 8 * h));
        }
        const __m512i u01[2] = {_mm512_permutex2var_epi64(t[0], pair_lo, t[1]),
                                _mm512_permutex2var_epi64(t[0], pair_hi, t[1])};
        const __m512i u23[2] = {_mm512_permutex2var_epi64(t[2], pair_lo, t[3]),
                                _mm512_permutex2var_epi64(t[2], pair_hi, t[3])};
        for (int64_t half = 0; half < limbs / 4; ++half) {  // limbs 4 half .. 4 half + 3
          const __m512i v[2] = {_mm512_permutex2var_epi64(u01[half], quad_lo, u23[half]),
                                _mm512_permutex2var_epi64(u01[half], quad_hi, u23[half])};
          for (int64_t pair = 0; pair < 2; ++pair) {  // v[pair]: limbs 4 half + 2 pair, + 1
            alignas(64) uint8_t bytes[64];
            _mm512_store_si512(bytes, _mm512_permutexvar_epi8(interleave, v[pair]));
            const int64_t limb = 4 * half + 2 * pair;
            const int64_t offset = r % kAmxTile * kAmxK + 32 * h;
            std::memcpy(AmxTileAt(packed, q, r / kAmxTile, limb, kcp, limbs) + offset, bytes,
                        32);
            std::memcpy(AmxTileAt(packed, q, r / kAmxTile, limb + 1, kcp, limbs) + offset,
                        bytes + 32, 32);
          }
        }
      }
    }
  }
}

// C tiles (2p .. 2p+1) x (2q .. 2q+1) of the slice, added into C (rows < M, columns < N).
// Chunk by chunk (64 of the inner dimension), every s = i + j: C_s's four tiles are loaded from
// `sums` (zeroed on the first chunk), take the s + 1 limb pairs, and are stored back; so the
// chunk's operand tiles are reused from L1 by all 36 pairs. Then C += sum_s C_s << 8s.
TF_PUMA_AMX void AmxBlock(int64_t M, int64_t N, int64_t kcp, const uint8_t* packed_a,
                          const uint8_t* packed_b, int64_t p, int64_t q, uint64_t* C,
                          int64_t ldc, int64_t limbs) {
  alignas(64) uint32_t sums[kLimbs][4][kAmxTile * kAmxTile];
  const int64_t chunks = kcp / kAmxK;
  for (int64_t c = 0; c < chunks; ++c) {
    for (int s = 0; s < limbs; ++s) {
      if (c == 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      } else {
        _tile_loadd(0, sums[s][0], 64);
        _tile_loadd(1, sums[s][1], 64);
        _tile_loadd(2, sums[s][2], 64);
        _tile_loadd(3, sums[s][3], 64);
      }
      for (int i = 0; i <= s; ++i) {
        const int j = s - i;
        _tile_loadd(4, AmxTileAt(packed_a, 2 * p, c, i, kcp, limbs), kAmxK);
        _tile_loadd(5, AmxTileAt(packed_a, 2 * p + 1, c, i, kcp, limbs), kAmxK);
        _tile_loadd(6, AmxTileAt(packed_b, 2 * q, c, j, kcp, limbs), kAmxK);
        _tile_loadd(7, AmxTileAt(packed_b, 2 * q + 1, c, j, kcp, limbs), kAmxK);
        _tile_dpbuud(0, 4, 6);
        _tile_dpbuud(1, 4, 7);
        _tile_dpbuud(2, 5, 6);
        _tile_dpbuud(3, 5, 7);
      }
      _tile_stored(0, sums[s][0], 64);
      _tile_stored(1, sums[s][1], 64);
      _tile_stored(2, sums[s][2], 64);
      _tile_stored(3, sums[s][3], 64);
    }
  }
  for (int t = 0; t < 4; ++t) {
    const int64_t row0 = (2 * p + t / 2) * kAmxTile, col0 = (2 * q + t % 2) * kAmxTile;
    const int64_t rows = std::min(kAmxTile, M - row0), cols = std::min(kAmxTile, N - col0);
    if (rows <= 0 || cols <= 0) continue;
    alignas(64) uint64_t tile[kAmxTile * kAmxTile];
    for (int64_t e = 0; e < kAmxTile * kAmxTile; e += 8) {
      __m512i total = _mm512_setzero_si512();
      for (int s = 0; s < limbs; ++s) {
        const __m512i wide = _mm512_cvtepu32_epi64(
            _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[s][t] + e)));
        total = _mm512_add_epi64(total, _mm512_slli_epi64(wide, 8 * s));
      }
      _mm512_store_si512(tile + e, total);
    }
    for (int64_t r = 0; r < rows; ++r) {
      uint64_t* c_row = C + (row0 + r) * ldc + col0;
      for (int64_t col = 0; col < cols; ++col) c_row[col] += tile[r * kAmxTile + col];
    }
  }
}

TF_PUMA_AMX void AmxBlocks(int64_t M, int64_t N, int64_t kcp, const uint8_t* packed_a,
                           const uint8_t* packed_b, int64_t p_pairs, int64_t begin, int64_t end,
                           uint64_t* C, int64_t ldc, int64_t limbs) {
  AmxTileConfig cfg = {};
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kAmxTile;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  for (int64_t b = begin; b < end; ++b) {
    // block-column-major: consecutive blocks of one worker reuse B's tiles from cache
    const int64_t q = b / p_pairs, p = b % p_pairs;
    AmxBlock(M, N, kcp, packed_a, packed_b, p, q, C, ldc, limbs);
  }
  _tile_release();
}

void RingGemmAccumulateAmx(int64_t M, int64_t N, int64_t K, const uint64_t* A, int64_t lda,
                           bool trans_a, const uint64_t* B, const uint64_t* B2, int64_t ldb,
                           bool trans_b, uint64_t* C, int64_t ldc, const ParallelRunner& runner,
                           int64_t limbs) {
  const int64_t p_pairs = CeilDiv(M, 2 * kAmxTile), q_pairs = CeilDiv(N, 2 * kAmxTile);
  const int64_t kcp_max = CeilDiv(std::min(K, kKc), kAmxK) * kAmxK;
  std::unique_ptr<uint8_t[]> packed_a(
      new uint8_t[2 * p_pairs * limbs * kAmxTile * kcp_max]);
  // B's column tiles kNc columns at a time, as the vpmullq path does
  const int64_t block_pairs = std::min(q_pairs, kNc / (2 * kAmxTile));
  std::unique_ptr<uint8_t[]> packed_b(
      new uint8_t[2 * block_pairs * limbs * kcp_max * kAmxTile]);
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t kc = std::min(kKc, K - k0);
    const int64_t kcp = CeilDiv(kc, kAmxK) * kAmxK;
    const uint64_t* a_k = FromInner(A, k0, lda, trans_a);
    const uint64_t* b_k = FromInner(B, k0, ldb, !trans_b);
    const uint64_t* b2_k = FromInner(B2, k0, ldb, !trans_b);
    runner(2 * p_pairs, kc * kAmxTile * 4, [&](int64_t b, int64_t e) {
      PackAmxA(M, kc, kcp, a_k, lda, trans_a, packed_a.get(), b, e, limbs);
    });
    for (int64_t q0 = 0; q0 < q_pairs; q0 += block_pairs) {
      const int64_t q1 = std::min(q_pairs, q0 + block_pairs);
      const int64_t col0 = q0 * 2 * kAmxTile;
      runner(2 * (q1 - q0), kc * kAmxTile * 4, [&](int64_t b, int64_t e) {
        PackAmxB(N - col0, kc, kcp, trans_b ? b_k + col0 * ldb : b_k + col0,
                 b2_k == nullptr ? nullptr : trans_b ? b2_k + col0 * ldb : b2_k + col0, ldb,
                 trans_b, packed_b.get(), b, e, limbs);
      });
      const int64_t blocks = p_pairs * (q1 - q0);
      runner(blocks, kcp * kAmxTile * kAmxTile * 2, [&](int64_t begin, int64_t end) {
        AmxBlocks(M, N - col0, kcp, packed_a.get(), packed_b.get(), p_pairs, begin, end,
                  C + col0, ldc, limbs);
      });
    }
  }
}

}  // namespace

bool AmxAvailable() { return AmxUsable(); }

bool Avx512Available() { return CpuHasAvx512(); }

void RingGemmThinAccumulate(int64_t M, int64_t N, int64_t K, const uint64_t* A1,
                            const uint64_t* A2, int64_t lda, bool trans_a, const uint64_t* B1,
                            const uint64_t* B2, int64_t ldb, bool trans_b, uint64_t* C,
                            int64_t ldc, const ParallelRunner& runner, GemmPath path) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const std::vector<uint64_t> a1 = DenseRows(M, K, A1, lda, trans_a);
  const std::vector<uint64_t> a2 = DenseRows(M, K, A2, lda, trans_a);
  const bool avx512 = path != GemmPath::kPortable && CpuHasAvx512();
  const int64_t blocks = CeilDiv(N, kThinCols);
  runner(blocks, M * K * kThinCols * (B2 ? 3 : 1), [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> acc(M * kThinCols);
    for (int64_t q = begin; q < end; ++q) {
      const int64_t n0 = q * kThinCols, n1 = std::min(N, n0 + kThinCols), w = n1 - n0;
      std::fill(acc.begin(), acc.begin() + M * w, 0);
      (avx512 ? ThinAvx512 : ThinPortable)(trans_b, B2 != nullptr, M, K, a1.data(), a2.data(),
                                           B1, B2, ldb, n0, n1, acc.data());
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t j = 0; j < w; ++j) C[m * ldc + n0 + j] += acc[m * w + j];
      }
    }
  });
}

ParallelRunner SerialRunner() {
  return [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& work) {
    if (total > 0) work(0, total);
  };
}

// The packed GEMM (panels, micro-tiles, column blocks; see the top of this file) in words T:
// uint64_t for Z_2^64, uint32_t when only C mod 2^32 is wanted.
template <typename T>
void RingGemmPacked(int64_t M, int64_t N, int64_t K, const uint64_t* A, int64_t lda,
                    bool trans_a, const uint64_t* B, const uint64_t* B2, int64_t ldb,
                    bool trans_b, uint64_t* C, int64_t ldc, const ParallelRunner& runner,
                    GemmPath path) {
  const MicroKernel<T> kernel = ChooseKernel<T>(path);
  constexpr int64_t nr = NrOf<T>();
  const int64_t a_panels = CeilDiv(M, kMr), b_panels = CeilDiv(N, nr);
  const int64_t block_panels = std::min(b_panels, kNc / nr);
  const int64_t kc_max = std::min(K, kKc);
  std::unique_ptr<T[]> packed_a(new T[a_panels * kc_max * kMr]);
  std::unique_ptr<T[]> packed_b(new T[block_panels * kc_max * nr]);
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t kc = std::min(kKc, K - k0);
    // op(A)[:, k0:k0+kc] and op(B)[k0:k0+kc, :] with the same leading dimensions
    const uint64_t* a_k = FromInner(A, k0, lda, trans_a);
    const uint64_t* b_k = FromInner(B, k0, ldb, !trans_b);
    const uint64_t* b2_k = FromInner(B2, k0, ldb, !trans_b);
    runner(a_panels, kc * kMr * 2, [&](int64_t b, int64_t e) {
      PackA<T>(M, kc, a_k, lda, trans_a, packed_a.get(), b, e);
    });
    for (int64_t q0 = 0; q0 < b_panels; q0 += block_panels) {
      const int64_t q1 = std::min(b_panels, q0 + block_panels);
      runner(q1 - q0, kc * nr * (B2 ? 3 : 2), [&](int64_t b, int64_t e) {
        PackB<T>(N, kc, b_k, b2_k, ldb, trans_b, packed_b.get(), q0, q0 + b, q0 + e);
      });
      // Tiles ordered B-panel-major so consecutive tiles of one worker reuse a B panel from
      // cache.
      const int64_t tiles = a_panels * (q1 - q0);
      runner(tiles, kc * kMr * nr, [&](int64_t begin, int64_t end) {
        alignas(64) T tile[kMr * nr];
        for (int64_t t = begin; t < end; ++t) {
          const int64_t q = q0 + t / a_panels, p = t % a_panels;
          kernel(kc, packed_a.get() + p * kc * kMr, packed_b.get() + (q - q0) * kc * nr, tile);
          const int64_t rows = std::min(kMr, M - p * kMr), cols = std::min(nr, N - q * nr);
          for (int64_t r = 0; r < rows; ++r) {
            uint64_t* c_row = C + (p * kMr + r) * ldc + q * nr;
            for (int64_t c = 0; c < cols; ++c) c_row[c] += tile[r * nr + c];
          }
        }
      });
    }
  }
}

void RingGemmAccumulate(int64_t M, int64_t N, int64_t K, const uint64_t* A, int64_t lda,
                        bool trans_a, const uint64_t* B, const uint64_t* B2, int64_t ldb,
                        bool trans_b, uint64_t* C, int64_t ldc, const ParallelRunner& runner,
                        GemmPath path, int ring_bits) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (path == GemmPath::kAmx || (path == GemmPath::kAuto && K >= kAmxMinInner)) {
    if (AmxUsable()) {
      RingGemmAccumulateAmx(M, N, K, A, lda, trans_a, B, B2, ldb, trans_b, C, ldc, runner,
                            ring_bits == 32 ? kLimbs / 2 : kLimbs);
      return;
    }
  }
  if (ring_bits == 32) {  // 32-bit lanes: C's low 32 bits are all that is wanted
    RingGemmPacked<uint32_t>(M, N, K, A, lda, trans_a, B, B2, ldb, trans_b, C, ldc, runner, path);
  } else {
    RingGemmPacked<uint64_t>(M, N, K, A, lda, trans_a, B, B2, ldb, trans_b, C, ldc, runner, path);
  }
}

}  // namespace tf_puma
