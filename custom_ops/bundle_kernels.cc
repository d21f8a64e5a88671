// Kernel: party-local weight shares with a process-wide cache (interface in bundle_ops.cc).
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>

#include "custom_ops/kernel_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_puma {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

namespace {

struct CachedShares {
  Tensor own, next;
};

std::mutex cache_mutex;
std::map<std::pair<std::string, std::string>, CachedShares>* cache =
    new std::map<std::pair<std::string, std::string>, CachedShares>();

Status ReadTensorAt(const std::string& path, int64_t offset, const TensorShape& shape,
                    Tensor* out) {
  *out = Tensor(tensorflow::DT_INT64, shape);
  std::ifstream data(path, std::ios::binary);
  if (!data) return errors::NotFound("cannot open ", path);
  data.seekg(offset);
  const std::streamsize bytes = shape.num_elements() * sizeof(int64_t);
  data.read(reinterpret_cast<char*>(out->flat<int64_t>().data()), bytes);
  if (data.gcount() != bytes) {
    return errors::DataLoss(path, " is truncated: wanted ", bytes, " bytes at ", offset);
  }
  return tensorflow::OkStatus();
}

// A bundle's header: the first lines of its index.txt, "#bundle ID", "#party I", "#frac_bits F"
// and, when some share is a PRG seed, "#prg_chunk N" (ring elements per sub of a seed).
struct BundleHeader {
  std::string id;
  int64_t party = -1;
  int64_t frac_bits = -1;
  int64_t prg_chunk = -1;
};

// The header of the bundle in `dir`, or false if the directory holds no bundle or one without
// its "#bundle ID" line (never picked: which one would be directory order).
bool ReadHeader(const std::string& dir, BundleHeader* header) {
  std::ifstream index(dir + "/index.txt");
  if (!index) return false;
  std::string line;
  if (!std::getline(index, line) || line.rfind("#bundle ", 0) != 0 || line.size() <= 8) {
    return false;
  }
  *header = BundleHeader();
  header->id = line.substr(8);
  while (std::getline(index, line) && !line.empty() && line[0] == '#') {
    std::istringstream fields(line.substr(1));
    std::string key;
    int64_t value;
    if (!(fields >> key >> value)) continue;
    if (key == "party") header->party = value;
    if (key == "frac_bits") header->frac_bits = value;
    if (key == "prg_chunk") header->prg_chunk = value;
  }
  return true;
}

bool BundleIdOf(const std::string& dir, std::string* id) {
  BundleHeader header;
  if (!ReadHeader(dir, &header)) return false;
  *id = header.id;
  return true;
}

// This party process's share root and index, set once at start by PumaSetShareRoot.
struct ShareRoot {
  std::string dir;
  int64_t party = -1;
};
std::mutex root_mutex;
ShareRoot* share_root = new ShareRoot();

// The directory of bundle `id` under the party's share root: the root itself or one of its
// immediate subdirectories (a party may hold the bundles of several models).
Status ResolveBundle(const std::string& root, const std::string& id, std::string* dir) {
  if (id.empty()) {
    return errors::InvalidArgument("the graph names no share bundle: convert the model again "
                                   "with this version of tf-puma (bundles carry an id)");
  }
  std::string found_id;
  if (BundleIdOf(root, &found_id) && found_id == id) {
    *dir = root;
    return tensorflow::OkStatus();
  }
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(root, error)) {
    if (!entry.is_directory()) continue;
    if (BundleIdOf(entry.path().string(), &found_id) && found_id == id) {
      *dir = entry.path().string();
      return tensorflow::OkStatus();
    }
  }
  return errors::NotFound("no share bundle \"", id, "\" under ", root, " (the party's --shares "
                          "directory or its subdirectories): copy the model's shares/partyI "
                          "directory there (e.g. ", root, "/MODEL); a bundle's index.txt must "
                          "start with its \"#bundle ID\" line");
}

