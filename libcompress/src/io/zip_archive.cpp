#include "io/zip_archive.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "mcompress/atomic_file.h"
#include "mcompress/byte_cursor.h"
#include "mcompress/error.h"

namespace mc::zip {

namespace {
constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50;
constexpr uint32_t kEnd64LocatorSig = 0x07064b50;
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kEnd64Size = 56;
constexpr uint64_t kEnd64LocatorSize = 20;
constexpr uint64_t kMaxComment = 0xffff;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kPadExtraId = 0x4246;  // "FB", the id torch.save uses for alignment padding
constexpr uint32_t kSat32 = 0xffffffffu;
constexpr uint16_t kSat16 = 0xffffu;
constexpr uint16_t kDosDate = (1 << 5) | 1;  // 1980-01-01: a valid, reproducible timestamp

template <typename T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace

uint32_t crc32_of(const void* data, uint64_t size) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  auto p = static_cast<const Bytef*>(data);
  while (size > 0) {
    uInt n = static_cast<uInt>(std::min<uint64_t>(size, 1u << 30));
    crc = ::crc32(crc, p, n);
    p += n;
    size -= n;
  }
  return static_cast<uint32_t>(crc);
}

// ---------------------------------------------------------------------------------------------------
// Reader

Reader::Reader(const uint8_t* data, uint64_t size, const char* component, std::string path)
    : data_(data), size_(size), component_(component), path_(std::move(path)) {
  uint64_t cd_offset = 0, cd_size = 0, count = 0;
  read_end_records(cd_offset, cd_size, count);
  read_central_directory(cd_offset, cd_size, count);
  for (Entry& e : entries_) resolve_local_header(e);
}

void Reader::error(const std::string& msg) const { fail(component_, path_, ": ", msg); }

void Reader::read_end_records(uint64_t& cd_offset, uint64_t& cd_size, uint64_t& count) const {
  if (size_ < kEndSize)
    error(str("not a zip archive: ", size_, " bytes is too short for an end-of-central-directory record"));
  // The end record sits in the last 22 + 65535 (comment) bytes; scan backwards for its signature.
  const uint64_t lowest = size_ - kEndSize > kMaxComment ? size_ - kEndSize - kMaxComment : 0;
  uint64_t end_pos = 0;
  bool found = false;
  for (uint64_t p = size_ - kEndSize + 1; p-- > lowest;) {
    if (load_le<uint32_t>(data_ + p) != kEndSig) continue;
    uint16_t comment = load_le<uint16_t>(data_ + p + 20);
    if (p + kEndSize + comment <= size_) {
      end_pos = p;
      found = true;
      break;
    }
  }
  if (!found) error("not a zip archive: no end-of-central-directory record (is the file truncated?)");
  const uint8_t* e = data_ + end_pos;
  const uint16_t disk = load_le<uint16_t>(e + 4), cd_disk = load_le<uint16_t>(e + 6);
  if ((disk != 0 && disk != kSat16) || (cd_disk != 0 && cd_disk != kSat16))
    error("multi-disk zip archives are not supported");
  count = load_le<uint16_t>(e + 10);
  cd_size = load_le<uint32_t>(e + 12);
  cd_offset = load_le<uint32_t>(e + 16);

  // A zip64 locator right before the end record points at the zip64 end record, whose 64-bit
  // fields replace the (possibly saturated) 32-bit ones.
  if (end_pos >= kEnd64LocatorSize && load_le<uint32_t>(data_ + end_pos - kEnd64LocatorSize) == kEnd64LocatorSig) {
    const uint64_t z64 = load_le<uint64_t>(data_ + end_pos - kEnd64LocatorSize + 8);
    if (z64 > end_pos - kEnd64LocatorSize || end_pos - kEnd64LocatorSize - z64 < kEnd64Size)
      error(str("zip64 end record offset ", z64, " does not leave room for the record before its locator at ",
                end_pos - kEnd64LocatorSize));
    const uint8_t* r = data_ + z64;
    if (load_le<uint32_t>(r) != kEnd64Sig) error(str("no zip64 end-of-central-directory record at offset ", z64));
    count = load_le<uint64_t>(r + 32);
    cd_size = load_le<uint64_t>(r + 40);
    cd_offset = load_le<uint64_t>(r + 48);
  } else if (count == kSat16 || cd_size == kSat32 || cd_offset == kSat32) {
    error("end-of-central-directory record has zip64 markers but no zip64 locator");
  }
  if (cd_offset > end_pos || cd_size > end_pos - cd_offset)
    error(str("central directory [", cd_offset, ", +", cd_size, ") lies beyond its end record at offset ", end_pos));
  if (count > cd_size / kCentralHeaderSize)
    error(str("central directory of ", cd_size, " bytes cannot hold the ", count, " entries its end record claims"));
}

void Reader::read_central_directory(uint64_t cd_offset, uint64_t cd_size, uint64_t count) {
  ByteCursor c(data_, cd_offset + cd_size, component_, path_);
  c.seek(cd_offset, "central directory");
  entries_.reserve(static_cast<size_t>(count));
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t at = c.pos();
    const uint8_t* h = c.take(kCentralHeaderSize, "central directory entry");
    if (load_le<uint32_t>(h) != kCentralSig) error(str("bad central directory entry signature at offset ", at));
    Entry e;
    e.flags = load_le<uint16_t>(h + 8);
    e.method = load_le<uint16_t>(h + 10);
    e.crc32 = load_le<uint32_t>(h + 16);
    e.packed_size = load_le<uint32_t>(h + 20);
    e.size = load_le<uint32_t>(h + 24);
    const uint16_t name_len = load_le<uint16_t>(h + 28), extra_len = load_le<uint16_t>(h + 30),
                   comment_len = load_le<uint16_t>(h + 32);
    e.header_offset = load_le<uint32_t>(h + 42);
    e.name = c.read_string(name_len, "central directory entry name");
    const uint8_t* extra = c.take(extra_len, "central directory extra field");
    c.take(comment_len, "central directory entry comment");

    // zip64 extra field: 64-bit values for exactly the 32-bit fields that are saturated, in this order.
    uint64_t x = 0;
    while (x + 4 <= extra_len) {
      const uint16_t id = load_le<uint16_t>(extra + x), len = load_le<uint16_t>(extra + x + 2);
      if (len > extra_len - x - 4) error(str("entry '", e.name, "': extra field overruns its header"));
      if (id == kZip64ExtraId) {
        uint64_t y = x + 4;
        const uint64_t end = y + len;
        auto take64 = [&](uint64_t& field, const char* what) {
          if (end - y < 8) error(str("entry '", e.name, "': zip64 extra field lacks the ", what));
          field = load_le<uint64_t>(extra + y);
          y += 8;
        };
        if (e.size == kSat32) take64(e.size, "uncompressed size");
        if (e.packed_size == kSat32) take64(e.packed_size, "compressed size");
        if (e.header_offset == kSat32) take64(e.header_offset, "local header offset");
      }
      x += 4 + uint64_t(len);
    }
    if (e.name.empty()) error(str("central directory entry ", i, " has an empty name"));
    if (!index_.emplace(e.name, entries_.size()).second) error(str("duplicate entry '", e.name, "'"));
    entries_.push_back(std::move(e));
  }
}

