// Frozen quantization grids for recovery fine-tuning (quant/fake_quant.h): the straight-through
// projection onto a packed checkpoint's grid and mask, and re-packing on that grid.
#include "mcompress/quant/fake_quant.h"

#include <ATen/ATen.h>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/quant/packed.h"

namespace mc {

namespace {

constexpr const char* kComp = "fakequant";
// As in rtn.cpp: adding 1.5 * 2^23 to a float of magnitude < 2^22 rounds it to an integer (half to
// even) in one float addition, so kRoundMagic + zero + w * inv is round(w * inv + zero) rounded once.
constexpr double kRoundMagic = 12582912.0;
// A kept float16 value that rounds to 0: non-zero, so add_sparse keeps the place, and stored as +-0.
constexpr double kTinyKept = 1e-10;

// w viewed as [out, in] (its own dtype), checked against the entry's shape and the grid's device.
at::Tensor as_matrix(const at::Tensor& w, const FrozenGrid& g) {
  int64_t n = 1;
  for (int64_t d : g.weight_shape) n *= d;
  if (!w.defined() || !at::isFloatingType(w.scalar_type()) || w.dim() < 1 || g.weight_shape.empty() ||
      w.size(0) != g.weight_shape[0] || w.numel() != n)
    fail<Error>(kComp, g.key, ": weight ", w.defined() ? w.sizes() : at::IntArrayRef{}, " does not match the packed shape ",
                at::IntArrayRef(g.weight_shape));
  const at::Tensor& ref = g.quant ? g.inv_full : g.mask;
  if (ref.defined() && ref.device() != w.device())
    fail<Error>(kComp, g.key, ": weight on ", w.device(), ", grid on ", ref.device(), " (FrozenGrid::to)");
  return w.reshape({w.size(0), n / std::max<int64_t>(w.size(0), 1)});
}

// w [out, in] with pruned places set to 0 (where, not a product: an Inf there gives 0 too).
at::Tensor masked(const at::Tensor& w, const FrozenGrid& g) {
  return g.mask.defined() ? at::where(g.mask, w, at::zeros({}, w.options())) : w;
}

// The codes of x [out, in] float32 (no autograd) as floats 0..maxq: integer zeros as rtn.h rounds
// (kRoundMagic + zero + w * inv, rounded once), fractional ones (quant/hqq.h; checked on the small
// [out, G] grid kept on the CPU) as hqq_quantize does: w * inv + zero in float32, then rounded
// (kRoundMagic would round the zero itself).
at::Tensor codes_on_grid(const at::Tensor& x, const FrozenGrid& g) {
  const int maxq = (1 << g.quant->spec.bits) - 1;
  const at::Tensor& z = g.quant->zeros;
  if (!z.eq(z.round()).all().item<bool>()) return x.mul(g.inv_full).add_(g.zero_full).round_().clamp_(0, maxq);
  at::Tensor zm = g.zero_full.add(kRoundMagic);
  return x.mul(g.inv_full).add_(zm).clamp_(kRoundMagic, kRoundMagic + maxq).sub_(kRoundMagic);  // exact
}

}  // namespace

void FrozenGrid::to(const c10::Device& device) {
  for (at::Tensor* t : {&mask, &scale_full, &inv_full, &zero_full})
    if (t->defined()) *t = t->to(device);
}

std::map<std::string, FrozenGrid> read_frozen_grids(const CheckpointReader& reader) {
  std::map<std::string, FrozenGrid> out;
  if (!is_packed_checkpoint(reader)) return out;
  for (auto& [key, p] : read_packed_entries(reader)) {
    FrozenGrid g;
    g.key = key;
    g.quant = std::move(p.quant);
    g.sparse = p.sparse;
    g.mask = p.mask;
    g.weight_shape = p.weight_shape;
    if (g.quant) {  // each column's group: g_idx, or c / group_cols
      const QuantResult& q = *g.quant;
      const int64_t in = q.codes.size(1);
      const at::Tensor gi = q.g_idx.defined() ? q.g_idx.to(at::kLong)
                                              : at::arange(in, at::kLong).div_(q.spec.group_cols(in), "floor");
      g.scale_full = q.scales.index_select(1, gi).contiguous();
      g.zero_full = q.zeros.index_select(1, gi).contiguous();
      g.inv_full = at::reciprocal(g.scale_full);  // as rtn.cpp computes inv
    }
    out.emplace(key, std::move(g));
  }
  return out;
}

at::Tensor fake_quant_ste(const at::Tensor& w, const FrozenGrid& g) {
  const at::Tensor wm = masked(as_matrix(w, g), g);
  at::Tensor q;
  {
    at::NoGradGuard no_grad;
    const at::Tensor x = wm.detach().to(at::kFloat);
    if (g.quant) {
      q = codes_on_grid(x, g).sub_(g.zero_full).mul_(g.scale_full);  // (code - zero) * scale; code - zero is exact
    } else {
      // Sparse float16 values: their own rounding. A mask alone (a dense file's zeros): the values.
      q = g.sparse ? x.to(at::kHalf).to(at::kFloat) : x.clone();
    }
  }
  // q - 0 with the gradient of wm: the value stays q exactly (a float16 -0 too, which q + 0 would not keep).
  return q.sub(wm.detach() - wm).view(w.sizes());
}

QuantResult requantize(const at::Tensor& w, const FrozenGrid& g) {
  if (!g.quant) fail<Error>(kComp, g.key, ": not quantized (a sparse entry of float16 values): nothing to requantize");
  at::NoGradGuard no_grad;
  const at::Tensor x = masked(as_matrix(w.detach(), g), g).to(at::kFloat);
  QuantResult r = *g.quant;
  r.codes = codes_on_grid(x, g).to(at::kByte).to(at::kCPU);
  return r;
}

void add_like(PackedCheckpointWriter& writer, const at::Tensor& w, const FrozenGrid& g) {
  if (g.quant && !g.sparse) return writer.add_quantized(g.key, requantize(w, g));
  at::NoGradGuard no_grad;
  const at::Tensor mask = g.mask.to(at::kCPU);
  at::Tensor keep;  // non-zero exactly at g.mask: add_sparse keeps a weight's non-zeros
  if (g.quant) {
    // The codes carry the values; the weight only says where they are.
    keep = mask.to(at::kFloat);
  } else {
    // A kept value that is (or rounds to) float16 0 becomes +-kTinyKept: still stored, as the same +-0.
    const at::Tensor x = masked(as_matrix(w.detach(), g), g).to(at::kCPU).to(at::kFloat);
    const at::Tensor zero16 = mask & x.to(at::kHalf).eq(0);
    keep = at::where(zero16, at::full({}, kTinyKept, at::kFloat).copysign(x), x);
  }
  const QuantResult q = g.quant ? requantize(w, g) : QuantResult();
  writer.add_sparse(g.key, keep.view(g.weight_shape), *g.sparse, g.quant ? &q : nullptr);
}

}  // namespace mc
