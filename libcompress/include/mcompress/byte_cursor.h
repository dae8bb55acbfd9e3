// Bounds-checked little-endian reading of an in-memory file image. Every read names what it reads so
// a truncated file produces "[gguf] f.gguf: truncated: need 8 bytes for tensor count at offset 16, file has 20".
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "mcompress/error.h"

namespace mc {

class ByteCursor {
 public:
  ByteCursor(const uint8_t* data, uint64_t size, const char* component, std::string path)
      : data_(data), size_(size), component_(component), path_(std::move(path)) {}

  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t remaining() const { return size_ - pos_; }
  void seek(uint64_t p, const char* what) {
    if (p > size_) fail(component_, path_, ": ", what, " offset ", p, " lies beyond the end of the file (", size_, " bytes)");
    pos_ = p;
  }
  void need(uint64_t n, const char* what) const {
    if (n > size_ - pos_)
      fail(component_, path_, ": truncated: need ", n, " bytes for ", what, " at offset ", pos_, ", file has ", size_);
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  const uint8_t* take(uint64_t n, const char* what) {
    need(n, what);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  std::string read_string(uint64_t n, const char* what) {
    const uint8_t* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  [[noreturn]] void error(const std::string& msg) const { fail(component_, path_, ": ", msg); }
  const char* component() const { return component_; }
  const std::string& path() const { return path_; }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const char* component_;
  std::string path_;
};

}  // namespace mc
