// llama.cpp's rope_freqs (Llama 3.1 rope scaling as per-frequency divisors) against a hand computation and
// against our Hugging Face llama3 forward: the same weights with rope_scaling "llama3" and "factors" agree.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>

#include "mcompress/error.h"
#include "mcompress/models/llama.h"
#include "mcompress/torch_bridge.h"

namespace {

mc::LlamaConfig llama31(int64_t head_dim) {
  mc::LlamaConfig c;
  c.rope_scaling = "llama3", c.rope_theta = 500000.0, c.rope_factor = 8.0;  // Llama 3.1's config.json
  c.rope_low_freq_factor = 1.0, c.rope_high_freq_factor = 4.0, c.rope_original_max_pos = 8192;
  c.head_dim = head_dim;
  return c;
}

}  // namespace

TEST_CASE("llama3 rope_freqs: the three bands, the smooth one computed by hand", "[rope_freqs]") {
  const std::vector<double> f = mc::llama3_rope_freq_factors(llama31(128));
  REQUIRE(f.size() == 64);
  // Wavelength of frequency i: 2 pi 500000^(i/64). Below 8192/4 = 2048 (i <= 28: i = 28 gives 1956.5) the
  // divisor is 1, above 8192 (i >= 35: 8218.7) it is the factor 8.
  for (int i = 0; i <= 28; ++i) CHECK(f[size_t(i)] == 1.0);
  for (int i = 35; i < 64; ++i) CHECK(f[size_t(i)] == 8.0);
  // i = 32: wavelength 2 pi sqrt(500000) = 4442.8829; s = (8192 / 4442.8829 - 1) / (4 - 1) = 0.2812829;
  // divisor 1 / ((1 - s) / 8 + s) = 1 / 0.3711225 = 2.694530 (by hand, 7 digits).
  CHECK(f[32] == Approx(2.694530).epsilon(1e-6));
  for (int i = 29; i <= 34; ++i) CHECK((f[size_t(i)] > 1.0 && f[size_t(i)] < 8.0));
  CHECK_THROWS_AS(mc::llama3_rope_freq_factors(mc::LlamaConfig{}), mc::InputError);
}

TEST_CASE("llama3 rope_freqs: inverse frequencies / divisors = Hugging Face's _compute_llama3_parameters",
          "[rope_freqs]") {
  const mc::LlamaConfig c = llama31(128);
  const std::vector<double> f = mc::llama3_rope_freq_factors(c);
  // Hugging Face's formula, written out here: where wavelen > orig/low -> inv/factor; where
  // orig/high <= wavelen <= orig/low -> (1 - s) inv / factor + s inv; else inv.
  for (int i = 0; i < 64; ++i) {
    const double inv = std::pow(500000.0, -double(2 * i) / 128.0), w = 2 * M_PI / inv;
    const double s = (8192.0 / w - 1.0) / 3.0;
    const double scaled = w > 8192.0 ? inv / 8.0 : inv;
    const double hf = (w >= 2048.0 && w <= 8192.0) ? (1 - s) * scaled / 8.0 + s * scaled : scaled;
    CHECK(inv / f[size_t(i)] == Approx(hf).epsilon(1e-12));
  }
}

TEST_CASE("rope_scaling factors (a GGUF rope_freqs) runs like llama3 scaling", "[rope_freqs]") {
  mc::LlamaConfig c = llama31(16);  // head_dim 16, theta 500000: frequencies in all three bands (i = 3, 4, 5)
  c.dim = 32, c.hidden_dim = 64, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.vocab_size = 50;
  c.max_seq_len = 64, c.names = mc::LlamaNames::HuggingFace, c.rope = mc::RopeLayout::RotateHalf;
  std::map<std::string, mc::HostTensor> w;
  for (auto& [k, t] : mc::init_llama_weights(c, 7)) w[k] = mc::from_torch(k, t * 20.0);  // decisive attention
  mc::LlamaConfig cf = c;
  cf.rope_scaling = "factors", cf.rope_freq_factors = mc::llama3_rope_freq_factors(c);
  mc::LlamaConfig none = c;
  none.rope_scaling.clear();
  mc::LlamaModel a(c, w), b(cf, w), d(none, w);
  const at::Tensor tokens = at::arange(0, 40, at::kLong).remainder(50).view({1, 40});
  const at::Tensor la = a.forward(tokens), lb = b.forward(tokens), ld = d.forward(tokens);
  // float32 rope tables from double frequencies that differ in the last bits: 1e-4 relative to logits of ~10
  CHECK(at::allclose(la, lb, 1e-4, 1e-4));
  CHECK(!at::allclose(la, ld, 1e-4, 1e-4));  // the scaling matters at these positions
  cf.rope_freq_factors.pop_back();
  CHECK_THROWS_AS(cf.validate(), mc::InputError);
  // and it survives the checkpoint metadata round trip
  cf.rope_freq_factors = mc::llama3_rope_freq_factors(c);
  CHECK(mc::LlamaConfig::from_json(cf.json(), "test").rope_freq_factors == cf.rope_freq_factors);
}
