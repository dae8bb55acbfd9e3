// Shared helpers for the Catch2 tests.
#pragma once
#include <catch2/catch.hpp>

#include <stdlib.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace mctest {

namespace fs = std::filesystem;

// ../shared/data (overridable with MC_SHARED_DATA in the environment).
inline std::string shared_data() {
  if (const char* e = std::getenv("MC_SHARED_DATA")) return e;
  return MC_SHARED_DATA;
}

// Path of a file under ../shared/data, or "" when absent (the caller then SKIPs with a message).
inline std::string shared_file(const std::string& rel) {
  std::string p = shared_data() + "/" + rel;
  return fs::exists(p) ? p : std::string();
}

#define MC_REQUIRE_SHARED(var, rel)                                                        \
  const std::string var = mctest::shared_file(rel);                                         \
  if (var.empty()) {                                                                        \
    WARN("skipped: " << rel << " not found under " << mctest::shared_data());               \
    return;                                                                                 \
  }

// A fresh temporary directory removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mctest-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    path = ::mkdtemp(buf.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline std::vector<uint8_t> read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
inline void write_bytes(const std::string& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Number of files in a directory (to check that failed writes leave nothing behind).
inline size_t count_files(const fs::path& dir) {
  size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++n;
  return n;
}

}  // namespace mctest