// The 32 hex digits of a seed "prg:HEX" as a key (the bytes of the owner's int64[2] key).
bool ParseSeed(const std::string& hex, PrgKey* key) {
  if (hex.size() != 32) return false;
  for (int i = 0; i < 16; ++i) {
    int byte = 0;
    for (int j = 0; j < 2; ++j) {
      const char ch = hex[2 * i + j];
      int digit;
      if (ch >= '0' && ch <= '9') {
        digit = ch - '0';
      } else if (ch >= 'a' && ch <= 'f') {
        digit = ch - 'a' + 10;
      } else {
        return false;
      }
      byte = 16 * byte + digit;
    }
    key->bytes[i] = static_cast<uint8_t>(byte);
  }
  return true;
}

// One share of a weight, as its index line gives it: a byte offset into shares.bin, or
// "prg:HEX", a seed whose chunk c (prg_chunk ring elements) is F(seed, 0, c).
Status ReadShare(const std::string& dir, const BundleHeader& header, const std::string& spec,
                 const TensorShape& shape, const ParallelRunner& runner, Tensor* out) {
  if (spec.rfind("prg:", 0) != 0) {
    char* end = nullptr;
    const int64_t offset = std::strtoll(spec.c_str(), &end, 10);
    if (spec.empty() || *end != '\0' || offset < 0) {
      return errors::DataLoss(dir, "/index.txt has a malformed share \"", spec,
                              "\": convert the model again");
    }
    return ReadTensorAt(dir + "/shares.bin", offset, shape, out);
  }
  PrgKey seed;
  if (!ParseSeed(spec.substr(4), &seed)) {
    return errors::DataLoss(dir, "/index.txt has a malformed seed \"", spec,
                            "\": convert the model again");
  }
  if (header.prg_chunk <= 0 || header.prg_chunk > kMaxDrawWords) {
    return errors::DataLoss(dir, "/index.txt holds seeds but no valid \"#prg_chunk N\" line: "
                            "convert the model again");
  }
  const int64_t n = shape.num_elements();
  if ((n + header.prg_chunk - 1) / header.prg_chunk > (int64_t{1} << 32)) {
    return errors::DataLoss(dir, "/index.txt: a seed of ", n, " values in chunks of ",
                            header.prg_chunk, " needs more than 2^32 subs");
  }
  *out = Tensor(tensorflow::DT_INT64, shape);
  uint64_t* data = RingData(out);
  for (int64_t start = 0, chunk = 0; start < n; start += header.prg_chunk, ++chunk) {
    TF_RETURN_IF_ERROR(PrgFill(seed, 0, static_cast<uint32_t>(chunk), data + start,
                               std::min(header.prg_chunk, n - start), runner));
  }
  return tensorflow::OkStatus();
}

Status LoadFromBundle(const std::string& dir, const BundleHeader& header, const std::string& name,
                      const TensorShape& expected, const ParallelRunner& runner,
                      CachedShares* shares) {
  std::ifstream index(dir + "/index.txt");
  if (!index) {
    return errors::NotFound("no share bundle at ", dir, "/index.txt: start the party with "
                            "`tf-puma party --shares DIR` pointing at its own shares/partyI");
  }
  std::string line;
  while (std::getline(index, line)) {
    std::istringstream fields(line);
    std::string entry, own_spec, next_spec;
    if (line.empty() || line[0] == '#') continue;
    if (!(fields >> entry >> own_spec >> next_spec) || entry != name) continue;
    TensorShape shape;
    int64_t dim;
    while (fields >> dim) shape.AddDim(dim);
    if (shape != expected) {
      return errors::InvalidArgument("weight ", name, " has shape ", shape.DebugString(),
                                     " in the bundle but the graph expects ",
                                     expected.DebugString(), ": bundle and model differ");
    }
    TF_RETURN_IF_ERROR(ReadShare(dir, header, own_spec, shape, runner, &shares->own));
    return ReadShare(dir, header, next_spec, shape, runner, &shares->next);
  }
  return errors::NotFound("weight ", name, " is not in the share bundle ", dir,
                          ": bundle and model differ");
}

