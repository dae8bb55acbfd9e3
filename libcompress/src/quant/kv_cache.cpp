// KV-cache quantization (quant/kv_cache.h).
#include "mcompress/quant/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "mcompress/error.h"
#include "mcompress/quant/fp_formats.h"

namespace mc {

namespace {
constexpr const char* kComp = "kv-cache";
float grid_max(KVFormat f) { return f == KVFormat::int8 ? 127.0f : 448.0f; }

void check(const at::Tensor& x, const at::Tensor& scale) {
  if (x.dim() != 4 || scale.dim() != 1 || scale.size(0) != x.size(1))
    fail(kComp, "expected [B, heads, T, head_dim] with one scale per head, got ", x.dim(), " dims and ", scale.numel(),
         " scales for ", x.dim() == 4 ? x.size(1) : 0, " heads");
}
}  // namespace

KVFormat parse_kv_format(const std::string& name) {
  if (name == "int8") return KVFormat::int8;
  if (name == "fp8") return KVFormat::fp8;
  fail(kComp, "format '", name, "' is not available (allowed: int8, fp8)");
}

const char* kv_format_name(KVFormat f) { return f == KVFormat::int8 ? "int8" : "fp8"; }

at::Tensor kv_scales(const at::Tensor& amax, KVFormat f) {
  const at::Tensor a = amax.to(at::kFloat);
  if (!at::isfinite(a).all().item<bool>()) fail(kComp, "the calibration keys or values are not finite");
  const at::Tensor s = a / grid_max(f);
  return at::where(a.gt(0), s, at::ones_like(s));
}

at::Tensor kv_fake_quant(const at::Tensor& x, const at::Tensor& scale, KVFormat f) {
  check(x, scale);
  const at::Tensor s = scale.to(x.device(), at::kFloat).view({1, -1, 1, 1});
  const at::Tensor y = x.to(at::kFloat) / s;
  const at::Tensor q = f == KVFormat::int8 ? y.round().clamp_(-127, 127) : round_to_e4m3(y);
  return (q * s).to(x.scalar_type());
}

at::Tensor kv_fake_quant_ref(const at::Tensor& x, const at::Tensor& scale, KVFormat f) {
  check(x, scale);
  at::Tensor xc = x.to(at::kFloat).cpu().contiguous(), sc = scale.to(at::kFloat).cpu().contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t B = xc.size(0), H = xc.size(1), inner = xc.size(2) * xc.size(3);
  const float* px = xc.data_ptr<float>();
  float* po = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const float s = sc.data_ptr<float>()[h];
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t at_ = (b * H + h) * inner + i;
        const float y = px[at_] / s;
        const float q = f == KVFormat::int8 ? std::min(127.0f, std::max(-127.0f, std::nearbyint(y)))
                                            : e4m3_to_float(float_to_e4m3(y));
        po[at_] = q * s;
      }
    }
  return out;
}

}  // namespace mc
