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
// with vpmullq (AVX512DQ); the portable kernel does the same arithmetic in scalar code. Both give
// the exact product mod 2^64, so results are bit-identical.
#include "custom_ops/ring_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace tf_puma {
namespace {

constexpr int64_t kMr = 8;   // rows of a micro-tile
constexpr int64_t kNr = 16;  // columns of a micro-tile (two zmm registers of 8 lanes)
constexpr int64_t kNc = 512;  // columns of op(B) packed at a time (a multiple of kNr)
constexpr int64_t kKc = 1024;  // inner-dimension slice packed at a time (a tile's panels: L2)

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Packs op(A) (M x K) into panels of kMr rows: panel p, step k holds A[p*kMr + r][k], r < kMr.
void PackA(int64_t M, int64_t K, const uint64_t* A, int64_t lda, bool trans, uint64_t* out,
           int64_t p_begin, int64_t p_end) {
  for (int64_t p = p_begin; p < p_end; ++p) {
    uint64_t* dst = out + p * K * kMr;
    const int64_t rows = std::min(kMr, M - p * kMr);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t r = 0; r < kMr; ++r) {
        const int64_t i = p * kMr + r;
        dst[k * kMr + r] = r < rows ? (trans ? A[k * lda + i] : A[i * lda + k]) : 0;
      }
    }
  }
}

// Packs op(B) + op(B2) (K x N; B2 may be null) into panels of kNr columns: panel q, step k
// holds B[k][q*kNr + c] (+ B2[k][q*kNr + c]), written at out + (q - q_base) * K * kNr.
void PackB(int64_t N, int64_t K, const uint64_t* B, const uint64_t* B2, int64_t ldb, bool trans,
           uint64_t* out, int64_t q_base, int64_t q_begin, int64_t q_end) {
  auto at = [&](const uint64_t* m, int64_t k, int64_t j) {
    return trans ? m[j * ldb + k] : m[k * ldb + j];
  };
  for (int64_t q = q_begin; q < q_end; ++q) {
    uint64_t* dst = out + (q - q_base) * K * kNr;
    const int64_t cols = std::min(kNr, N - q * kNr);
    for (int64_t k = 0; k < K; ++k) {
      if (!trans && cols == kNr && B2 == nullptr) {
        std::memcpy(dst + k * kNr, B + k * ldb + q * kNr, kNr * sizeof(uint64_t));
        continue;
      }
      for (int64_t c = 0; c < kNr; ++c) {
        const int64_t j = q * kNr + c;
        dst[k * kNr + c] = c >= cols ? 0 : B2 ? at(B, k, j) + at(B2, k, j) : at(B, k, j);
      }
    }
  }
}

// tile[kMr][kNr] = sum_k a[k][:] (x) b[k][:], portable.
void MicroKernelPortable(int64_t K, const uint64_t* a, const uint64_t* b, uint64_t* tile) {
  uint64_t acc[kMr][kNr] = {};
  for (int64_t k = 0; k < K; ++k) {
    const uint64_t* ak = a + k * kMr;
    const uint64_t* bk = b + k * kNr;
    for (int64_t r = 0; r < kMr; ++r) {
      for (int64_t c = 0; c < kNr; ++c) acc[r][c] += ak[r] * bk[c];
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

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return has;
}

using MicroKernel = void (*)(int64_t, const uint64_t*, const uint64_t*, uint64_t*);

MicroKernel ChooseKernel(GemmPath path) {
  switch (path) {
    case GemmPath::kPortable:
      return MicroKernelPortable;
    case GemmPath::kAvx512:
      return CpuHasAvx512() ? MicroKernelAvx512 : MicroKernelPortable;
    case GemmPath::kAuto:
    default:
      return CpuHasAvx512() ? MicroKernelAvx512 : MicroKernelPortable;
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

}  // namespace

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

void RingGemmAccumulate(int64_t M, int64_t N, int64_t K, const uint64_t* A, int64_t lda,
                        bool trans_a, const uint64_t* B, const uint64_t* B2, int64_t ldb,
                        bool trans_b, uint64_t* C, int64_t ldc, const ParallelRunner& runner,
                        GemmPath path) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const MicroKernel kernel = ChooseKernel(path);
  const int64_t a_panels = CeilDiv(M, kMr), b_panels = CeilDiv(N, kNr);
  const int64_t block_panels = std::min(b_panels, kNc / kNr);
  const int64_t kc_max = std::min(K, kKc);
  std::unique_ptr<uint64_t[]> packed_a(new uint64_t[a_panels * kc_max * kMr]);
  std::unique_ptr<uint64_t[]> packed_b(new uint64_t[block_panels * kc_max * kNr]);
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t kc = std::min(kKc, K - k0);
    // op(A)[:, k0:k0+kc] and op(B)[k0:k0+kc, :] with the same leading dimensions
    const uint64_t* a_k = trans_a ? A + k0 * lda : A + k0;
    const uint64_t* b_k = trans_b ? B + k0 : B + k0 * ldb;
    const uint64_t* b2_k = B2 == nullptr ? nullptr : trans_b ? B2 + k0 : B2 + k0 * ldb;
    runner(a_panels, kc * kMr * 2, [&](int64_t b, int64_t e) {
      PackA(M, kc, a_k, lda, trans_a, packed_a.get(), b, e);
    });
    for (int64_t q0 = 0; q0 < b_panels; q0 += block_panels) {
      const int64_t q1 = std::min(b_panels, q0 + block_panels);
      runner(q1 - q0, kc * kNr * (B2 ? 3 : 2), [&](int64_t b, int64_t e) {
        PackB(N, kc, b_k, b2_k, ldb, trans_b, packed_b.get(), q0, q0 + b, q0 + e);
      });
      // Tiles ordered B-panel-major so consecutive tiles of one worker reuse a B panel from
      // cache.
      const int64_t tiles = a_panels * (q1 - q0);
      runner(tiles, kc * kMr * kNr, [&](int64_t begin, int64_t end) {
        alignas(64) uint64_t tile[kMr * kNr];
        for (int64_t t = begin; t < end; ++t) {
          const int64_t q = q0 + t / a_panels, p = t % a_panels;
          kernel(kc, packed_a.get() + p * kc * kMr, packed_b.get() + (q - q0) * kc * kNr, tile);
          const int64_t rows = std::min(kMr, M - p * kMr), cols = std::min(kNr, N - q * kNr);
          for (int64_t r = 0; r < rows; ++r) {
            uint64_t* c_row = C + (p * kMr + r) * ldc + q * kNr;
            for (int64_t c = 0; c < cols; ++c) c_row[c] += tile[r * kNr + c];
          }
        }
      });
    }
  }
}

}  // namespace tf_puma