class LoadShareOp : public OpKernel {
 public:
  explicit LoadShareOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("weight", &name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bundle", &bundle_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("party", &party_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("frac_bits", &frac_bits_));
    tensorflow::PartialTensorShape shape;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shape", &shape));
    OP_REQUIRES(ctx, shape.AsTensorShape(&shape_),
                errors::InvalidArgument("weight ", name_, " needs a fully known shape"));
  }

  void Compute(OpKernelContext* ctx) override {
    ShareRoot root;
    {
      std::lock_guard<std::mutex> lock(root_mutex);
      root = *share_root;
    }
    OP_REQUIRES(ctx, !root.dir.empty(),
                errors::FailedPrecondition("this party has no share bundle: start it with "
                                           "`tf-puma party --shares DIR`"));
    OP_REQUIRES(ctx, party_ < 0 || party_ == root.party,
                errors::FailedPrecondition("the graph loads party ", party_, "'s shares on a ",
                                           "process started as party ", root.party));
    CachedShares shares;
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto key = std::make_pair(root.dir + "\n" + bundle_, name_);
      auto it = cache->find(key);
      if (it == cache->end()) {
        std::string bundle_dir;
        OP_REQUIRES_OK(ctx, ResolveBundle(root.dir, bundle_, &bundle_dir));
        BundleHeader header;
        ReadHeader(bundle_dir, &header);
        OP_REQUIRES(ctx, header.party == root.party,
                    errors::FailedPrecondition(
                        "the share bundle ", bundle_dir, " belongs to party ", header.party,
                        ", but this is party ", root.party, ": copy shares/party", root.party,
                        " of the conversion to this party"));
        OP_REQUIRES(ctx, frac_bits_ < 0 || header.frac_bits == frac_bits_,
                    errors::FailedPrecondition(
                        "the share bundle ", bundle_dir, " encodes weights with ",
                        header.frac_bits, " fractional bits, the secure model expects ",
                        frac_bits_, ": bundle and model come from different conversions"));
        CachedShares loaded;
        OP_REQUIRES_OK(ctx, LoadFromBundle(bundle_dir, header, name_, shape_, TfRunner(ctx),
                                           &loaded));
        it = cache->emplace(key, loaded).first;
      }
      shares = it->second;
    }
    OP_REQUIRES(ctx, shares.own.shape() == shape_,
                errors::InvalidArgument("weight ", name_, " has shape ",
                                        shares.own.shape().DebugString(), " in the bundle but the "
                                        "graph expects ", shape_.DebugString(),
                                        ": bundle and model differ"));
    ctx->set_output(0, shares.own);
    ctx->set_output(1, shares.next);
  }

 private:
  std::string name_;
  std::string bundle_;
  int64_t party_ = -1;
  int64_t frac_bits_ = -1;
  TensorShape shape_;
};

class SetShareRootOp : public OpKernel {
 public:
  explicit SetShareRootOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("root", &root_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("party", &party_));
  }

  void Compute(OpKernelContext* ctx) override {
    OP_REQUIRES(ctx, !root_.empty() && party_ >= 0,
                errors::InvalidArgument("a share root needs a directory and a party index"));
    std::lock_guard<std::mutex> lock(root_mutex);
    OP_REQUIRES(ctx, share_root->dir.empty() ||
                         (share_root->dir == root_ && share_root->party == party_),
                errors::FailedPrecondition("this process already serves party ",
                                           share_root->party, " from ", share_root->dir));
    share_root->dir = root_;
    share_root->party = party_;
  }

 private:
  std::string root_;
  int64_t party_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PumaLoadShare").Device(DEVICE_CPU), LoadShareOp);
REGISTER_KERNEL_BUILDER(Name("PumaSetShareRoot").Device(DEVICE_CPU), SetShareRootOp);

}  // namespace tf_puma
