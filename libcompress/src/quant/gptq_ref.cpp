// Plain GPTQ reference for tests (gptq.h): the authors' formulation (Hinv = upper Cholesky factor of
// H⁻¹, W_j -= err_i Hinv[i, j]; gptq.cpp uses the equivalent form with the factor of H itself, see
// gptq_prep.h), the weights in their [out, in] layout, one column at a time, every error applied at
// once to all later columns (no blocks, no lazy updates), so each dynamic group is fitted on fully
// updated weights by construction.
#include <ATen/ATen.h>

#include "mcompress/quant/gptq.h"
#include "quant/gptq_prep.h"

namespace mc {

using namespace gptq_detail;

GptqResult gptq_quantize_ref(const at::Tensor& W0, const at::Tensor& H, const GptqOptions& o,
                             const std::string& layer) {
  Prep p = prepare(W0, H, o, layer);
  const at::Tensor Hinv = hinv_of(p);
  at::Tensor W = p.W.clone();  // updated in place
  const int64_t out = W.size(0), in = W.size(1);
  at::Tensor codes = at::empty({in, out}, W.options());  // row j: codes of column j
  double loss = 0;
  for (int64_t j = 0; j < in; ++j) {
    if (p.starts_group(j)) p.grids[size_t(p.group_at(j))] = fit(W.narrow(1, j, p.group_end(j) - j), o.spec, layer);
    const Grid& g = p.grids[size_t(p.group_at(j))];
    at::Tensor w = W.select(1, j).contiguous();
    at::Tensor q = round_column(w, g, o.spec.bits, codes[j]);
    const double d = Hinv[j][j].item<double>();
    at::Tensor err = w.sub(q).div_(d);
    loss += err.mul(err).sum(at::kDouble).item<double>();
    if (j + 1 < in) W.narrow(1, j + 1, in - j - 1).sub_(at::outer(err, Hinv[j].narrow(0, j + 1, in - j - 1)));
  }
  return finish(p, o, codes.t(), loss);
}

}  // namespace mc
