// Pruning masks (true = kept) from scores >= 0 of a weight's shape [out, in], ties broken towards the
// lower index (stable sorts). Used by magnitude and Wanda (prune/magnitude.h, prune/wanda.h), the
// Python bindings and tests.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace mc {

// Per row: the `sparsity` fraction (rounded down) of each row's smallest scores is dropped (ties: lower
// column first).
at::Tensor row_mask(const at::Tensor& score, double sparsity);
// N:M: in every group of m columns of a row, the n smallest scores are dropped.
at::Tensor nm_mask(const at::Tensor& score, int n, int m, const std::string& layer = "");
// Whole matrix: the floor(sparsity * numel) smallest scores dropped.
at::Tensor layer_mask(const at::Tensor& score, double sparsity);

// InputError unless 1 <= n < m and m divides the input width `in` of `layer`.
void check_nm_pattern(int n, int m, int64_t in, const std::string& layer);

}  // namespace mc
