// GGUF v3 writer (little-endian):
//   "GGUF" | u32 3 | u64 tensor_count | u64 kv_count | kv_count x (string key, u32 type, value)
//   | tensor_count x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
//   | zero padding to general.alignment | data (each tensor at offset, a multiple of the alignment,
//   relative to the start of the data section; zero padding after each tensor, as ggml's gguf writer does).
// Strings are u64 length + bytes; arrays u32 element type, u64 count, elements.
#include <cstring>
#include <set>

#include "export/free_space.h"
#include "mcompress/atomic_file.h"
#include "mcompress/error.h"
#include "mcompress/export/gguf.h"

namespace mc {

namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kAlignment = 32;

struct TypeId {
  DType dtype;
  uint32_t id;
};
// ggml.h enum ggml_type.
constexpr TypeId kTypeIds[] = {
    {DType::F32, 0},   {DType::F16, 1},   {DType::Q4_0, 2},  {DType::Q4_1, 3},  {DType::Q5_0, 6},
    {DType::Q5_1, 7},  {DType::Q8_0, 8},  {DType::Q4_K, 12}, {DType::Q5_K, 13}, {DType::Q6_K, 14},
    {DType::I8, 24},   {DType::I16, 25},  {DType::I32, 26},  {DType::I64, 27},  {DType::F64, 28},
    {DType::BF16, 30}, {DType::MXFP4, 39}, {DType::Q2_K, 10}, {DType::Q3_K, 11}, {DType::IQ4_NL, 20},
    {DType::IQ4_XS, 23},
};

void put_string(AtomicFile& f, const std::string& s) {
  f.write_le<uint64_t>(s.size());
  f.write(s.data(), s.size());
}

void put_int(AtomicFile& f, GgufType t, int64_t v, const std::string& key) {
  switch (t) {
    case GgufType::U8: f.write_le<uint8_t>(uint8_t(v)); break;
    case GgufType::I8: f.write_le<int8_t>(int8_t(v)); break;
    case GgufType::U16: f.write_le<uint16_t>(uint16_t(v)); break;
    case GgufType::I16: f.write_le<int16_t>(int16_t(v)); break;
    case GgufType::U32: f.write_le<uint32_t>(uint32_t(v)); break;
    case GgufType::I32: f.write_le<int32_t>(int32_t(v)); break;
    case GgufType::U64: f.write_le<uint64_t>(uint64_t(v)); break;
    case GgufType::I64: f.write_le<int64_t>(v); break;
    case GgufType::BOOL: f.write_le<uint8_t>(v ? 1 : 0); break;
    default: fail("gguf", "key '", key, "': type ", uint32_t(t), " is not an integer type");
  }
}

void put_float(AtomicFile& f, GgufType t, double v) {
  if (t == GgufType::F32) f.write_le<float>(float(v));
  else f.write_le<double>(v);
}

bool is_float_type(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }

void put_value(AtomicFile& f, const std::string& key, const GgufValue& v) {
  f.write_le<uint32_t>(uint32_t(v.type));
  if (v.type == GgufType::STRING) return put_string(f, v.s);
  if (is_float_type(v.type)) return put_float(f, v.type, v.f);
  if (v.type == GgufType::U64) return put_int(f, v.type, int64_t(v.u), key);
  if (v.type != GgufType::ARRAY) return put_int(f, v.type, v.i, key);
  f.write_le<uint32_t>(uint32_t(v.elem_type));
  if (v.elem_type == GgufType::STRING) {
    f.write_le<uint64_t>(v.as.size());
    for (const auto& s : v.as) put_string(f, s);
  } else if (is_float_type(v.elem_type)) {
    f.write_le<uint64_t>(v.af.size());
    for (double x : v.af) put_float(f, v.elem_type, x);
  } else if (v.elem_type == GgufType::ARRAY) {
    fail("gguf", "key '", key, "': arrays of arrays are not written");
  } else {
    f.write_le<uint64_t>(v.ai.size());
    for (int64_t x : v.ai) put_int(f, v.elem_type, x, key);
  }
}

uint64_t pad(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

uint64_t scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    default: return 8;  // U64, I64, F64
  }
}

// Bytes put_value writes for v.
uint64_t value_bytes(const GgufValue& v) {
  if (v.type == GgufType::STRING) return 4 + 8 + v.s.size();
  if (v.type != GgufType::ARRAY) return 4 + scalar_bytes(v.type);
  uint64_t n = 4 + 4 + 8;
  if (v.elem_type == GgufType::STRING)
    for (const auto& s : v.as) n += 8 + s.size();
  else
    n += (is_float_type(v.elem_type) ? v.af.size() : v.ai.size()) * scalar_bytes(v.elem_type);
  return n;
}

}  // namespace

uint32_t ggml_type_id(DType t) {
  for (const auto& e : kTypeIds)
    if (e.dtype == t) return e.id;
  fail("gguf", "type ", dtype_name(t), " cannot be stored in GGUF");
}

