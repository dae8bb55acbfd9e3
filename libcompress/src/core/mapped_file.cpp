#include "mcompress/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>

#include "mcompress/error.h"

namespace mc {

namespace {
// Live mappings, in fixed storage a signal handler can read without locking or allocating: a slot is
// filled before `used` is set and cleared after it is reset.
constexpr int kMaxMaps = 256;
struct MapSlot {
  uintptr_t begin, end;
  uint64_t size;
  char path[1024];
};
MapSlot g_maps[kMaxMaps];
volatile sig_atomic_t g_map_used[kMaxMaps];
std::mutex g_map_mutex;

void register_map(const void* p, uint64_t size, const std::string& path) {
  std::lock_guard<std::mutex> lock(g_map_mutex);
  for (int i = 0; i < kMaxMaps; ++i)
    if (!g_map_used[i]) {
      MapSlot& s = g_maps[i];
      s.begin = reinterpret_cast<uintptr_t>(p), s.end = s.begin + size, s.size = size;
      const size_t n = std::min(path.size(), sizeof s.path - 1);
      std::memcpy(s.path, path.data(), n);
      s.path[n] = 0;
      g_map_used[i] = 1;
      return;
    }
}

void unregister_map(const void* p) {
  std::lock_guard<std::mutex> lock(g_map_mutex);
  for (int i = 0; i < kMaxMaps; ++i)
    if (g_map_used[i] && g_maps[i].begin == reinterpret_cast<uintptr_t>(p)) g_map_used[i] = 0;
}
}  // namespace

bool mapped_file_at(const void* addr, char* path, uint64_t n, uint64_t* size) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  for (int i = 0; i < kMaxMaps; ++i) {
    if (!g_map_used[i] || a < g_maps[i].begin || a >= g_maps[i].end) continue;
    uint64_t k = 0;
    for (; k + 1 < n && g_maps[i].path[k]; ++k) path[k] = g_maps[i].path[k];
    if (n) path[k] = 0;
    if (size) *size = g_maps[i].size;
    return true;
  }
  return false;
}

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path, const char* component) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail<FileError>(component, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail<FileError>(component, path, ": cannot stat: ", std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail<FileError>(component, path, ": is a directory, expected a file");
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<uint64_t>(st.st_size);
  if (m->size_ > 0) {
    // Copy-on-write: tensors viewing the mapping may be modified in place without touching the file.
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail(component, path, ": cannot map: ", std::strerror(e));
    }
    m->data_ = static_cast<const uint8_t*>(p);
    register_map(p, m->size_, path);
  }
  ::close(fd);
  return m;
}

void release_mapped_pages(const void* p, uint64_t n) {
  if (!p || n == 0) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(p) / page * page;
  const auto end = reinterpret_cast<uintptr_t>(p) + n;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_) {
    unregister_map(data_);
    ::munmap(const_cast<uint8_t*>(data_), size_);
  }
}

}  // namespace mc
