// safetensors: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
// then the data section; offsets are relative to it.
#include "mcompress/io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "mcompress/atomic_file.h"
#include "mcompress/byte_cursor.h"
#include "mcompress/error.h"
#include "mcompress/mapped_file.h"

namespace mc {

namespace {

constexpr const char* kComp = "safetensors";
// The format's own limit on the JSON header (the reference implementation refuses larger ones).
constexpr uint64_t kMaxHeader = 100ull << 20;
constexpr const char* kAllowed = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

class SafetensorsReader final : public MappedCheckpointReader {
 public:
  explicit SafetensorsReader(const std::string& path) : MappedCheckpointReader(path, kComp) {
    ByteCursor cur(file_->data(), file_->size(), kComp, path);
    const uint64_t n = cur.read<uint64_t>("the header length");
    if (n > cur.remaining())
      cur.error(str("header length ", n, " exceeds the file (", cur.remaining(), " bytes after the length field)"));
    if (n > kMaxHeader) cur.error(str("header length ", n, " exceeds the format's limit of ", kMaxHeader, " bytes"));
    const char* hp = reinterpret_cast<const char*>(cur.take(n, "the JSON header"));
    data_begin_ = cur.pos();
    parse_header(std::string_view(hp, n), file_->size() - data_begin_);
  }
  std::string format() const override { return kComp; }

 private:
  void parse_header(std::string_view text, uint64_t data_size) {
    // Duplicate keys are legal JSON but ambiguous here: catch them while parsing.
    std::set<std::string> seen;
    std::string dup;
    auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
      if (depth == 1 && ev == nlohmann::json::parse_event_t::key) {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!seen.insert(k).second && dup.empty()) dup = k;
      }
      return true;
    };
    nlohmann::json h;
    try {
      h = nlohmann::json::parse(text.begin(), text.end(), cb);
    } catch (const nlohmann::json::exception& e) {
      fail(kComp, path_, ": header is not valid JSON: ", e.what());
    }
    if (!dup.empty()) fail(kComp, path_, ": duplicate tensor name '", dup, "' in the header");
    if (!h.is_object()) fail(kComp, path_, ": header must be a JSON object");

    struct Range { uint64_t b, e; std::string name; };
    std::vector<Range> ranges;
    std::vector<TensorInfo> infos;
    for (auto& [key, v] : h.items()) {
      if (key == "__metadata__") {
        if (!v.is_object()) fail(kComp, path_, ": __metadata__ must be an object of strings");
        for (auto& [mk, mv] : v.items()) {
          if (!mv.is_string()) fail(kComp, path_, ": __metadata__ value for '", mk, "' must be a string");
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      infos.push_back(parse_entry(key, v, data_size));
      ranges.push_back({infos.back().offset, infos.back().offset + infos.back().nbytes, key});
    }
    // Non-overlapping, file order = data order.
    std::vector<size_t> order(infos.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return ranges[a].b != ranges[b].b ? ranges[a].b < ranges[b].b : ranges[a].e < ranges[b].e;
    });
    for (size_t k = 1; k < order.size(); ++k) {
      const Range& p = ranges[order[k - 1]];
      const Range& c = ranges[order[k]];
      if (c.b < p.e && c.e > c.b)
        fail(kComp, path_, ": tensor '", c.name, "' data [", c.b, ", ", c.e, ") overlaps tensor '", p.name, "' [",
             p.b, ", ", p.e, ")");
    }
    for (size_t i : order) {
      TensorInfo ti = infos[i];
      ti.offset += data_begin_;
      add_tensor(std::move(ti), kComp);
    }
  }

  TensorInfo parse_entry(const std::string& key, const nlohmann::json& v, uint64_t data_size) {
    auto bad = [&](const std::string& what) { fail(kComp, path_, ": tensor '", key, "': ", what); };
    if (!v.is_object()) bad("entry must be an object with dtype, shape, data_offsets");
    auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) bad("missing string field 'dtype'");
    if (sh == v.end() || !sh->is_array()) bad("missing array field 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2) bad("'data_offsets' must be [begin, end]");
    TensorInfo ti;
    ti.name = key;
    auto d = dtype_from_name(dt->get<std::string>());
    if (!d || is_block(*d) || dt->get<std::string>() != dtype_name(*d))
      bad(str("unknown dtype '", dt->get<std::string>(), "' (allowed: ", kAllowed, ")"));
    ti.dtype = *d;
    for (auto& x : *sh) {
      if (!x.is_number_unsigned()) bad("shape entries must be non-negative integers");
      uint64_t dim = x.get<uint64_t>();
      if (dim > (uint64_t(1) << 62)) bad(str("dimension ", dim, " is too large"));
      ti.shape.push_back(static_cast<int64_t>(dim));
    }
    for (auto& x : *off)
      if (!x.is_number_unsigned()) bad("data_offsets must be non-negative integers");
    uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    if (b > e) bad(str("data_offsets [", b, ", ", e, ") end before they begin"));
    if (e > data_size)
      bad(str("data [", b, ", ", e, ") lies beyond the data section (", data_size, " bytes)"));
    ti.offset = b;
    ti.nbytes = e - b;
    return ti;
  }

  uint64_t data_begin_ = 0;
};

}  // namespace

std::unique_ptr<CheckpointReader> open_safetensors(const std::string& path) {
  return std::make_unique<SafetensorsReader>(path);
}

