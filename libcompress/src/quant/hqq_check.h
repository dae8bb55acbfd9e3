// The argument checks hqq_quantize and hqq_quantize_ref share (quant/hqq.h).
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "mcompress/quant/hqq.h"

namespace mc {

// InputError for a weight that is not 2-D, a bad or symmetric or per-tensor spec, or bad options.
void hqq_check(const at::Tensor& w, const QuantSpec& spec, const HqqOptions& o, const std::string& layer);

}  // namespace mc
