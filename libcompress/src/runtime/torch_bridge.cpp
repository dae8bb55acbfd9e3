#include "mcompress/torch_bridge.h"

#include <ATen/ATen.h>

#include <cstring>

#include "mcompress/error.h"

namespace mc {

c10::ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::BOOL: return at::kBool;
    default: fail("torch", "dtype ", dtype_name(t), " has no torch equivalent (dequantize it first)");
  }
}

DType from_scalar_type(c10::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kBool: return DType::BOOL;
    default: fail("torch", "torch dtype ", c10::toString(t), " cannot be stored");
  }
}

at::Tensor to_torch(const HostTensor& t) {
  if (is_block(t.dtype)) {
    auto v = to_f32(t);
    return at::from_blob(v.data(), t.shape, at::kFloat).clone();
  }
  auto opts = at::TensorOptions().dtype(to_scalar_type(t.dtype)).device(at::kCPU);
  if (t.numel() == 0) return at::empty(t.shape, opts);
  auto owner = t.owner;  // captured by the deleter: the bytes live as long as the tensor
  return at::from_blob(const_cast<uint8_t*>(t.data), t.shape, [owner](void*) mutable { owner.reset(); }, opts);
}

HostTensor from_torch(std::string name, const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU).contiguous();
  DType dt = from_scalar_type(c.scalar_type());
  std::vector<uint8_t> bytes(c.nbytes());
  if (!bytes.empty()) std::memcpy(bytes.data(), c.data_ptr(), bytes.size());
  Shape shape(c.sizes().begin(), c.sizes().end());
  return HostTensor::owned(std::move(name), dt, std::move(shape), std::move(bytes));
}

}  // namespace mc
