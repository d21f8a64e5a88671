// Kernels: fresh keys, the PRG and PRSS zero shares (interfaces in prg_ops.cc).
#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "custom_ops/aes_ctr.h"
#include "custom_ops/kernel_util.h"
#include "custom_ops/prg_draws.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/strcat.h"

namespace tf_puma {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

class NewKeyOp : public OpKernel {
 public:
  explicit NewKeyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    Tensor* key = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({2}), &key));
    auto* bytes = reinterpret_cast<uint8_t*>(key->flat<int64_t>().data());
    size_t filled = 0;
    while (filled < 16) {
      ssize_t got = getrandom(bytes + filled, 16 - filled, 0);
      if (got < 0 && errno == EINTR) continue;
      OP_REQUIRES(ctx, got > 0,
                  errors::Unavailable("getrandom failed: ", std::strerror(errno),
                                      "; the party cannot draw a fresh key"));
      filled += static_cast<size_t>(got);
    }
  }
};

class PrgUniformOp : public StreamOpKernel {
 public:
  explicit PrgUniformOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {
    int64_t sub;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sub", &sub));
    OP_REQUIRES(ctx, sub >= 0 && sub < (int64_t{1} << 32),
                errors::InvalidArgument("sub must be in [0, 2^32), got ", sub));
    sub_ = static_cast<uint32_t>(sub);
  }

  void Compute(OpKernelContext* ctx) override {
    PrgKey key;
    const uint64_t stream = stream_;
    TensorShape shape;
    if (!ReadKey(ctx, 0, &key) || !ReadShape(ctx, 1, &shape)) {
      return;
    }
    OP_REQUIRES(ctx, shape.num_elements() <= kMaxDrawWords,
                errors::InvalidArgument("a PRG draw of shape ", shape.DebugString(), " exceeds "
                                        "2^33 ring elements per (key, stream, sub): split it"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    OP_REQUIRES_OK(ctx,
                   PrgFill(key, stream, sub_, RingData(out), out->NumElements(), TfRunner(ctx)));
  }

 private:
  uint32_t sub_;
};

class MaskInputOp : public StreamOpKernel {
 public:
  explicit MaskInputOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    PrgKey key_0, key_1;
    if (!ReadKey(ctx, 1, &key_0) || !ReadKey(ctx, 2, &key_1)) return;
    const Tensor& value = ctx->input(0);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, value.shape(), &out));
    uint64_t* words = RingData(out);
    const int64_t n = out->NumElements();
    if (words != RingData(value)) std::memcpy(words, RingData(value), n * sizeof(uint64_t));
    const uint64_t stream = stream_;
    const auto runner = TfRunner(ctx);
    OP_REQUIRES_OK(ctx, PrgSubtractFrom(key_0, stream, draws::kInputMask, words, n, runner));
    OP_REQUIRES_OK(ctx, PrgSubtractFrom(key_1, stream, draws::kInputMask, words, n, runner));
  }
};

class ZeroShareOp : public StreamOpKernel {
 public:
  explicit ZeroShareOp(OpKernelConstruction* ctx) : StreamOpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    PrgKey own, next;
    const uint64_t stream = stream_;
    TensorShape shape;
    if (!ReadKey(ctx, 0, &own) || !ReadKey(ctx, 1, &next) || 
        !ReadShape(ctx, 2, &shape)) {
      return;
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    OP_REQUIRES_OK(ctx, FillZeroShare(own, next, stream, RingData(out), out->NumElements(),
                                      TfRunner(ctx)));
  }
};

class PrgDrawTableOp : public OpKernel {
 public:
  explicit PrgDrawTableOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr int64_t n = sizeof(draws::kDraws) / sizeof(draws::kDraws[0]);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &out));
    auto lines = out->vec<tensorflow::tstring>();
    for (int64_t i = 0; i < n; ++i) {
      const draws::Draw& d = draws::kDraws[i];
      lines(i) = tensorflow::strings::StrCat(d.op, " ", d.family, " ", d.key_input, " ", d.sub);
    }
  }
};

class Aes128CtrOp : public OpKernel {
 public:
  explicit Aes128CtrOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_blocks", &num_blocks_));
    std::string path;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("path", &path));
    path_ = path == "portable" ? AesPath::kPortable
            : path == "aesni"  ? AesPath::kAesNi
            : path == "vaes"   ? AesPath::kVaes
                               : AesPath::kAuto;
    OP_REQUIRES(ctx, AesPathAvailable(path_),
                errors::InvalidArgument("this CPU lacks the '", path, "' AES path (",
                                        path == "vaes" ? "VAES with AVX-512" : "AES-NI",
                                        "); use path='auto'"));
  }

  void Compute(OpKernelContext* ctx) override {
    PrgKey key, iv;
    if (!ReadKey(ctx, 0, &key) || !ReadKey(ctx, 1, &iv)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({2 * num_blocks_}), &out));
    Aes128CtrKeystream(key.bytes, iv.bytes, 0, static_cast<uint64_t>(num_blocks_),
                       reinterpret_cast<uint8_t*>(RingData(out)), path_);
  }

 private:
  int64_t num_blocks_;
  AesPath path_;
};

REGISTER_KERNEL_BUILDER(Name("PumaNewKey").Device(DEVICE_CPU), NewKeyOp);
REGISTER_KERNEL_BUILDER(Name("PumaPrgUniform").Device(DEVICE_CPU).HostMemory("shape"),
                        PrgUniformOp);
REGISTER_KERNEL_BUILDER(Name("PumaMaskInput").Device(DEVICE_CPU), MaskInputOp);
REGISTER_KERNEL_BUILDER(Name("PumaZeroShare").Device(DEVICE_CPU).HostMemory("shape"),
                        ZeroShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaPrgDrawTable").Device(DEVICE_CPU), PrgDrawTableOp);
REGISTER_KERNEL_BUILDER(Name("PumaAes128Ctr").Device(DEVICE_CPU), Aes128CtrOp);

}  // namespace tf_puma
