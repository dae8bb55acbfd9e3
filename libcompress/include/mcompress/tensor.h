// HostTensor: a named, contiguous, row-major, little-endian tensor in host memory. The bytes are
// either owned (a vector) or a view into something kept alive by `owner` (an mmap of a checkpoint),
// so loading from safetensors/torch-zip/GGUF/llama2.c does not copy.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/dtype.h"

namespace mc {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);   // "[500, 784]"
int64_t shape_numel(const Shape& s);     // 1 for a scalar; throws InputError on overflow/negative

struct HostTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::shared_ptr<const void> owner;  // keeps `data` alive
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;

  int64_t numel() const { return shape_numel(shape); }

  static HostTensor owned(std::string name, DType dtype, Shape shape, std::vector<uint8_t> bytes);
  static HostTensor view(std::string name, DType dtype, Shape shape, const uint8_t* data,
                         uint64_t nbytes, std::shared_ptr<const void> owner);
  // Copies float data into an F32 tensor.
  static HostTensor from_f32(std::string name, Shape shape, const float* values);
};

// All values as float32. Scalars convert; ggml block types are dequantized.
std::vector<float> to_f32(const HostTensor& t);
// Values [begin, end) as float32 (end - begin must be whole blocks for block types).
void to_f32_range(const HostTensor& t, int64_t begin, int64_t end, float* out);

// Float-to-float conversion (F64/F32/F16/BF16 and block types as source; F64/F32/F16/BF16 as target).
// Integer tensors are returned unchanged: their values are not weights to re-encode.
HostTensor convert_dtype(const HostTensor& t, DType target);

struct TensorStats {
  double min = 0, max = 0, mean = 0, std = 0;  // over finite values
  int64_t nan = 0, inf = 0, finite = 0;
};
TensorStats tensor_stats(const HostTensor& t);

}  // namespace mc