void Reader::resolve_local_header(Entry& e) const {
  if (e.header_offset > size_ || size_ - e.header_offset < kLocalHeaderSize)
    error(str("entry '", e.name, "': local header at offset ", e.header_offset, " lies beyond the end of the file (",
              size_, " bytes)"));
  const uint8_t* h = data_ + e.header_offset;
  if (load_le<uint32_t>(h) != kLocalSig)
    error(str("entry '", e.name, "': no local header signature at offset ", e.header_offset));
  const uint64_t start =
      e.header_offset + kLocalHeaderSize + load_le<uint16_t>(h + 26) + load_le<uint16_t>(h + 28);
  if (start > size_ || e.packed_size > size_ - start)
    error(str("entry '", e.name, "': data [", start, ", +", e.packed_size, ") lies beyond the end of the file (",
              size_, " bytes)"));
  e.data_offset = start;
}

const Entry* Reader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const uint8_t* Reader::data(const Entry& e) const {
  if (e.flags & 1) error(str("entry '", e.name, "' is encrypted"));
  if (e.method != 0)
    error(str("entry '", e.name, "' is compressed (method ", e.method,
              "); only stored entries can be read in place, as torch.save writes them (was the file re-zipped?)"));
  if (e.packed_size != e.size)
    error(str("stored entry '", e.name, "' has compressed size ", e.packed_size, " != size ", e.size));
  return data_ + e.data_offset;
}

// ---------------------------------------------------------------------------------------------------
// Writer

