// Checkpoint I/O: one reader/writer per format behind one interface.
//
// A reader parses and validates the file's header/index on open (names, dtypes, shapes, byte offsets)
// and loads tensor data only when asked, so a model need not fit in RAM; formats that store raw
// bytes (safetensors, torch zip, GGUF, llama2.c) return views into a read-only mmap.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "mcompress/tensor.h"

namespace mc {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t offset = 0;  // absolute byte offset of the data in the file (0 where not meaningful)
  uint64_t nbytes = 0;
};

class CheckpointReader {
 public:
  virtual ~CheckpointReader() = default;
  virtual std::string format() const = 0;  // "safetensors", "torch", "hdf5", "llama2c", "gguf"

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return infos_; }  // in file order
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws InputError if absent
  // Free-form string metadata (safetensors __metadata__, llama2.c header fields, GGUF key/values, ...).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  virtual HostTensor load(const std::string& name) const = 0;
  std::vector<HostTensor> load_all() const;

 protected:
  explicit CheckpointReader(std::string path) : path_(std::move(path)) {}
  // Registers a tensor; rejects duplicate names and shape x dtype != nbytes.
  void add_tensor(TensorInfo info, const char* component);
  std::string path_;
  std::vector<TensorInfo> infos_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

class MappedFile;

// A reader whose tensors lie contiguous in one memory-mapped file: load() returns a view.
class MappedCheckpointReader : public CheckpointReader {
 public:
  HostTensor load(const std::string& name) const override { return view(info(name)); }

 protected:
  MappedCheckpointReader(std::string path, const char* component);  // maps the file
  HostTensor view(const TensorInfo& ti) const;
  std::shared_ptr<const MappedFile> file_;
};

// Detects the format from the file's first bytes (and size, for headerless llama2.c legacy files).
// Returns "" when nothing matches.
std::string detect_format(const std::string& path);
// Opens any supported checkpoint. Throws InputError naming the file when the format is unknown
// or the file is malformed.
std::unique_ptr<CheckpointReader> open_checkpoint(const std::string& path);

// Formats that can be written: "safetensors", "torch", "hdf5", "keras-hdf5", "llama2c", "llama2c-legacy".
std::string format_from_extension(const std::string& path);  // "" when unknown
struct WriteOptions {
  std::string format;  // empty: from the extension
  std::map<std::string, std::string> metadata;
};
// Writes atomically (temp file + rename): a failure leaves no output file.
void write_checkpoint(const std::string& path, const std::vector<HostTensor>& tensors,
                      const WriteOptions& opts = {});

}  // namespace mc
