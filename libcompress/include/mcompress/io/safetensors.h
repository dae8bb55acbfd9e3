#pragma once
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {
// Reads by mmap without copying. Validates: header length within the file, JSON well formed,
// dtype known, shape x dtype == byte range, ranges inside the data section, no overlaps, no
// duplicate names.
std::unique_ptr<CheckpointReader> open_safetensors(const std::string& path);
// Block-quantized (GGUF) tensors cannot be stored: throws InputError.
void write_safetensors(const std::string& path, const std::vector<HostTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

// Writes a safetensors file whose tensors arrive one at a time and need not stay in memory (a model
// quantized block by block): add() copies each tensor's bytes to an anonymous spool file in the output
// directory (one per element size), finish() writes the header and then the spools, largest elements
// first as write_safetensors does (every tensor aligned, no holes), through AtomicFile. Nothing is
// left behind when finish() is never reached. The same checks as write_safetensors.
class SafetensorsStreamWriter {
 public:
  explicit SafetensorsStreamWriter(std::string path);
  ~SafetensorsStreamWriter();
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;

  // written(offset, n): called after each piece of t's bytes [offset, offset + n) went to the spool (pieces
  // of at most 16 MiB), e.g. to release the mapped pages just read (release_mapped_pages).
  void add(const HostTensor& t, const std::function<void(uint64_t offset, uint64_t n)>& written = {});
  bool contains(const std::string& name) const;
  uint64_t spooled_bytes() const;
  void finish(const std::map<std::string, std::string>& metadata);

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t offset, nbytes;  // inside its spool
  };
  std::string path_;
  int spool_fd_[4] = {-1, -1, -1, -1};  // element sizes 8, 4, 2, 1
  uint64_t spool_size_[4] = {0, 0, 0, 0};
  std::vector<Entry> entries_[4];
  std::set<std::string> names_;
};
}  // namespace mc
