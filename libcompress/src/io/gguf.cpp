// GGUF v2/v3 reader (little-endian files). Layout:
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count | kv_count x (string key, u32 type, value)
//   | tensor_count x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
//   | padding to general.alignment (default 32) | data section (tensor offsets are relative to it).
// Every count is checked against the bytes left before anything is allocated, every tensor against
// the file size, its alignment and its neighbours.
#include "mcompress/io/gguf.h"

#include <algorithm>
#include <optional>
#include <set>

#include "io/gguf_value.h"
#include "mcompress/byte_cursor.h"
#include "mcompress/error.h"
#include "mcompress/mapped_file.h"

namespace mc {

namespace {

constexpr const char* kComp = "gguf";
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// Smallest encodings, used to bound counts by the bytes left in the file.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;          // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims 0, type, offset

struct GgmlType {
  uint32_t id;
  const char* name;
  std::optional<DType> dtype;  // nullopt: known to ggml but not supported here
};

const GgmlType kGgmlTypes[] = {
    {0, "F32", DType::F32},      {1, "F16", DType::F16},       {2, "Q4_0", DType::Q4_0},
    {3, "Q4_1", DType::Q4_1},    {4, "Q4_2 (removed from ggml)", {}}, {5, "Q4_3 (removed from ggml)", {}},
    {6, "Q5_0", DType::Q5_0},    {7, "Q5_1", DType::Q5_1},     {8, "Q8_0", DType::Q8_0},
    {9, "Q8_1", {}},             {10, "Q2_K", DType::Q2_K},    {11, "Q3_K", DType::Q3_K},
    {12, "Q4_K", DType::Q4_K},   {13, "Q5_K", DType::Q5_K},    {14, "Q6_K", DType::Q6_K},
    {15, "Q8_K", {}},            {16, "IQ2_XXS", {}},          {17, "IQ2_XS", {}},
    {18, "IQ3_XXS", {}},         {19, "IQ1_S", {}},            {20, "IQ4_NL", DType::IQ4_NL},
    {21, "IQ3_S", {}},           {22, "IQ2_S", {}},            {23, "IQ4_XS", DType::IQ4_XS},
    {24, "I8", DType::I8},       {25, "I16", DType::I16},      {26, "I32", DType::I32},
    {27, "I64", DType::I64},     {28, "F64", DType::F64},      {29, "IQ1_M", {}},
    {30, "BF16", DType::BF16},   {31, "Q4_0_4_4 (removed)", {}}, {32, "Q4_0_4_8 (removed)", {}},
    {33, "Q4_0_8_8 (removed)", {}}, {34, "TQ1_0", {}},         {35, "TQ2_0", {}},
    {36, "IQ4_NL_4_4 (removed)", {}}, {37, "IQ4_NL_4_8 (removed)", {}}, {38, "IQ4_NL_8_8 (removed)", {}},
    {39, "MXFP4", DType::MXFP4},           {40, "NVFP4", {}},            {41, "Q1_0", {}},
    {42, "Q2_0", {}},
};
constexpr const char* kSupported =
    "F32, F16, BF16, F64, I8, I16, I32, I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, MXFP4, Q2_K, Q3_K, IQ4_NL, IQ4_XS";

DType ggml_dtype(ByteCursor& c, const std::string& tensor, uint32_t id, uint64_t at) {
  for (const auto& t : kGgmlTypes) {
    if (t.id != id) continue;
    if (!t.dtype)
      c.error(str("tensor '", tensor, "' has ggml type ", t.name, " (id ", id, ", at offset ", at,
                  "), which is not supported (supported: ", kSupported, ")"));
    return *t.dtype;
  }
  c.error(str("tensor '", tensor, "' has unknown ggml type id ", id, " at offset ", at, " (supported: ",
              kSupported, ")"));
}

}  // namespace

class GgufReader : public MappedCheckpointReader {
 public:
  explicit GgufReader(const std::string& path) : MappedCheckpointReader(path, kComp) { parse(); }
  std::string format() const override { return "gguf"; }

  std::vector<std::pair<std::string, GgufValue>> kv_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;

