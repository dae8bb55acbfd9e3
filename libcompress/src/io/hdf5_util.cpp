#include "io/hdf5_util.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>

namespace mc::h5 {

namespace {

herr_t take_innermost(unsigned n, const H5E_error2_t* err, void* data) {
  if (n == 0 && err->desc) *static_cast<std::string*>(data) = err->desc;
  return 0;
}

Handle float16_like(unsigned mant_bits, unsigned exp_bits, unsigned bias) {
  Handle t(H5Tcopy(H5T_IEEE_F32LE), H5Tclose);
  // sign at bit 15, exponent right below it, mantissa in the low bits
  if (!t.valid() || H5Tset_fields(t, 15, mant_bits, exp_bits, 0, mant_bits) < 0 || H5Tset_size(t, 2) < 0 ||
      H5Tset_ebias(t, bias) < 0)
    throw Error("[hdf5] cannot build a 16-bit float type: " + innermost_error());
  return t;
}

std::string strip_fixed(const char* p, size_t n, H5T_str_t pad) {
  size_t len = pad == H5T_STR_SPACEPAD ? n : strnlen(p, n);
  if (pad == H5T_STR_SPACEPAD)
    while (len > 0 && p[len - 1] == ' ') --len;
  return std::string(p, len);
}

}  // namespace

std::string innermost_error() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, take_innermost, &msg);
  H5Eclear2(H5E_DEFAULT);
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  return msg;
}

void raise(const std::string& path, const std::string& what) {
  std::string inner = innermost_error();
  if (inner.empty()) fail("hdf5", path, ": ", what);
  fail("hdf5", path, ": ", what, ": ", inner);
}

Handle half_type() { return float16_like(10, 5, 15); }
Handle bfloat16_type() { return float16_like(7, 8, 127); }

namespace {
std::optional<AttrValue> read_attr_value(hid_t attr) {
  Handle type(H5Aget_type(attr), H5Tclose);
  Handle space(H5Aget_space(attr), H5Sclose);
  if (!type.valid() || !space.valid()) return std::nullopt;
  const H5S_class_t sclass = H5Sget_simple_extent_type(space);
  const hssize_t npoints = H5Sget_simple_extent_npoints(space);
  constexpr hssize_t kMaxItems = 1 << 20;  // attributes are small; a larger count is a corrupt header
  if (sclass == H5S_NULL || npoints < 0 || npoints > kMaxItems) return std::nullopt;
  const size_t n = static_cast<size_t>(npoints);
  AttrValue v;
  v.scalar = sclass == H5S_SCALAR;
  const H5T_class_t cls = H5Tget_class(type);
  if (cls == H5T_STRING) {
    v.is_string = true;
    const H5T_cset_t cset = H5Tget_cset(type);
    if (H5Tis_variable_str(type) > 0) {
      Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
      H5Tset_size(mem, H5T_VARIABLE);
      H5Tset_cset(mem, cset);
      std::vector<char*> ptrs(n, nullptr);
      if (H5Aread(attr, mem, ptrs.data()) < 0) return std::nullopt;
      for (char* p : ptrs) v.items.emplace_back(p ? p : "");
      H5Dvlen_reclaim(mem, space, H5P_DEFAULT, ptrs.data());
    } else {
      const size_t size = H5Tget_size(type);
      if (size == 0) return std::nullopt;
      Handle mem(H5Tcopy(type), H5Tclose);
      std::vector<char> buf(n * size);
      if (H5Aread(attr, mem, buf.data()) < 0) return std::nullopt;
      const H5T_str_t pad = H5Tget_strpad(type);
      for (size_t i = 0; i < n; ++i) v.items.push_back(strip_fixed(buf.data() + i * size, size, pad));
    }
  } else if (cls == H5T_INTEGER) {
    if (H5Tget_sign(type) == H5T_SGN_NONE) {
      std::vector<uint64_t> buf(n);
      if (H5Aread(attr, H5T_NATIVE_UINT64, buf.data()) < 0) return std::nullopt;
      for (uint64_t x : buf) v.items.push_back(std::to_string(x));
    } else {
      std::vector<int64_t> buf(n);
      if (H5Aread(attr, H5T_NATIVE_INT64, buf.data()) < 0) return std::nullopt;
      for (int64_t x : buf) v.items.push_back(std::to_string(x));
    }
  } else if (cls == H5T_FLOAT) {
    std::vector<double> buf(n);
    if (H5Aread(attr, H5T_NATIVE_DOUBLE, buf.data()) < 0) return std::nullopt;
    for (double x : buf) v.items.push_back(nlohmann::json(x).dump());  // shortest round trip
  } else if (cls == H5T_ENUM) {
    v.is_string = true;
    Handle mem(H5Tget_native_type(type, H5T_DIR_ASCEND), H5Tclose);
    const size_t size = mem.valid() ? H5Tget_size(mem) : 0;
    if (size == 0 || size > 8) return std::nullopt;
    std::vector<unsigned char> buf(n * size);
    if (H5Aread(attr, mem, buf.data()) < 0) return std::nullopt;
    char name[256];
    for (size_t i = 0; i < n; ++i) {
      if (H5Tenum_nameof(mem, buf.data() + i * size, name, sizeof name) < 0) return std::nullopt;
      v.items.emplace_back(name);
    }
  } else {
    return std::nullopt;
  }
  return v;
}
}  // namespace

std::optional<AttrValue> read_attr(hid_t attr) {
  auto v = read_attr_value(attr);
  H5Eclear2(H5E_DEFAULT);  // a failed read is "no value", not an error to report later
  return v;
}

std::optional<AttrValue> read_attr(hid_t obj, const char* name) {
  if (H5Aexists(obj, name) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return std::nullopt;
  }
  Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) {
    H5Eclear2(H5E_DEFAULT);
    return std::nullopt;
  }
  return read_attr(attr);
}

std::string format_attr(const AttrValue& v) {
  if (v.scalar && v.items.size() == 1) return v.items[0];
  std::string out = "[";
  for (size_t i = 0; i < v.items.size(); ++i) {
    if (i) out += ", ";
    out += v.is_string ? nlohmann::json(v.items[i]).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                       : v.items[i];
  }
  return out + "]";
}

}  // namespace mc::h5
