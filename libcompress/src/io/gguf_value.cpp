// GGUF key/value payloads: typed scalars, strings (u64 length + bytes) and arrays (u32 element type,
// u64 count, elements), and their one-line rendering for CheckpointReader::metadata().
#include "io/gguf_value.h"

#include <charconv>
#include <limits>

#include "mcompress/error.h"

namespace mc {

namespace {

constexpr uint32_t kTypeCount = 13;
constexpr int kMaxDepth = 3;  // arrays of arrays of arrays; deeper nesting is refused

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::U64: case GgufType::I64: case GgufType::BOOL:
      return true;
    default:
      return false;
  }
}

// Smallest encoding of one value of type t: fixed size for scalars, the length prefix for a string,
// element type + count for an array.
uint64_t min_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

std::string float_str(double v, bool single) {
  char buf[64];
  auto r = single ? std::to_chars(buf, buf + sizeof buf, static_cast<float>(v))
                  : std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string int_str(GgufType t, int64_t v) {
  if (t == GgufType::BOOL) return v ? "true" : "false";
  if (t == GgufType::U64) return std::to_string(static_cast<uint64_t>(v));
  return std::to_string(v);
}

std::string read_string(ByteCursor& c, const std::string& key) {
  const uint64_t n = c.read<uint64_t>("string length");
  if (n > c.remaining())
    c.error(str("key '", key, "': string length ", n, " at offset ", c.pos() - 8, " exceeds the ",
                c.remaining(), " bytes left in the file"));
  return c.read_string(n, "string");
}

// Reads one scalar of type t into integer (i/u) or float (f) form.
void read_scalar(ByteCursor& c, GgufType t, int64_t* i, double* f) {
  switch (t) {
    case GgufType::U8: *i = c.read<uint8_t>("u8 value"); break;
    case GgufType::I8: *i = c.read<int8_t>("i8 value"); break;
    case GgufType::U16: *i = c.read<uint16_t>("u16 value"); break;
    case GgufType::I16: *i = c.read<int16_t>("i16 value"); break;
    case GgufType::U32: *i = c.read<uint32_t>("u32 value"); break;
    case GgufType::I32: *i = c.read<int32_t>("i32 value"); break;
    case GgufType::U64: *i = static_cast<int64_t>(c.read<uint64_t>("u64 value")); break;  // bit pattern
    case GgufType::I64: *i = c.read<int64_t>("i64 value"); break;
    case GgufType::BOOL: *i = c.read<uint8_t>("bool value") != 0; break;
    case GgufType::F32: *f = c.read<float>("f32 value"); break;
    case GgufType::F64: *f = c.read<double>("f64 value"); break;
    default: break;
  }
}

}  // namespace

namespace gguf_detail {

const char* type_name(uint32_t t) {
  static const char* names[kTypeCount] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                          "bool", "string", "array", "u64", "i64", "f64"};
  return t < kTypeCount ? names[t] : "unknown";
}

GgufValue read_value(ByteCursor& c, uint32_t type, const std::string& key, int depth) {
  if (type >= kTypeCount)
    c.error(str("key '", key, "' has unknown value type ", type, " at offset ", c.pos() - 4,
                " (allowed: 0..12)"));
  GgufValue v;
  v.type = static_cast<GgufType>(type);
  if (v.type == GgufType::STRING) {
    v.s = read_string(c, key);
    return v;
  }
  if (v.type != GgufType::ARRAY) {
    read_scalar(c, v.type, &v.i, &v.f);
    if (v.type == GgufType::U64) {
      v.u = static_cast<uint64_t>(v.i);
      v.i = v.u > uint64_t(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                 : static_cast<int64_t>(v.u);
    } else if (is_int_type(v.type) && v.i >= 0) {
      v.u = static_cast<uint64_t>(v.i);
    }
    return v;
  }
  const uint64_t type_pos = c.pos();
  const uint32_t et = c.read<uint32_t>("array element type");
  if (et >= kTypeCount)
    c.error(str("key '", key, "': array has unknown element type ", et, " at offset ", type_pos,
                " (allowed: 0..12)"));
  v.elem_type = static_cast<GgufType>(et);
  const uint64_t n = c.read<uint64_t>("array length");
  const uint64_t each = min_size(v.elem_type);
  if (n > c.remaining() / each)
    c.error(str("key '", key, "': array of ", n, " ", type_name(et), " items at offset ", type_pos,
                " needs at least ", each, " bytes each, but only ", c.remaining(), " bytes are left"));
  if (v.elem_type == GgufType::ARRAY && depth + 1 >= kMaxDepth)
    c.error(str("key '", key, "': arrays nested more than ", kMaxDepth, " levels deep at offset ", type_pos));
  switch (v.elem_type) {
    case GgufType::STRING:
      v.as.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.as.push_back(read_string(c, key));
      break;
    case GgufType::ARRAY:
      v.as.reserve(n);
      for (uint64_t k = 0; k < n; ++k) {
        const uint32_t inner = static_cast<uint32_t>(GgufType::ARRAY);
        v.as.push_back(read_value(c, inner, key, depth + 1).to_string(4));
      }
      break;
    case GgufType::F32: case GgufType::F64:
      v.af.resize(n);
      for (uint64_t k = 0; k < n; ++k) {
        int64_t unused = 0;
        read_scalar(c, v.elem_type, &unused, &v.af[k]);
      }
      break;
    default:
      v.ai.resize(n);
      for (uint64_t k = 0; k < n; ++k) {
        double unused = 0;
        read_scalar(c, v.elem_type, &v.ai[k], &unused);
      }
  }
  return v;
}

}  // namespace gguf_detail

std::string GgufValue::to_string(size_t max_items) const {
  switch (type) {
    case GgufType::STRING: return s;
    case GgufType::F32: return float_str(f, true);
    case GgufType::F64: return float_str(f, false);
    case GgufType::U64: return std::to_string(u);
    case GgufType::ARRAY: break;
    default: return int_str(type, i);
  }
  size_t n = 0;
  if (elem_type == GgufType::STRING || elem_type == GgufType::ARRAY) n = as.size();
  else if (elem_type == GgufType::F32 || elem_type == GgufType::F64) n = af.size();
  else n = ai.size();
  std::string out = "[";
  if (n > max_items) out += std::to_string(n) + " items: ";
  const size_t shown = n < max_items ? n : max_items;
  for (size_t k = 0; k < shown; ++k) {
    if (k) out += ", ";
    if (elem_type == GgufType::STRING || elem_type == GgufType::ARRAY) out += as[k];
    else if (elem_type == GgufType::F32 || elem_type == GgufType::F64) out += float_str(af[k], elem_type == GgufType::F32);
    else out += int_str(elem_type, ai[k]);
  }
  if (n > shown) out += shown ? ", ..." : "...";
  return out + "]";
}

}  // namespace mc