void Writer::add(const std::string& name, const void* data, uint64_t size) {
  if (finished_) fail<Error>(component_, "zip writer: add() after finish()");
  if (name.empty() || name.size() > 0xffff) fail<Error>(component_, "zip entry name of length ", name.size());
  const uint64_t offset = out_.tell();
  const bool zip64 = size >= kSat32;
  const uint64_t z64_len = zip64 ? 4 + 16 : 0;
  // Pad with an "FB" extra field so that the data starts on a kAlignment boundary.
  const uint64_t before_pad = offset + kLocalHeaderSize + name.size() + z64_len + 4;
  const uint64_t pad = (kAlignment - before_pad % kAlignment) % kAlignment;
  const uint32_t crc = crc32_of(data, size);

  out_.write_le<uint32_t>(kLocalSig);
  out_.write_le<uint16_t>(zip64 ? 45 : 20);  // version needed
  out_.write_le<uint16_t>(0);                // flags
  out_.write_le<uint16_t>(0);                // method: stored
  out_.write_le<uint16_t>(0);                // time
  out_.write_le<uint16_t>(kDosDate);
  out_.write_le<uint32_t>(crc);
  out_.write_le<uint32_t>(zip64 ? kSat32 : static_cast<uint32_t>(size));
  out_.write_le<uint32_t>(zip64 ? kSat32 : static_cast<uint32_t>(size));
  out_.write_le<uint16_t>(static_cast<uint16_t>(name.size()));
  out_.write_le<uint16_t>(static_cast<uint16_t>(z64_len + 4 + pad));
  out_.write(name.data(), name.size());
  if (zip64) {
    out_.write_le<uint16_t>(kZip64ExtraId);
    out_.write_le<uint16_t>(16);
    out_.write_le<uint64_t>(size);
    out_.write_le<uint64_t>(size);
  }
  out_.write_le<uint16_t>(kPadExtraId);
  out_.write_le<uint16_t>(static_cast<uint16_t>(pad));
  static const std::string zs(kAlignment, 'Z');
  out_.write(zs.data(), pad);
  out_.write(data, size);
  written_.push_back({name, crc, size, offset});
}

void Writer::finish() {
  if (finished_) return;
  finished_ = true;
  const uint64_t cd_offset = out_.tell();
  for (const Written& w : written_) {
    const bool big_size = w.size >= kSat32, big_offset = w.header_offset >= kSat32;
    const uint16_t z64_len = static_cast<uint16_t>((big_size || big_offset) ? 4 + (big_size ? 16 : 0) + (big_offset ? 8 : 0) : 0);
    out_.write_le<uint32_t>(kCentralSig);
    out_.write_le<uint16_t>(45);                          // version made by
    out_.write_le<uint16_t>(z64_len ? 45 : 20);           // version needed
    out_.write_le<uint16_t>(0);                           // flags
    out_.write_le<uint16_t>(0);                           // method: stored
    out_.write_le<uint16_t>(0);                           // time
    out_.write_le<uint16_t>(kDosDate);
    out_.write_le<uint32_t>(w.crc32);
    out_.write_le<uint32_t>(big_size ? kSat32 : static_cast<uint32_t>(w.size));
    out_.write_le<uint32_t>(big_size ? kSat32 : static_cast<uint32_t>(w.size));
    out_.write_le<uint16_t>(static_cast<uint16_t>(w.name.size()));
    out_.write_le<uint16_t>(z64_len);
    out_.write_le<uint16_t>(0);                           // comment
    out_.write_le<uint16_t>(0);                           // disk
    out_.write_le<uint16_t>(0);                           // internal attributes
    out_.write_le<uint32_t>(0);                           // external attributes
    out_.write_le<uint32_t>(big_offset ? kSat32 : static_cast<uint32_t>(w.header_offset));
    out_.write(w.name.data(), w.name.size());
    if (z64_len) {
      out_.write_le<uint16_t>(kZip64ExtraId);
      out_.write_le<uint16_t>(static_cast<uint16_t>(z64_len - 4));
      if (big_size) {
        out_.write_le<uint64_t>(w.size);
        out_.write_le<uint64_t>(w.size);
      }
      if (big_offset) out_.write_le<uint64_t>(w.header_offset);
    }
  }
  const uint64_t cd_size = out_.tell() - cd_offset;
  const uint64_t count = written_.size();

  const uint64_t z64_offset = out_.tell();
  out_.write_le<uint32_t>(kEnd64Sig);
  out_.write_le<uint64_t>(kEnd64Size - 12);  // size of the rest of the record
  out_.write_le<uint16_t>(45);
  out_.write_le<uint16_t>(45);
  out_.write_le<uint32_t>(0);  // this disk
  out_.write_le<uint32_t>(0);  // disk with the central directory
  out_.write_le<uint64_t>(count);
  out_.write_le<uint64_t>(count);
  out_.write_le<uint64_t>(cd_size);
  out_.write_le<uint64_t>(cd_offset);

  out_.write_le<uint32_t>(kEnd64LocatorSig);
  out_.write_le<uint32_t>(0);
  out_.write_le<uint64_t>(z64_offset);
  out_.write_le<uint32_t>(1);  // total disks

  out_.write_le<uint32_t>(kEndSig);
  out_.write_le<uint16_t>(0);
  out_.write_le<uint16_t>(0);
  const uint16_t count16 = count >= kSat16 ? kSat16 : static_cast<uint16_t>(count);
  out_.write_le<uint16_t>(count16);
  out_.write_le<uint16_t>(count16);
  out_.write_le<uint32_t>(cd_size >= kSat32 ? kSat32 : static_cast<uint32_t>(cd_size));
  out_.write_le<uint32_t>(cd_offset >= kSat32 ? kSat32 : static_cast<uint32_t>(cd_offset));
  out_.write_le<uint16_t>(0);  // comment length
}

}  // namespace mc::zip
