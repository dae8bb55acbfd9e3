// Shared body of the parser fuzz targets: the input becomes a file (an in-memory memfd, reached by
// its /proc path, so the parsers run their real open/mmap path), is opened by one reader, and every
// tensor is loaded and reduced (which dequantizes block types). Malformed input must end in
// mc::InputError; any other exception, crash or sanitizer report is a finding.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"

namespace mcfuzz {

inline const std::string& input_path(const uint8_t* data, size_t size) {
  static int fd = -1;
  static std::string path;
  if (fd < 0) {
    fd = memfd_create("mcompress-fuzz", 0);
    if (fd < 0) std::abort();
    path = "/proc/self/fd/" + std::to_string(fd);
  }
  if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size))) std::abort();
  return path;
}

template <typename Open>
int run(const uint8_t* data, size_t size, Open open) {
  const std::string& p = input_path(data, size);
  try {
    auto reader = open(p);
    for (const auto& ti : reader->tensors()) {
      if (ti.nbytes > (64u << 20)) continue;  // keep iterations fast; bounds were validated on open
      volatile double s = mc::tensor_stats(reader->load(ti.name)).mean;
      (void)s;
    }
    for (const auto& kv : reader->metadata()) (void)kv;
  } catch (const mc::InputError&) {
  }
  return 0;
}

}  // namespace mcfuzz