GgufValue gguf_scalar(GgufType t, double v) {
  GgufValue g;
  g.type = t;
  if (is_float_type(t)) g.f = v;
  else if (t == GgufType::U64) g.u = uint64_t(v), g.i = int64_t(v);
  else g.i = int64_t(v), g.u = uint64_t(g.i);
  return g;
}
GgufValue gguf_u32(uint32_t v) { return gguf_scalar(GgufType::U32, v); }
GgufValue gguf_i32(int32_t v) { return gguf_scalar(GgufType::I32, v); }
GgufValue gguf_u64(uint64_t v) {
  GgufValue g;
  g.type = GgufType::U64, g.u = v, g.i = int64_t(v);
  return g;
}
GgufValue gguf_f32(float v) { return gguf_scalar(GgufType::F32, v); }
GgufValue gguf_bool(bool v) { return gguf_scalar(GgufType::BOOL, v ? 1 : 0); }
GgufValue gguf_string(std::string v) {
  GgufValue g;
  g.type = GgufType::STRING, g.s = std::move(v);
  return g;
}
GgufValue gguf_string_array(std::vector<std::string> v) {
  GgufValue g;
  g.type = GgufType::ARRAY, g.elem_type = GgufType::STRING, g.as = std::move(v);
  return g;
}
GgufValue gguf_f32_array(std::vector<double> v) {
  GgufValue g;
  g.type = GgufType::ARRAY, g.elem_type = GgufType::F32, g.af = std::move(v);
  return g;
}
GgufValue gguf_int_array(GgufType elem, std::vector<int64_t> v) {
  GgufValue g;
  g.type = GgufType::ARRAY, g.elem_type = elem, g.ai = std::move(v);
  return g;
}

void write_gguf(const std::string& path, const std::vector<GgufKV>& kv_in, const std::vector<GgufTensorSource>& tensors) {
  std::vector<GgufKV> kv = kv_in;
  std::set<std::string> keys;
  for (const auto& [k, v] : kv) {
    if (k.empty()) fail("gguf", path, ": empty key");
    if (!keys.insert(k).second) fail("gguf", path, ": duplicate key '", k, "'");
    if (k == "general.alignment" && (v.type != GgufType::U32 || v.i != int64_t(kAlignment)))
      fail("gguf", path, ": general.alignment must be u32 ", kAlignment, " (the only alignment written)");
  }
  if (!keys.count("general.alignment")) kv.emplace_back("general.alignment", gguf_u32(kAlignment));

  // Tensor infos: offsets and sizes are known before any data is produced.
  std::set<std::string> names;
  std::vector<uint64_t> offsets, sizes;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || !names.insert(t.name).second)
      fail("gguf", path, ": tensor name '", t.name, "' is empty or repeated");
    if (t.shape.empty() || t.shape.size() > 4)
      fail("gguf", path, ": tensor '", t.name, "' has ", t.shape.size(), " dims (1..4 allowed)");
    ggml_type_id(t.dtype);
    const DTypeInfo& di = dtype_info(t.dtype);
    if (t.shape.back() % di.block_elems != 0)
      fail("gguf", path, ": tensor '", t.name, "' row length ", t.shape.back(), " is not a multiple of the ", di.name,
           " block size ", di.block_elems);
    auto nb = dtype_nbytes(t.dtype, shape_numel(t.shape));
    if (!nb) fail("gguf", path, ": tensor '", t.name, "' ", shape_str(t.shape), " overflows");
    offsets.push_back(off);
    sizes.push_back(*nb);
    off = pad(off + *nb);
  }
  // The file's size, known before anything is written: refused up front when the disk cannot hold it.
  uint64_t header = 4 + 4 + 8 + 8;
  for (const auto& [k, v] : kv) header += 8 + k.size() + value_bytes(v);
  for (const auto& t : tensors) header += 8 + t.name.size() + 4 + 8 * t.shape.size() + 4 + 8;
  const uint64_t file_bytes = pad(header) + off;
  require_free_space(path, file_bytes, "gguf");

  AtomicFile f(path, "gguf");
  f.write("GGUF", 4);
  f.write_le<uint32_t>(kVersion);
  f.write_le<uint64_t>(tensors.size());
  f.write_le<uint64_t>(kv.size());
  for (const auto& [k, v] : kv) {
    put_string(f, k);
    put_value(f, k, v);
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    put_string(f, t.name);
    f.write_le<uint32_t>(uint32_t(t.shape.size()));
    for (size_t d = t.shape.size(); d-- > 0;) f.write_le<uint64_t>(uint64_t(t.shape[d]));
    f.write_le<uint32_t>(ggml_type_id(t.dtype));
    f.write_le<uint64_t>(offsets[i]);
  }
  f.pad_to(kAlignment);
  const uint64_t data_start = f.tell();
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::vector<uint8_t> bytes = tensors[i].bytes();
    if (bytes.size() != sizes[i])
      fail<Error>("gguf", path, ": tensor '", tensors[i].name, "' produced ", bytes.size(), " bytes, expected ", sizes[i]);
    if (f.tell() - data_start != offsets[i]) fail<Error>("gguf", path, ": internal offset mismatch");
    f.write(bytes.data(), bytes.size());
    f.pad_to(kAlignment);
  }
  if (f.tell() != file_bytes) fail<Error>("gguf", path, ": wrote ", f.tell(), " bytes, expected ", file_bytes);
  f.commit();
}

void write_gguf(const std::string& path, const std::vector<GgufKV>& kv, const std::vector<HostTensor>& tensors) {
  std::vector<GgufTensorSource> src;
  for (const auto& t : tensors) {
    const HostTensor* p = &t;
    src.push_back({t.name, t.dtype, t.shape, [p] { return std::vector<uint8_t>(p->data, p->data + p->nbytes); }});
  }
  write_gguf(path, kv, src);
}

}  // namespace mc
