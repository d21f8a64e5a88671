// Helpers shared by the tf-puma kernels: reading keys and streams, the PRG fill F(key, stream,
// sub), and TensorFlow's CPU thread pool as a ParallelRunner.
#ifndef TF_PUMA_CUSTOM_OPS_KERNEL_UTIL_H_
#define TF_PUMA_CUSTOM_OPS_KERNEL_UTIL_H_

#include <cstdint>

#include "custom_ops/ring_gemm.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_puma {

struct PrgKey {
  uint8_t bytes[16];
};

// Input `index` as a 128-bit key (int64[2]); sets an InvalidArgument error on a bad shape.
bool ReadKey(tensorflow::OpKernelContext* ctx, int index, PrgKey* key);

// Checks inputs 0..count-1 all have input 0's shape; sets an InvalidArgument error naming `what`.
bool InputsShareShape(tensorflow::OpKernelContext* ctx, int count, const char* what);


// Input `index` as a shape vector (int64 elements, each >= 0).
bool ReadShape(tensorflow::OpKernelContext* ctx, int index, tensorflow::TensorShape* shape);

// A kernel that draws PRG outputs F(key, stream, sub): its stream id is its `stream` attribute
// (runtime.new_stream gives each kernel call its own), so the graph holds no Const per stream
// and the static audit reads it from the node itself.
class StreamOpKernel : public tensorflow::OpKernel {
 public:
  explicit StreamOpKernel(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t stream = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stream", &stream));
    stream_ = static_cast<uint64_t>(stream);
  }

 protected:
  uint64_t stream_ = 0;
};

// TensorFlow's intra-op thread pool of this kernel's device.
ParallelRunner TfRunner(tensorflow::OpKernelContext* ctx);

// The most ring elements one draw F(key, stream, sub) may have: 2^32 blocks of two words, so
// the 32-bit block index never carries into the sub field (and another draw's counters).
constexpr int64_t kMaxDrawWords = int64_t{1} << 33;

// out[0..n) = F(key, stream, sub): AES-128-CTR keystream with counter block
// stream (64 bits) || sub (32 bits) || block index (32 bits), big-endian, read as little-endian
// uint64 words. Runs in parallel on `runner`. Refuses n > kMaxDrawWords (InvalidArgument).
tensorflow::Status PrgFill(const PrgKey& key, uint64_t stream, uint32_t sub, uint64_t* out, int64_t n,
             const ParallelRunner& runner);

// out[0..n) -= F(key, stream, sub), the keystream made and used in 8 KiB pieces (no n-word
// buffer). The same words as PrgFill. Same limit as PrgFill.
tensorflow::Status PrgSubtractFrom(const PrgKey& key, uint64_t stream, uint32_t sub,
                                   uint64_t* out, int64_t n, const ParallelRunner& runner);

// out[0..n) = F(own, stream, 0) - F(next, stream, 0): party i's PRSS share of zero (the three
// sum to 0 mod 2^64). The second keystream is subtracted in pieces (no n-word scratch). Same
// limit as PrgFill.
tensorflow::Status FillZeroShare(const PrgKey& own, const PrgKey& next, uint64_t stream,
                                 uint64_t* out, int64_t n, const ParallelRunner& runner);

// out[0..n) = F(own, stream, 0) ^ F(next, stream, 0): party i's PRSS share of zero under XOR
// (the three XOR to 0). No scratch, as FillZeroShare. Same limit as PrgFill.
tensorflow::Status FillXorZeroShare(const PrgKey& own, const PrgKey& next, uint64_t stream,
                                    uint64_t* out, int64_t n, const ParallelRunner& runner);

// Allocates output `output` with `shape`; nullptr (the error set on ctx) on failure.
tensorflow::Tensor* AllocateLike(tensorflow::OpKernelContext* ctx, int output,
                                 const tensorflow::TensorShape& shape);

// Elementwise loop over [0, n) split over the runner; fn(begin, end).
void ParallelElementwise(const ParallelRunner& runner, int64_t n, int64_t cost_per_element,
                         const std::function<void(int64_t, int64_t)>& fn);

// uint64 view of an int64 tensor's data (the ring Z_2^64 in two's complement).
inline const uint64_t* RingData(const tensorflow::Tensor& t) {
  return reinterpret_cast<const uint64_t*>(t.flat<int64_t>().data());
}
inline uint64_t* RingData(tensorflow::Tensor* t) {
  return reinterpret_cast<uint64_t*>(t->flat<int64_t>().data());
}

}  // namespace tf_puma

#endif  // TF_PUMA_CUSTOM_OPS_KERNEL_UTIL_H_
