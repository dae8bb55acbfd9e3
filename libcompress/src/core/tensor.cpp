#include "mcompress/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "mcompress/error.h"
#include "mcompress/ggml_blocks.h"
#include "mcompress/half.h"

namespace mc {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) fail("tensor", "negative dimension in shape ", shape_str(s));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) fail("tensor", "shape ", shape_str(s), " overflows");
    n *= d;
  }
  return n;
}

HostTensor HostTensor::owned(std::string name, DType dtype, Shape shape, std::vector<uint8_t> bytes) {
  auto buf = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  HostTensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = buf->data();
  t.nbytes = buf->size();
  t.owner = buf;
  return t;
}

HostTensor HostTensor::view(std::string name, DType dtype, Shape shape, const uint8_t* data, uint64_t nbytes,
                            std::shared_ptr<const void> owner) {
  HostTensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = data;
  t.nbytes = nbytes;
  t.owner = std::move(owner);
  return t;
}

HostTensor HostTensor::from_f32(std::string name, Shape shape, const float* values) {
  int64_t n = shape_numel(shape);
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * 4);
  if (n) std::memcpy(bytes.data(), values, bytes.size());
  return owned(std::move(name), DType::F32, std::move(shape), std::move(bytes));
}

void to_f32_range(const HostTensor& t, int64_t begin, int64_t end, float* out) {
  const int64_t n = end - begin;
  if (n <= 0) return;  // empty tensors: data/out may be null, and memcpy(null, ..., 0) is UB
  const uint8_t* p = t.data;
  auto load = [&](auto tag, auto conv) {
    using T = decltype(tag);
    for (int64_t i = 0; i < n; ++i) {
      T v;
      std::memcpy(&v, p + (begin + i) * sizeof(T), sizeof(T));
      out[i] = conv(v);
    }
  };
  auto cast = [](auto v) { return static_cast<float>(v); };
  switch (t.dtype) {
    case DType::F64: load(double{}, cast); break;
    case DType::F32: std::memcpy(out, p + begin * 4, n * 4); break;
    case DType::F16: load(uint16_t{}, [](uint16_t v) { return f16_to_f32(v); }); break;
    case DType::BF16: load(uint16_t{}, [](uint16_t v) { return bf16_to_f32(v); }); break;
    case DType::I64: load(int64_t{}, cast); break;
    case DType::I32: load(int32_t{}, cast); break;
    case DType::I16: load(int16_t{}, cast); break;
    case DType::I8: load(int8_t{}, cast); break;
    case DType::U8: load(uint8_t{}, cast); break;
    case DType::BOOL: load(uint8_t{}, [](uint8_t v) { return v ? 1.0f : 0.0f; }); break;
    case DType::F8_E4M3: load(uint8_t{}, [](uint8_t v) { return e4m3_to_f32(v); }); break;
    default: {
      const DTypeInfo& d = dtype_info(t.dtype);
      if (begin % d.block_elems || n % d.block_elems)
        fail("tensor", t.name, ": range [", begin, ", ", end, ") is not whole ", d.name, " blocks");
      dequantize_blocks(t.dtype, p + begin / d.block_elems * d.block_bytes, n, out);
    }
  }
}

std::vector<float> to_f32(const HostTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  to_f32_range(t, 0, t.numel(), out.data());
  return out;
}

HostTensor convert_dtype(const HostTensor& t, DType target) {
  if (!is_float(target)) fail("convert", "target dtype ", dtype_name(target), " is not a float type (allowed: F64, F32, F16, BF16)");
  if (t.dtype == target || !(is_float(t.dtype) || is_block(t.dtype))) return t;
  const int64_t n = t.numel();
  const int64_t esize = dtype_info(target).block_bytes;
  std::vector<uint8_t> bytes(static_cast<size_t>(n * esize));
  constexpr int64_t kChunk = 1 << 16;  // a multiple of every block size
  std::vector<float> buf(static_cast<size_t>(std::min(n, kChunk)));
  for (int64_t b = 0; b < n; b += kChunk) {
    int64_t e = std::min(n, b + kChunk);
    to_f32_range(t, b, e, buf.data());
    uint8_t* dst = bytes.data() + b * esize;
    for (int64_t i = 0; i < e - b; ++i) {
      switch (target) {
        case DType::F64: { double v = buf[i]; std::memcpy(dst + i * 8, &v, 8); break; }
        case DType::F32: std::memcpy(dst + i * 4, &buf[i], 4); break;
        case DType::F16: { uint16_t v = f32_to_f16(buf[i]); std::memcpy(dst + i * 2, &v, 2); break; }
        default: { uint16_t v = f32_to_bf16(buf[i]); std::memcpy(dst + i * 2, &v, 2); break; }
      }
    }
  }
  return HostTensor::owned(t.name, target, t.shape, std::move(bytes));
}

TensorStats tensor_stats(const HostTensor& t) {
  TensorStats s;
  const int64_t n = t.numel();
  constexpr int64_t kChunk = 1 << 16;
  std::vector<float> buf(static_cast<size_t>(std::min(n, kChunk)));
  double mean = 0, m2 = 0;  // running mean and sum of squared deviations (Chan et al. merge)
  double mn = std::numeric_limits<double>::infinity(), mx = -mn;
  for (int64_t b = 0; b < n; b += kChunk) {
    int64_t e = std::min(n, b + kChunk);
    to_f32_range(t, b, e, buf.data());
    double cs = 0;
    int64_t cn = 0;
    for (int64_t i = 0; i < e - b; ++i) {
      float v = buf[i];
      if (std::isnan(v)) { ++s.nan; continue; }
      if (std::isinf(v)) { ++s.inf; continue; }
      ++cn;
      cs += v;
      if (v < mn) mn = v;
      if (v > mx) mx = v;
    }
    if (cn == 0) continue;
    double cmean = cs / cn, cm2 = 0;
    for (int64_t i = 0; i < e - b; ++i)
      if (std::isfinite(buf[i])) cm2 += (buf[i] - cmean) * (buf[i] - cmean);
    double delta = cmean - mean;
    int64_t tot = s.finite + cn;
    mean += delta * cn / tot;
    m2 += cm2 + delta * delta * double(s.finite) * cn / tot;
    s.finite = tot;
  }
  if (s.finite > 0) {
    s.min = mn;
    s.max = mx;
    s.mean = mean;
    s.std = std::sqrt(m2 / s.finite);
  }
  return s;
}

}  // namespace mc
