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

}  // namespace mc
