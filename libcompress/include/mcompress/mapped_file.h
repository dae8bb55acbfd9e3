// A read-only memory mapping of a whole file, shared by the tensor views that point into it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace mc {

class MappedFile {
 public:
  // Throws InputError "[component] path: cannot open: <reason>".
  static std::shared_ptr<const MappedFile> open(const std::string& path, const char* component);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Drops the pages of [p, p + n) of a mapping from this process's resident set (MADV_DONTNEED): the
// page cache keeps them and a later read faults them back in. For streaming through a mapped checkpoint
// one tensor at a time, so that what was read does not stay counted in the process's memory. Only for
// ranges read and never written (a MAP_PRIVATE mapping's written pages would be lost). Best effort.
void release_mapped_pages(const void* p, uint64_t n);

// Async-signal-safe (for a SIGBUS handler): when addr lies in a live mapping, copies its path into
// path[0, n) (NUL-terminated, cut if longer), its size when it was opened into *size, and returns true.
// A mapped file truncated by someone else while it is read raises SIGBUS on the lost pages; the CLI's
// handler (install_cleanup_handlers) names the file instead of dying with "Bus error".
bool mapped_file_at(const void* addr, char* path, uint64_t n, uint64_t* size);

}  // namespace mc
