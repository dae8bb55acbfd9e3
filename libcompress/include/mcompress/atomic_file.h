// Output written to "<path>.tmp-<pid>" in the same directory and renamed over <path> on commit():
// a failed or interrupted run leaves no partial file. Temp files still open when the process gets
// SIGINT/SIGTERM are removed by the handler the CLI installs (install_cleanup_handlers).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace mc {

class AtomicFile {
 public:
  // Throws InputError "[component] path: cannot create output: <reason>".
  AtomicFile(std::string path, const char* component);
  ~AtomicFile();  // removes the temp file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, uint64_t n);
  void write_zeros(uint64_t n);
  void pad_to(uint64_t alignment);  // zero bytes up to the next multiple of alignment
  template <typename T>
  void write_le(T v) { write(&v, sizeof v); }  // little-endian host (x86/arm) assumed
  uint64_t tell() const { return pos_; }
  // Path of the temp file, for libraries that write by name (HDF5). Use either this or write().
  const std::string& temp_path() const { return tmp_; }
  // Seek and overwrite already written bytes (for headers whose size is known only at the end).
  void overwrite(uint64_t offset, const void* data, uint64_t n);
  void commit();  // flush, fsync, rename

 private:
  void close_file();
  std::string path_, tmp_;
  const char* component_;
  std::FILE* f_ = nullptr;
  uint64_t pos_ = 0;
  bool committed_ = false;
  int slot_ = -1;  // index in the signal handler's list of live temp files
};

// Installs SIGINT/SIGTERM handlers that delete live temp files and exit with 128+signal, and a SIGBUS
// handler that names a mapped input truncated while it was read (one line, exit status 2).
void install_cleanup_handlers();

}  // namespace mc
