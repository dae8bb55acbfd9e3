// HostTensor <-> at::Tensor. Checkpoint data become at::Tensors without a copy: the at::Tensor's
// deleter keeps the HostTensor's owner (an mmap, mapped copy-on-write) alive.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "mcompress/tensor.h"

namespace mc {

c10::ScalarType to_scalar_type(DType t);   // throws InputError for ggml block types
DType from_scalar_type(c10::ScalarType t); // throws InputError for types we do not store
// Zero-copy CPU view of t (ggml block types are dequantized into a new F32 tensor).
at::Tensor to_torch(const HostTensor& t);
// Contiguous CPU copy of t as a HostTensor (moved to CPU first if needed).
HostTensor from_torch(std::string name, const at::Tensor& t);

}  // namespace mc
