// Matrix multiplication over the ring Z_2^64 (uint64 with wrap-around).
//
// C[M,N] += op(A)[M,K] @ op(B)[K,N] mod 2^64, row-major with leading dimensions.
// op(A) = A or A^T (A stored [K,M]); same for B. Tiled for cache, vectorised with AVX-512
// (vpmullq, chosen at run time when the CPU has AVX512F+DQ), with a portable scalar fallback
// that gives bit-identical results.
#ifndef TF_PUMA_CUSTOM_OPS_RING_GEMM_H_
#define TF_PUMA_CUSTOM_OPS_RING_GEMM_H_

#include <cstdint>
#include <functional>

namespace tf_puma {

// Runs work(begin, end) over [0, total) split into pieces, possibly in parallel, and returns when
// all pieces are done. cost_per_unit is a rough cycle count for one unit of work.
using ParallelRunner =
    std::function<void(int64_t total, int64_t cost_per_unit,
                       const std::function<void(int64_t begin, int64_t end)>& work)>;

// A runner that executes everything on the calling thread.
ParallelRunner SerialRunner();

// Which micro-kernel to use; kAuto picks AMX-INT8 for packed products with an inner dimension of
// at least kAmxMinInner when the CPU and OS allow it, else AVX-512 when the CPU has it, else
// portable. kAmx falls back to AVX-512 (or portable) where AMX is unusable, kAvx512 to portable.
// Every path gives the same bits.
enum class GemmPath { kAuto, kPortable, kAvx512, kAmx };

// Inner dimension from which kAuto takes AMX (below it, packing the bytes costs more than the
// tile products save: benchmarks/ring_gemm.py).
constexpr int64_t kAmxMinInner = 64;

// True when this process can run AMX-INT8 tiles (CPU, OS state and Linux's permission), and
// when the CPU has AVX512F + DQ.
bool AmxAvailable();
bool Avx512Available();

// C += op(A) @ (op(B) + op(B2)) over Z_2^64; B2 may be null (then C += op(A) @ op(B)). The
// inner dimension is taken 1,024 at a time, and op(B) is packed (with B2 added) a block of
// columns at a time: the scratch is at most 1,024 x 512 values and M x 1,024 of A's panels,
// never a copy of B or of A, and no B + B2 is stored. With ring_bits = 32 only C mod 2^32 is
// wanted: the AMX path then multiplies the four low byte limbs (10 limb pairs instead of 36),
// the others pack 32-bit words and multiply 16 lanes a zmm register (vpmulld) instead of 8;
// C's upper 32 bits are left unspecified on every path.
void RingGemmAccumulate(int64_t M, int64_t N, int64_t K, const uint64_t* A, int64_t lda,
                        bool trans_a, const uint64_t* B, const uint64_t* B2, int64_t ldb,
                        bool trans_b, uint64_t* C, int64_t ldc, const ParallelRunner& runner,
                        GemmPath path = GemmPath::kAuto, int ring_bits = 64);

// Rows of op(A) up to which products run unpacked (RingGemmThinAccumulate): a decoding step
// multiplies one row by each weight matrix, and packing the weights would copy them twice per
// product for M x K x N multiplications of work.
constexpr int64_t kThinRows = 8;

// C += op(A1) @ (op(B1) + op(B2)) + op(A2) @ op(B1) over Z_2^64 for M <= kThinRows: B1 and B2
// are read once, in place (no packing, no sum of B1 + B2 stored). A2 and B2 may be null (that
// operand is then zero). Bit-identical for every path. This is a party's share of x @ y from
// replicated shares: A1 = x_own, A2 = x_next, B1 = y_own, B2 = y_next.
void RingGemmThinAccumulate(int64_t M, int64_t N, int64_t K, const uint64_t* A1,
                            const uint64_t* A2, int64_t lda, bool trans_a, const uint64_t* B1,
                            const uint64_t* B2, int64_t ldb, bool trans_b, uint64_t* C,
                            int64_t ldc, const ParallelRunner& runner,
                            GemmPath path = GemmPath::kAuto);

}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_RING_GEMM_H_