 private:
  void parse();
  void read_kvs(ByteCursor& c, uint64_t count);
  void read_alignment(ByteCursor& c, const GgufValue& v);
};

void GgufReader::read_alignment(ByteCursor& c, const GgufValue& v) {
  const bool integer = v.type == GgufType::U8 || v.type == GgufType::U16 || v.type == GgufType::U32 ||
                       v.type == GgufType::U64 || v.type == GgufType::I8 || v.type == GgufType::I16 ||
                       v.type == GgufType::I32 || v.type == GgufType::I64;
  if (!integer)
    c.error(str("general.alignment has type ", gguf_detail::type_name(static_cast<uint32_t>(v.type)),
                ", expected an unsigned integer (u32)"));
  const uint64_t a = v.type == GgufType::U64 ? v.u : static_cast<uint64_t>(v.i);
  if ((v.type != GgufType::U64 && v.i <= 0) || a == 0 || (a & (a - 1)) != 0)
    c.error(str("general.alignment ", v.to_string(), " is not a power of two"));
  alignment_ = a;
}

void GgufReader::read_kvs(ByteCursor& c, uint64_t count) {
  if (count > c.remaining() / kMinKvBytes)
    c.error(str("kv count ", count, " cannot fit in the ", c.remaining(), " bytes left after the header (each ",
                "key/value needs at least ", kMinKvBytes, ")"));
  kv_.reserve(count);
  std::set<std::string> seen;
  for (uint64_t k = 0; k < count; ++k) {
    const uint64_t at = c.pos();
    const uint64_t klen = c.read<uint64_t>("key length");
    if (klen > c.remaining())
      c.error(str("key #", k, " at offset ", at, ": key length ", klen, " exceeds the ", c.remaining(),
                  " bytes left in the file"));
    std::string key = c.read_string(klen, "key");
    if (key.empty()) c.error(str("key #", k, " at offset ", at, " is empty"));
    if (!seen.insert(key).second) c.error(str("duplicate key '", key, "' at offset ", at));
    const uint32_t type = c.read<uint32_t>("value type");
    GgufValue v = gguf_detail::read_value(c, type, key);
    if (key == "general.alignment") read_alignment(c, v);
    metadata_[key] = v.to_string(8);
    kv_.emplace_back(std::move(key), std::move(v));
  }
}

void GgufReader::parse() {
  ByteCursor c(file_->data(), file_->size(), kComp, path_);
  const uint8_t* magic = c.take(4, "magic");
  if (std::string(reinterpret_cast<const char*>(magic), 4) != "GGUF") {
    std::string shown;
    for (int k = 0; k < 4; ++k) shown += (magic[k] >= 32 && magic[k] < 127) ? char(magic[k]) : '.';
    c.error(str("not a GGUF file: magic '", shown, "', expected 'GGUF'"));
  }
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) c.error("GGUF version 1 (32-bit counts) is not supported (allowed: 2, 3)");
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xFFFFu) == 0 && (version_ >> 24) >= 1 && (version_ >> 24) <= 3)
      c.error(str("big-endian GGUF (version ", version_ >> 24, ") is not supported"));
    c.error(str("unsupported GGUF version ", version_, " (allowed: 2, 3)"));
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("kv count");
  read_kvs(c, n_kv);
  metadata_["gguf.version"] = std::to_string(version_);

  if (n_tensors > c.remaining() / kMinTensorInfoBytes)
    c.error(str("tensor count ", n_tensors, " cannot fit in the ", c.remaining(), " bytes left (each tensor ",
                "info needs at least ", kMinTensorInfoBytes, ")"));
  struct Raw {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t offset, nbytes;
  };
  std::vector<Raw> raw;
  raw.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    const uint64_t at = c.pos();
    const uint64_t nlen = c.read<uint64_t>("tensor name length");
    if (nlen > c.remaining())
      c.error(str("tensor #", k, " at offset ", at, ": name length ", nlen, " exceeds the ", c.remaining(),
                  " bytes left in the file"));
    Raw r;
    r.name = c.read_string(nlen, "tensor name");
    if (r.name.empty()) c.error(str("tensor #", k, " at offset ", at, " has an empty name"));
    const uint32_t n_dims = c.read<uint32_t>("n_dims");
    if (n_dims > kMaxDims)
      c.error(str("tensor '", r.name, "' has ", n_dims, " dims (at offset ", c.pos() - 4, "), at most ", kMaxDims,
                  " allowed"));
    uint64_t ne[kMaxDims] = {1, 1, 1, 1};
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ne[d] = c.read<uint64_t>("tensor dimension");
      if (ne[d] > uint64_t(INT64_MAX) || (ne[d] != 0 && numel > uint64_t(INT64_MAX) / ne[d]))
        c.error(str("tensor '", r.name, "': dimension ne[", d, "] = ", ne[d], " makes the element count overflow"));
      numel *= ne[d];
    }
    const uint64_t type_at = c.pos();
    r.dtype = ggml_dtype(c, r.name, c.read<uint32_t>("ggml type"), type_at);
    const DTypeInfo& di = dtype_info(r.dtype);
    if (n_dims == 0 && di.is_block)
      c.error(str("tensor '", r.name, "' of block type ", di.name, " has no dimensions"));
    if (ne[0] % uint64_t(di.block_elems) != 0)
      c.error(str("tensor '", r.name, "': row length ne[0] = ", ne[0], " is not a multiple of the ", di.name,
                  " block size ", di.block_elems));
    auto nb = dtype_nbytes(r.dtype, static_cast<int64_t>(numel));
    if (!nb) c.error(str("tensor '", r.name, "': ", numel, " ", di.name, " values overflow the byte size"));
    r.nbytes = *nb;
    r.offset = c.read<uint64_t>("tensor offset");
    for (uint32_t d = n_dims; d-- > 0;) r.shape.push_back(static_cast<int64_t>(ne[d]));
    raw.push_back(std::move(r));
  }

  // Data section: after the tensor infos, aligned.
  const uint64_t end_infos = c.pos();
  const uint64_t size = file_->size();
  const uint64_t pad = (alignment_ - end_infos % alignment_) % alignment_;
  const uint64_t data_start = end_infos + pad;  // end_infos <= size and pad < alignment: no overflow
  if (data_start > size && !raw.empty())
    c.error(str("data section starts at offset ", data_start, " (tensor infos end at ", end_infos, ", aligned to ",
                alignment_, ") beyond the end of the file (", size, " bytes)"));
  const uint64_t data_size = data_start > size ? 0 : size - data_start;

  for (const Raw& r : raw) {
    if (r.offset % alignment_ != 0)
      c.error(str("tensor '", r.name, "' data offset ", r.offset, " is not a multiple of the alignment ", alignment_));
    if (r.offset > data_size || r.nbytes > data_size - r.offset)
      c.error(str("tensor '", r.name, "' data [", r.offset, ", ", r.offset, " + ", r.nbytes,
                  ") lies beyond the data section (", data_size, " bytes from offset ", data_start, ")"));
  }
  std::vector<size_t> order(raw.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return raw[a].offset < raw[b].offset; });
  const Raw* last = nullptr;  // the non-empty tensor whose data ends furthest so far
  for (size_t k : order) {
    const Raw& cur = raw[k];
    if (cur.nbytes == 0) continue;
    if (last && last->offset + last->nbytes > cur.offset)
      c.error(str("tensor '", cur.name, "' data [", cur.offset, ", ", cur.offset + cur.nbytes, ") overlaps tensor '",
                  last->name, "' data [", last->offset, ", ", last->offset + last->nbytes, ")"));
    if (!last || cur.offset + cur.nbytes > last->offset + last->nbytes) last = &cur;
  }
  for (Raw& r : raw) {
    TensorInfo ti;
    ti.name = std::move(r.name);
    ti.dtype = r.dtype;
    ti.shape = std::move(r.shape);
    ti.offset = data_start + r.offset;
    ti.nbytes = r.nbytes;
    add_tensor(std::move(ti), kComp);
  }
}

std::unique_ptr<CheckpointReader> open_gguf(const std::string& path) { return std::make_unique<GgufReader>(path); }

namespace {
const GgufReader& as_gguf(const CheckpointReader& r) {
  auto* g = dynamic_cast<const GgufReader*>(&r);
  if (!g) fail(kComp, r.path(), ": not opened as GGUF (format '", r.format(), "')");
  return *g;
}
}  // namespace

const std::vector<std::pair<std::string, GgufValue>>& gguf_kv(const CheckpointReader& r) { return as_gguf(r).kv_; }
uint32_t gguf_version(const CheckpointReader& r) { return as_gguf(r).version_; }
uint64_t gguf_alignment(const CheckpointReader& r) { return as_gguf(r).alignment_; }

}  // namespace mc
