// The [rows, groups, group_cols] view the grouped quantizers (imatrix, AWQ's clip search, HQQ) compute on.
#pragma once
#include <ATen/ATen.h>

namespace mc {

// m [rows, in] -> [rows, G, gs], the ragged last group (when G * gs > in) padded with `pad`.
inline at::Tensor grouped_columns(const at::Tensor& m, int64_t G, int64_t gs, double pad = 0.0) {
  const int64_t in = m.size(-1), padded = G * gs;
  at::Tensor p = padded == in ? m : at::constant_pad_nd(m, {0, padded - in}, pad);
  return p.reshape({m.size(0), G, gs});
}

}  // namespace mc