void write_safetensors(const std::string& path, const std::vector<HostTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Largest elements first (stable), as the reference writer does, so every tensor's data stays
  // aligned to its element size when the header is padded to 8 bytes.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_info(tensors[a].dtype).block_bytes > dtype_info(tensors[b].dtype).block_bytes;
  });
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t off = 0;
  for (size_t i : order) {
    const HostTensor& t = tensors[i];
    if (is_block(t.dtype))
      fail(kComp, path, ": tensor '", t.name, "' is ", dtype_name(t.dtype),
           " (a GGUF block type); safetensors holds F64/F32/F16/BF16/integers: convert with --dtype f32 or f16");
    if (!names.insert(t.name).second) fail(kComp, path, ": duplicate tensor name '", t.name, "'");
    if (t.name == "__metadata__") fail(kComp, path, ": a tensor cannot be named __metadata__");
    auto need = dtype_nbytes(t.dtype, t.numel());
    if (!need || *need != t.nbytes)
      fail(kComp, path, ": tensor '", t.name, "' ", dtype_name(t.dtype), " ", shape_str(t.shape), " has ", t.nbytes,
           " bytes of data");
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  AtomicFile out(path, kComp);
  out.write_le<uint64_t>(text.size());
  out.write(text.data(), text.size());
  for (size_t i : order) out.write(tensors[i].data, tensors[i].nbytes);
  out.commit();
}

namespace {

// Checks one tensor as write_safetensors does; returns the spool index of its element size.
int spool_of(const std::string& path, const HostTensor& t) {
  if (is_block(t.dtype))
    fail(kComp, path, ": tensor '", t.name, "' is ", dtype_name(t.dtype),
         " (a GGUF block type); safetensors holds F64/F32/F16/BF16/integers: convert with --dtype f32 or f16");
  if (t.name == "__metadata__") fail(kComp, path, ": a tensor cannot be named __metadata__");
  auto need = dtype_nbytes(t.dtype, t.numel());
  if (!need || *need != t.nbytes)
    fail(kComp, path, ": tensor '", t.name, "' ", dtype_name(t.dtype), " ", shape_str(t.shape), " has ", t.nbytes,
         " bytes of data");
  switch (dtype_info(t.dtype).block_bytes) {
    case 8: return 0;
    case 4: return 1;
    case 2: return 2;
    default: return 3;
  }
}

// An unnamed file in `dir` (O_TMPFILE: gone when closed, even after a crash), else one unlinked at once.
int open_spool(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::string tmpl = dir + "/.mcompress-spool-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    fd = ::mkstemp(buf.data());
    if (fd >= 0) ::unlink(buf.data());
  }
  if (fd < 0) fail(kComp, path, ": cannot create a spool file in ", dir, ": ", std::strerror(errno));
  return fd;
}

}  // namespace

SafetensorsStreamWriter::SafetensorsStreamWriter(std::string path) : path_(std::move(path)) {}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  for (int fd : spool_fd_)
    if (fd >= 0) ::close(fd);
}

bool SafetensorsStreamWriter::contains(const std::string& name) const { return names_.count(name) > 0; }

uint64_t SafetensorsStreamWriter::spooled_bytes() const {
  return spool_size_[0] + spool_size_[1] + spool_size_[2] + spool_size_[3];
}

void SafetensorsStreamWriter::add(const HostTensor& t, const std::function<void(uint64_t, uint64_t)>& written) {
  const int k = spool_of(path_, t);
  if (!names_.insert(t.name).second) fail(kComp, path_, ": duplicate tensor name '", t.name, "'");
  if (spool_fd_[k] < 0) spool_fd_[k] = open_spool(path_);
  uint64_t done = 0;
  while (done < t.nbytes) {
    const ssize_t n = ::pwrite(spool_fd_[k], t.data + done, std::min<uint64_t>(t.nbytes - done, 16u << 20),
                               static_cast<off_t>(spool_size_[k] + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(kComp, path_, ": writing tensor '", t.name, "' to the spool failed: ", std::strerror(errno));
    if (written) written(done, static_cast<uint64_t>(n));
    done += static_cast<uint64_t>(n);
  }
  entries_[k].push_back({t.name, t.dtype, t.shape, spool_size_[k], t.nbytes});
  spool_size_[k] += t.nbytes;
}

void SafetensorsStreamWriter::finish(const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t base = 0;
  for (int k = 0; k < 4; ++k) {
    for (const Entry& e : entries_[k])
      h[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape},
                   {"data_offsets", {base + e.offset, base + e.offset + e.nbytes}}};
    base += spool_size_[k];
  }
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  AtomicFile out(path_, kComp);
  out.write_le<uint64_t>(text.size());
  out.write(text.data(), text.size());
  std::vector<uint8_t> buf(8u << 20);
  for (int k = 0; k < 4; ++k) {
    for (uint64_t off = 0; off < spool_size_[k];) {
      const ssize_t n = ::pread(spool_fd_[k], buf.data(), std::min<uint64_t>(buf.size(), spool_size_[k] - off),
                                static_cast<off_t>(off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(kComp, path_, ": reading the spool back failed: ", std::strerror(errno));
      out.write(buf.data(), static_cast<uint64_t>(n));
      off += static_cast<uint64_t>(n);
    }
  }
  out.commit();
}

}  // namespace mc
