#include "mcompress/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include "mcompress/error.h"
#include "mcompress/io/gguf.h"
#include "mcompress/io/hdf5.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/io/torch_zip.h"
#include "mcompress/mapped_file.h"

namespace mc {

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(format().c_str(), path_, ": no tensor named '", name, "'");
  return infos_[it->second];
}

std::vector<HostTensor> CheckpointReader::load_all() const {
  std::vector<HostTensor> out;
  out.reserve(infos_.size());
  for (const auto& ti : infos_) out.push_back(load(ti.name));
  return out;
}

void CheckpointReader::add_tensor(TensorInfo ti, const char* component) {
  if (ti.name.empty()) fail(component, path_, ": tensor with an empty name");
  if (index_.count(ti.name)) fail(component, path_, ": duplicate tensor name '", ti.name, "'");
  int64_t numel = 0;
  for (int64_t d : ti.shape)
    if (d < 0) fail(component, path_, ": tensor '", ti.name, "' has negative dimension in shape ", shape_str(ti.shape));
  try {
    numel = shape_numel(ti.shape);
  } catch (const InputError&) {
    fail(component, path_, ": tensor '", ti.name, "' shape ", shape_str(ti.shape), " overflows");
  }
  auto expect = dtype_nbytes(ti.dtype, numel);
  if (!expect)
    fail(component, path_, ": tensor '", ti.name, "' shape ", shape_str(ti.shape), " is not a whole number of ",
         dtype_name(ti.dtype), " blocks (", dtype_info(ti.dtype).block_elems, " values each)");
  if (*expect != ti.nbytes)
    fail(component, path_, ": tensor '", ti.name, "' ", dtype_name(ti.dtype), " ", shape_str(ti.shape), " needs ",
         *expect, " bytes but its data holds ", ti.nbytes);
  index_.emplace(ti.name, infos_.size());
  infos_.push_back(std::move(ti));
}

MappedCheckpointReader::MappedCheckpointReader(std::string path, const char* component)
    : CheckpointReader(std::move(path)), file_(MappedFile::open(path_, component)) {}

HostTensor MappedCheckpointReader::view(const TensorInfo& ti) const {
  return HostTensor::view(ti.name, ti.dtype, ti.shape, file_->data() + ti.offset, ti.nbytes, file_);
}

std::string detect_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  uint8_t head[32] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const uint64_t got = static_cast<uint64_t>(in.gcount());
  in.clear();
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  if (got >= 4 && std::memcmp(head, "GGUF", 4) == 0) return "gguf";
  if (got >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return "torch";
  if (got >= 8 && std::memcmp(head, "\x89HDF\r\n\x1a\n", 8) == 0) return "hdf5";
  if (got >= 4 && std::memcmp(head, "24ka", 4) == 0) return "llama2c";  // uint32 0x616b3432 little-endian
  if (got >= 9) {
    uint64_t n;
    std::memcpy(&n, head, 8);
    if (n >= 2 && n <= size - 8 && head[8] == '{') return "safetensors";
  }
  if (got >= 28 && looks_like_llama2c_legacy(head, size)) return "llama2c";
  return "";
}

std::unique_ptr<CheckpointReader> open_checkpoint(const std::string& path) {
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) {
      // Let MappedFile produce the precise reason (missing, permission, directory).
      MappedFile::open(path, "checkpoint");
    }
  }
  std::string fmt = detect_format(path);
  if (fmt.empty()) {
    // No magic matched: a damaged file with a telling extension gets that reader's precise
    // complaint ("truncated", "header length exceeds the file") instead of "unknown format".
    fmt = format_from_extension(path);
    if (fmt == "llama2c-legacy") fmt = "llama2c";
  }
  if (fmt == "safetensors") return open_safetensors(path);
  if (fmt == "torch") return open_torch_zip(path);
  if (fmt == "hdf5") return open_hdf5(path);
  if (fmt == "llama2c") return open_llama2c(path);
  if (fmt == "gguf") return open_gguf(path);
  fail("checkpoint", path,
       ": unknown format: expected safetensors (u64 header length + JSON), a PyTorch zip (PK), HDF5, GGUF "
       "or a llama2.c checkpoint");
}

std::string format_from_extension(const std::string& path) {
  auto ends = [&](const char* ext) {
    size_t n = std::strlen(ext);
    return path.size() >= n && path.compare(path.size() - n, n, ext) == 0;
  };
  if (ends(".safetensors")) return "safetensors";
  if (ends(".pt") || ends(".pth") || ends(".ckpt") || ends(".state_dict")) return "torch";
  if (ends(".h5") || ends(".hdf5")) return "hdf5";
  if (ends(".bin")) return "llama2c-legacy";
  if (ends(".gguf")) return "gguf";
  return "";
}

void write_checkpoint(const std::string& path, const std::vector<HostTensor>& tensors, const WriteOptions& opts) {
  std::string fmt = opts.format.empty() ? format_from_extension(path) : opts.format;
  if (fmt == "safetensors") return write_safetensors(path, tensors, opts.metadata);
  if (fmt == "torch") return write_torch_zip(path, tensors, opts.metadata);
  if (fmt == "hdf5") return write_hdf5(path, tensors, opts.metadata, false);
  if (fmt == "keras-hdf5") return write_hdf5(path, tensors, opts.metadata, true);
  if (fmt == "llama2c" || fmt == "llama2c-v1") return write_llama2c(path, tensors, opts.metadata, 1);
  if (fmt == "llama2c-legacy") return write_llama2c(path, tensors, opts.metadata, 0);
  if (fmt == "gguf")
    fail("convert", path, ": GGUF output is written by `mcompress export --format gguf:...` (needs model metadata)");
  if (fmt.empty())
    fail("convert", path,
         ": cannot tell the output format from the extension (use .safetensors, .pt, .h5, .bin or --format)");
  fail("convert", path, ": unknown output format '", fmt,
       "' (allowed: safetensors, torch, hdf5, keras-hdf5, llama2c, llama2c-legacy)");
}

}  // namespace mc
