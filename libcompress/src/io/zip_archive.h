// A minimal zip reader and writer for PyTorch checkpoints: stored (uncompressed) entries only, with
// zip64 support, so tensor data can be viewed in place in an mmap of the archive.
//
// Reader: locates the end-of-central-directory record (and the zip64 one when present), reads the
// central directory and resolves each entry's data offset through its local header. Every offset and
// size is checked against the file size; nothing is allocated beyond what the file's size allows.
// Compressed or encrypted entries are listed but refused when their data is asked for.
//
// Writer: stored entries with CRC32, each entry's data start padded to a 64-byte boundary with a
// local-header extra field (id "FB", filled with 'Z'), as torch.save does; always ends with a zip64
// end-of-central-directory record and locator followed by the classic record.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace mc {
class AtomicFile;
}

namespace mc::zip {

struct Entry {
  std::string name;
  uint16_t method = 0;       // 0 = stored
  uint16_t flags = 0;        // bit 0 = encrypted
  uint32_t crc32 = 0;
  uint64_t size = 0;         // uncompressed size
  uint64_t packed_size = 0;  // compressed size
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;  // absolute offset of the first data byte (resolved from the local header)
};

class Reader {
 public:
  // Parses the archive in [data, data + size). Errors are InputError "[component] path: ...".
  Reader(const uint8_t* data, uint64_t size, const char* component, std::string path);

  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const;  // nullptr when absent
  // The entry's bytes (stored entries only; throws InputError for compressed/encrypted ones).
  const uint8_t* data(const Entry& e) const;

 private:
  [[noreturn]] void error(const std::string& msg) const;
  void read_end_records(uint64_t& cd_offset, uint64_t& cd_size, uint64_t& count) const;
  void read_central_directory(uint64_t cd_offset, uint64_t cd_size, uint64_t count);
  void resolve_local_header(Entry& e) const;

  const uint8_t* data_;
  uint64_t size_;
  const char* component_;
  std::string path_;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

class Writer {
 public:
  static constexpr uint64_t kAlignment = 64;  // torch.save aligns every entry's data to 64 bytes

  Writer(AtomicFile& out, const char* component) : out_(out), component_(component) {}
  // Appends a stored entry whose data start is aligned to kAlignment.
  void add(const std::string& name, const void* data, uint64_t size);
  // Writes the central directory and end records. Call once, after the last add().
  void finish();

 private:
  struct Written {
    std::string name;
    uint32_t crc32;
    uint64_t size;
    uint64_t header_offset;
  };
  AtomicFile& out_;
  const char* component_;
  std::vector<Written> written_;
  bool finished_ = false;
};

// zlib CRC32 over any length (zlib's crc32 takes 32-bit lengths).
uint32_t crc32_of(const void* data, uint64_t size);

}  // namespace mc::zip
