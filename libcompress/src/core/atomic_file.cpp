#include "mcompress/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>

#include "mcompress/error.h"
#include "mcompress/mapped_file.h"

namespace mc {

namespace {
// Temp files currently being written. A fixed array of paths so the signal handler can unlink them
// without allocating.
constexpr int kMaxLive = 64;
char g_live[kMaxLive][4096];
volatile sig_atomic_t g_live_used[kMaxLive];
std::mutex g_live_mutex;

int register_live(const std::string& p) {
  std::lock_guard<std::mutex> lock(g_live_mutex);
  if (p.size() >= sizeof g_live[0]) return -1;
  for (int i = 0; i < kMaxLive; ++i) {
    if (!g_live_used[i]) {
      std::memcpy(g_live[i], p.c_str(), p.size() + 1);
      g_live_used[i] = 1;
      return i;
    }
  }
  return -1;
}
void unregister_live(int slot) {
  if (slot < 0) return;
  std::lock_guard<std::mutex> lock(g_live_mutex);
  g_live_used[slot] = 0;
}

void remove_live_temps() {
  for (int i = 0; i < kMaxLive; ++i)
    if (g_live_used[i]) ::unlink(g_live[i]);
}

extern "C" void cleanup_on_signal(int sig) {
  remove_live_temps();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Async-signal-safe output for the SIGBUS handler.
void put(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  while (n > 0) {
    const ssize_t w = ::write(2, s, n);
    if (w <= 0) return;
    s += w, n -= static_cast<size_t>(w);
  }
}
void put_number(uint64_t v) {
  char buf[24];
  int i = 23;
  buf[i] = 0;
  do buf[--i] = static_cast<char>('0' + v % 10), v /= 10;
  while (v && i > 0);
  put(buf + i);
}

// A page of a mapped input is gone: the file was truncated (or replaced in place) while it was read.
// One line naming it, the temp files removed, exit status 2 (bad input), as for any input error.
extern "C" void on_bus_error(int sig, siginfo_t* info, void*) {
  static char path[1024];
  uint64_t size = 0;
  if (!info || !mapped_file_at(info->si_addr, path, sizeof path, &size)) {
    std::signal(sig, SIG_DFL);  // not one of our mappings: the usual crash
    std::raise(sig);
    return;
  }
  remove_live_temps();
  struct stat st {};
  put("[io] ");
  put(path);
  put(": the file shrank while it was being read (");
  put_number(size);
  if (::stat(path, &st) == 0) {
    put(" bytes when opened, ");
    put_number(static_cast<uint64_t>(st.st_size));
    put(" now");
  } else {
    put(" bytes when opened, now gone");
  }
  put("): a truncated or rewritten checkpoint; nothing was written\n");
  ::_exit(2);
}

}  // namespace

void install_cleanup_handlers() {
  std::signal(SIGINT, cleanup_on_signal);
  std::signal(SIGTERM, cleanup_on_signal);
  std::signal(SIGHUP, cleanup_on_signal);
  struct sigaction sa {};
  sa.sa_sigaction = on_bus_error;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, nullptr);
}

AtomicFile::AtomicFile(std::string path, const char* component)
    : path_(std::move(path)), component_(component) {
  tmp_ = path_ + ".tmp-" + std::to_string(::getpid());
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) fail<FileError>(component_, path_, ": cannot create output: ", std::strerror(errno));
  slot_ = register_live(tmp_);
  std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    close_file();
    ::unlink(tmp_.c_str());
  }
  unregister_live(slot_);
}

void AtomicFile::close_file() {
  if (f_) {
    std::fclose(f_);
    f_ = nullptr;
  }
}

void AtomicFile::write(const void* data, uint64_t n) {
  if (n == 0) return;
  if (!f_) fail<Error>(component_, path_, ": write after close");
  if (std::fwrite(data, 1, n, f_) != n) fail<FileError>(component_, path_, ": write failed: ", std::strerror(errno));
  pos_ += n;
}

void AtomicFile::write_zeros(uint64_t n) {
  static const char zeros[4096] = {};
  while (n > 0) {
    uint64_t k = n < sizeof zeros ? n : sizeof zeros;
    write(zeros, k);
    n -= k;
  }
}

void AtomicFile::pad_to(uint64_t alignment) {
  if (alignment > 1 && pos_ % alignment) write_zeros(alignment - pos_ % alignment);
}

void AtomicFile::overwrite(uint64_t offset, const void* data, uint64_t n) {
  if (!f_) fail<Error>(component_, path_, ": write after close");
  std::fflush(f_);
  if (std::fseek(f_, static_cast<long>(offset), SEEK_SET) != 0 || std::fwrite(data, 1, n, f_) != n ||
      std::fseek(f_, 0, SEEK_END) != 0)
    fail<FileError>(component_, path_, ": write failed: ", std::strerror(errno));
}

void AtomicFile::commit() {
  if (f_) {
    if (std::fflush(f_) != 0) fail<FileError>(component_, path_, ": write failed: ", std::strerror(errno));
    ::fsync(fileno(f_));
    close_file();
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail(component_, path_, ": cannot rename temp file into place: ", std::strerror(errno));
  committed_ = true;
}

}  // namespace mc
