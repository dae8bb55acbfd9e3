// Pruning masks (prune/masks.h).
#include "mcompress/prune/masks.h"

#include <ATen/ATen.h>

#include <cmath>

#include "mcompress/error.h"

namespace mc {

namespace {

constexpr const char* kComp = "prune";

// Stable ranks: positions of the k smallest scores along the last dim (ties: lower index first).
at::Tensor drop_smallest(const at::Tensor& score, int64_t k) {
  at::Tensor keep = at::ones(score.sizes(), score.options().dtype(at::kBool));
  if (k <= 0) return keep;
  // Stable sort keeps ties in column order.
  at::Tensor idx = std::get<1>(score.sort(/*stable=*/true, -1, false)).narrow(-1, 0, k);
  keep.scatter_(-1, idx, false);
  return keep;
}

}  // namespace

void check_nm_pattern(int n, int m, int64_t in, const std::string& layer) {
  if (n < 1 || m < 2 || n >= m) fail(kComp, "N:M pattern ", n, ":", m, " needs 1 <= N < M");
  if (in % m)
    fail(kComp, "layer ", layer, ": ", n, ":", m, " needs the input width (", in, ") to be a multiple of ", m);
}

at::Tensor row_mask(const at::Tensor& score, double sparsity) {
  const int64_t k = static_cast<int64_t>(std::floor(sparsity * double(score.size(1)) + 1e-9));
  return drop_smallest(score.to(at::kFloat), k);
}

at::Tensor nm_mask(const at::Tensor& score, int n, int m, const std::string& layer) {
  check_nm_pattern(n, m, score.size(1), layer);
  const at::Tensor g = score.to(at::kFloat).reshape({score.size(0), score.size(1) / m, m});
  return drop_smallest(g, n).reshape(score.sizes());
}

at::Tensor layer_mask(const at::Tensor& score, double sparsity) {
  const int64_t k = static_cast<int64_t>(std::floor(sparsity * double(score.numel()) + 1e-9));
  return drop_smallest(score.to(at::kFloat).reshape({-1}), k).reshape(score.sizes());
}

}  // namespace mc
