// EoRA's eigenspace low-rank fit (eora.h): one symmetric eigendecomposition of H and one thin SVD.
#include "mcompress/quant/eora.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "mcompress/error.h"

namespace mc {

LowRankAdapter eora_fit(const at::Tensor& D, const at::Tensor& H, int64_t rank, const std::string& layer) {
  const std::string where = layer.empty() ? "" : layer + ": ";
  if (D.dim() != 2 || H.dim() != 2 || H.size(0) != H.size(1) || H.size(0) != D.size(1))
    fail("eora", where, "needs D [out, in] and H [in, in], got ", D.sizes(), " and ", H.sizes());
  if (rank < 1) fail("eora", where, "rank ", rank, " must be >= 1");
  const at::Tensor Hd = H.to(at::kDouble), Dd = D.to(at::kDouble);
  const auto eig = at::linalg_eigh(Hd);  // ascending eigenvalues, orthonormal eigenvectors
  const at::Tensor lam = std::get<0>(eig), Q = std::get<1>(eig);
  const double top = lam.numel() ? lam.max().item<double>() : 0.0;
  const at::Tensor keep = lam.gt(std::max(top, 0.0) * 1e-10);
  const at::Tensor root = at::where(keep, lam.clamp_min(0).sqrt(), at::zeros_like(lam));
  const at::Tensor inv_root = at::where(keep, root.reciprocal(), at::zeros_like(lam));
  const at::Tensor Dp = Dd.mm(Q).mul_(root.unsqueeze(0));  // D Q Λ^½
  const auto svd = at::linalg_svd(Dp, false);
  const at::Tensor U = std::get<0>(svd), S = std::get<1>(svd), Vh = std::get<2>(svd);
  const int64_t r = std::min<int64_t>(rank, S.numel());
  LowRankAdapter a;
  a.B = U.narrow(1, 0, r).mul(S.narrow(0, 0, r).unsqueeze(0)).to(at::kFloat).contiguous();
  a.A = Vh.narrow(0, 0, r).mul(inv_root.unsqueeze(0)).mm(Q.t()).to(at::kFloat).contiguous();
  return a;
}

}  // namespace mc
