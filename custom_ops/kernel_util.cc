#include "custom_ops/kernel_util.h"

#include <algorithm>
#include <cstring>

#include "custom_ops/aes_ctr.h"
#include "custom_ops/prg_draws.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace tf_puma {

using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::TensorShapeUtils;
namespace errors = tensorflow::errors;

bool ReadKey(OpKernelContext* ctx, int index, PrgKey* key) {
  const Tensor& t = ctx->input(index);
  if (t.dims() != 1 || t.dim_size(0) != 2) {
    ctx->CtxFailure(errors::InvalidArgument(
        "input ", index, " must be a 128-bit key, an int64 tensor of shape [2]; got shape ",
        t.shape().DebugString()));
    return false;
  }
  std::memcpy(key->bytes, t.flat<int64_t>().data(), 16);
  return true;
}

bool InputsShareShape(OpKernelContext* ctx, int count, const char* what) {
  const TensorShape& shape = ctx->input(0).shape();
  for (int i = 1; i < count; ++i) {
    if (ctx->input(i).shape() != shape) {
      ctx->CtxFailure(errors::InvalidArgument(what, " needs equal shapes (broadcast first); "
                                              "input 0 is ", shape.DebugString(), ", input ", i,
                                              " is ", ctx->input(i).shape().DebugString()));
      return false;
    }
  }
  return true;
}

bool ReadShape(OpKernelContext* ctx, int index, TensorShape* shape) {
  const Tensor& t = ctx->input(index);
  if (!TensorShapeUtils::IsVector(t.shape())) {
    ctx->CtxFailure(errors::InvalidArgument("input ", index, " must be a shape vector; got ",
                                            t.shape().DebugString()));
    return false;
  }
  auto status = TensorShapeUtils::MakeShape(t.vec<int64_t>(), shape);
  if (!status.ok()) {
    ctx->CtxFailure(status);
    return false;
  }
  return true;
}

ParallelRunner TfRunner(OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [pool](int64_t total, int64_t cost_per_unit,
                const std::function<void(int64_t, int64_t)>& work) {
    pool->ParallelFor(total, cost_per_unit, work);
  };
}

void ParallelElementwise(const ParallelRunner& runner, int64_t n, int64_t cost_per_element,
                         const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (n < 16384) {
    fn(0, n);
    return;
  }
  runner(n, cost_per_element, fn);
}

namespace {

tensorflow::Status CheckDrawSize(int64_t n) {
  if (n > kMaxDrawWords) {
    return errors::InvalidArgument("a PRG draw of ", n, " ring elements exceeds the limit of 2^33 "
                                   "per (key, stream, sub): split the tensor into smaller pieces");
  }
  return tensorflow::OkStatus();
}

// The first counter block of F(key, stream, sub): stream || sub || 0, big-endian.
void DrawCounterBlock(uint64_t stream, uint32_t sub, uint8_t iv[16]) {
  std::memset(iv, 0, 16);
  for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(stream >> (56 - 8 * i));
  for (int i = 0; i < 4; ++i) iv[8 + i] = static_cast<uint8_t>(sub >> (24 - 8 * i));
}

}  // namespace

tensorflow::Status PrgFill(const PrgKey& key, uint64_t stream, uint32_t sub, uint64_t* out,
                           int64_t n, const ParallelRunner& runner) {
  TF_RETURN_IF_ERROR(CheckDrawSize(n));
  if (n <= 0) return tensorflow::OkStatus();
  uint8_t iv[16];
  DrawCounterBlock(stream, sub, iv);
  const int64_t full_blocks = n / 2;
  // Pieces of whole blocks in parallel; ~20 cycles a block is a fair cost estimate for AES-NI.
  auto fill = [&](int64_t begin, int64_t end) {
    Aes128CtrKeystream(key.bytes, iv, static_cast<uint64_t>(begin),
                       static_cast<uint64_t>(end - begin),
                       reinterpret_cast<uint8_t*>(out + 2 * begin));
  };
  if (full_blocks < 8192) {
    fill(0, full_blocks);
  } else {
    runner(full_blocks, 20, fill);
  }
  if (n % 2) {
    uint64_t last[2];
    Aes128CtrKeystream(key.bytes, iv, static_cast<uint64_t>(full_blocks), 1,
                       reinterpret_cast<uint8_t*>(last));
    out[n - 1] = last[0];
  }
  return tensorflow::OkStatus();
}

namespace {

// out[0..n) = combine(out[i], F(key, stream, sub)[i]), the keystream made and used in pieces of
// kPiece blocks (8 KiB, stays in L1): no buffer of n words.
template <typename Combine>
tensorflow::Status PrgCombineInto(const PrgKey& key, uint64_t stream, uint32_t sub,
                                  uint64_t* out, int64_t n, const ParallelRunner& runner,
                                  Combine combine) {
  TF_RETURN_IF_ERROR(CheckDrawSize(n));
  if (n <= 0) return tensorflow::OkStatus();
  uint8_t iv[16];
  DrawCounterBlock(stream, sub, iv);
  const int64_t blocks = (n + 1) / 2;  // the last block's second word is drawn, not used
  constexpr int64_t kPiece = 512;
  auto apply = [&](int64_t begin, int64_t end) {
    uint64_t stream_words[2 * kPiece];
    for (int64_t b = begin; b < end; b += kPiece) {
      const int64_t count = std::min(kPiece, end - b);
      Aes128CtrKeystream(key.bytes, iv, static_cast<uint64_t>(b), static_cast<uint64_t>(count),
                         reinterpret_cast<uint8_t*>(stream_words));
      const int64_t first = 2 * b, last = std::min(n, 2 * (b + count));
      for (int64_t i = first; i < last; ++i) out[i] = combine(out[i], stream_words[i - first]);
    }
  };
  if (blocks < 8192) {
    apply(0, blocks);
  } else {
    runner(blocks, 22, apply);
  }
  return tensorflow::OkStatus();
}

}  // namespace

tensorflow::Status PrgSubtractFrom(const PrgKey& key, uint64_t stream, uint32_t sub,
                                   uint64_t* out, int64_t n, const ParallelRunner& runner) {
  return PrgCombineInto(key, stream, sub, out, n, runner,
                        [](uint64_t a, uint64_t b) { return a - b; });
}

tensorflow::Status FillZeroShare(const PrgKey& own, const PrgKey& next, uint64_t stream,
                                 uint64_t* out, int64_t n, const ParallelRunner& runner) {
  TF_RETURN_IF_ERROR(PrgFill(own, stream, draws::kZeroShare, out, n, runner));
  return PrgSubtractFrom(next, stream, draws::kZeroShare, out, n, runner);
}

tensorflow::Status FillXorZeroShare(const PrgKey& own, const PrgKey& next, uint64_t stream,
                                    uint64_t* out, int64_t n, const ParallelRunner& runner) {
  TF_RETURN_IF_ERROR(PrgFill(own, stream, draws::kZeroShare, out, n, runner));
  return PrgCombineInto(next, stream, draws::kZeroShare, out, n, runner,
                        [](uint64_t a, uint64_t b) { return a ^ b; });
}

Tensor* AllocateLike(OpKernelContext* ctx, int output, const TensorShape& shape) {
  Tensor* t = nullptr;
  auto status = ctx->allocate_output(output, shape, &t);
  if (!status.ok()) {
    ctx->CtxFailure(status);
    return nullptr;
  }
  return t;
}

}  // namespace tf_puma
