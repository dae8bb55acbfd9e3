// Frozen quantization grids (quant/fake_quant.h): the grids read back from a packed checkpoint with
// every kind of entry, the projection against the written codes and against a per-element loop, the
// straight-through gradient, pruned places, and re-packing byte for byte.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/prune/prune.h"
#include "mcompress/quant/fake_quant.h"
#include "mcompress/quant/packed.h"
#include "mcompress/torch_bridge.h"
#include "quant_helpers.h"
#include "test_utils.h"

using namespace mc;

namespace {

using mctest::spec_of;
using mctest::weights;

const SparseLayout kBitmask{0, 0}, k24{2, 4};

at::Tensor pruned(int64_t out, int64_t in, const SparseLayout& l, uint64_t seed) {
  const at::Tensor w = weights(out, in, seed);
  const at::Tensor keep = l.bitmask() ? layer_mask(w.abs(), 0.5) : nm_mask(w.abs(), l.n, l.m);
  return w.mul(keep.to(at::kFloat));
}

// Bit-for-bit equality of float32 tensors (at::equal counts -0 == +0).
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && at::equal(a.contiguous().view(at::kInt), b.contiguous().view(at::kInt));
}

std::map<std::string, at::Tensor> read_all(const std::string& path) {
  auto r = open_safetensors(path);
  std::map<std::string, at::Tensor> m;
  for (const HostTensor& t : read_packed_checkpoint(*r)) m.emplace(t.name, to_torch(t).clone());
  return m;
}

// A checkpoint with every kind of packed entry, written by write_packed_checkpoint.
struct Sample {
  std::map<std::string, at::Tensor> dense;
  std::map<std::string, QuantResult> quantized;
  std::map<std::string, SparseEntry> sparse;
  Sample() {
    dense["norm.weight"] = at::linspace(0.5, 1.5, 10, at::kFloat);
    quantized["dense.int4.weight"] = rtn_quantize(weights(8, 96, 1), spec_of(4, true, 32));
    quantized["dense.int3.weight"] = rtn_quantize(weights(6, 40, 2), spec_of(3, false, 0));
    // act order: group k = the k-th run of 16 columns in the order perm; quantize W[:, perm] and put
    // each column's codes and group back in place
    const at::Tensor perm = at::randperm(64, at::detail::createCPUGenerator(3), at::kLong);
    const at::Tensor w = weights(4, 64, 4);
    const QuantResult p = rtn_quantize(w.index_select(1, perm), spec_of(4, false, 16));
    QuantResult a = p;
    a.codes = at::zeros_like(p.codes).index_copy_(1, perm, p.codes);
    a.g_idx = at::zeros({64}, at::kInt).index_copy_(0, perm, at::arange(64, at::kInt).div_(16, "floor"));
    quantized["act.weight"] = a;
    // a conv kernel [4, 2, 3, 3] quantized as [4, 18]
    QuantResult c = rtn_quantize(weights(4, 18, 5), spec_of(4, true, 8));
    c.weight_shape = {4, 2, 3, 3};
    quantized["conv.weight"] = c;
    // 2:4 int4: one kept weight so small that its code is the zero point (a kept 0)
    at::Tensor w24 = pruned(6, 32, k24, 6);
    w24[1][w24[1].ne(0).nonzero()[0][0].item<int64_t>()] = 1e-6f;
    sparse["nm24.int4.weight"] = SparseEntry{w24, k24, rtn_quantize(w24, spec_of(4, true, 16))};
    // bitmask int4 asym, a conv kernel
    at::Tensor wbm = pruned(4, 36, kBitmask, 7);
    sparse["bm.int4.weight"] = SparseEntry{wbm.reshape({4, 4, 3, 3}), kBitmask, rtn_quantize(wbm, spec_of(4, false, 12))};
    // bitmask float16 values: two kept values that round to float16 +0 and -0
    at::Tensor wf = pruned(5, 20, kBitmask, 8).to(at::kHalf).to(at::kFloat);
    const at::Tensor kept = wf.ne(0).nonzero();
    wf[kept[0][0]][kept[0][1]] = 1e-9f;
    wf[kept[1][0]][kept[1][1]] = -1e-9f;
    sparse["bm.f16.weight"] = SparseEntry{wf, kBitmask, std::nullopt};
  }
  void write(const std::string& path) const { write_packed_checkpoint(path, dense, quantized, {{"k", "v"}}, sparse); }
  // The written codes of a quantized entry.
  const QuantResult& quant(const std::string& key) const {
    return quantized.count(key) ? quantized.at(key) : *sparse.at(key).quant;
  }
};

// The group of each column: g_idx, or c / group_cols.
at::Tensor group_of(const QuantResult& q) {
  const int64_t in = q.codes.size(1);
  return q.g_idx.defined() ? q.g_idx.to(at::kLong) : at::arange(in, at::kLong).div_(q.spec.group_cols(in), "floor");
}

// The projection of rtn.h by hand, element by element, with the entry's stored grid.
at::Tensor project_loop(const at::Tensor& w_in, const FrozenGrid& g) {
  const QuantResult& q = *g.quant;
  const at::Tensor w = w_in.reshape({q.codes.size(0), -1}).contiguous();
  const int64_t out = w.size(0), in = w.size(1), gs = q.spec.group_cols(in);
  const int maxq = (1 << q.spec.bits) - 1;
  at::Tensor r = at::zeros({out, in}, at::kFloat);
  auto W = w.accessor<float, 2>();
  auto R = r.accessor<float, 2>();
  auto S = q.scales.accessor<float, 2>();
  auto Z = q.zeros.accessor<float, 2>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t c = 0; c < in; ++c) {
      if (g.mask.defined() && !g.mask[o][c].item<bool>()) continue;
      const int64_t k = q.g_idx.defined() ? q.g_idx[c].item<int64_t>() : c / gs;
      const float s = S[o][k], z = Z[o][k], inv = 1.0f / s;
      const float y = W[o][c] * inv;
      const double code = std::min(std::max(std::nearbyint(double(y) + double(z)), 0.0), double(maxq));
      R[o][c] = (float(code) - z) * s;
    }
  return r.reshape(w_in.sizes());
}

}  // namespace

TEST_CASE("frozen grids: every packed entry read back, the stored weights are fixed points", "[fakequant]") {
  mctest::TempDir dir;
  const std::string path = dir.file("p.safetensors");
  const Sample s;
  s.write(path);
  const auto deq = read_all(path);
  auto r = open_safetensors(path);
  const auto grids = read_frozen_grids(*r);
  REQUIRE(grids.size() == 7);
  CHECK_FALSE(grids.count("norm.weight"));

  const FrozenGrid& d4 = grids.at("dense.int4.weight");
  CHECK(d4.quant->spec.describe() == "int4 sym g32");
  CHECK_FALSE(d4.sparse);
  CHECK_FALSE(d4.mask.defined());
  CHECK(d4.weight_shape == std::vector<int64_t>{8, 96});
  CHECK(grids.at("dense.int3.weight").quant->spec.describe() == "int3 asym per-channel");
  CHECK(grids.at("act.weight").quant->spec.describe() == "int4 asym g16");
  CHECK(at::equal(grids.at("act.weight").quant->g_idx, s.quant("act.weight").g_idx));
  CHECK(grids.at("conv.weight").weight_shape == std::vector<int64_t>{4, 2, 3, 3});
  CHECK(grids.at("conv.weight").quant->weight_shape == std::vector<int64_t>{4, 2, 3, 3});
  const FrozenGrid& nm = grids.at("nm24.int4.weight");
  CHECK(nm.sparse->describe() == "2:4");
  CHECK(nm.quant->spec.describe() == "int4 sym g16");
  CHECK(nm.mask.sum().item<int64_t>() == 6 * 16);
  CHECK(grids.at("bm.int4.weight").sparse->bitmask());
  CHECK(grids.at("bm.int4.weight").weight_shape == std::vector<int64_t>{4, 4, 3, 3});
  const FrozenGrid& f16 = grids.at("bm.f16.weight");
  CHECK(f16.sparse->bitmask());
  CHECK_FALSE(f16.quant);
  CHECK_FALSE(f16.scale_full.defined());
  // the mask: the written weight's non-zeros (the planted tiny values included)
  CHECK(at::equal(f16.mask, s.sparse.at("bm.f16.weight").weight.ne(0)));

  for (const auto& [key, g] : grids) {
    INFO(key);
    const at::Tensor& w = deq.at(key);
    CHECK(w.sizes().vec() == g.weight_shape);
    // a weight on the grid maps to itself, bit for bit
    CHECK(same_bits(fake_quant_ste(w, g), w));
    if (!g.quant) continue;
    // its codes are the written ones (at the kept places; the zero point at the pruned ones)
    const QuantResult& written = s.quant(key);
    CHECK(at::equal(g.scale_full, written.scales.index_select(1, group_of(written))));
    CHECK(at::equal(g.zero_full, written.zeros.index_select(1, group_of(written))));
    const QuantResult rq = requantize(w, g);
    if (g.mask.defined()) {
      CHECK(at::equal(rq.codes.masked_select(g.mask), written.codes.masked_select(g.mask)));
      CHECK(at::equal(rq.dequantize().masked_select(g.mask.logical_not()),
                      at::zeros({g.mask.logical_not().sum().item<int64_t>()})));
    } else {
      CHECK(at::equal(rq.codes, written.codes));
    }
  }
  // the original float weights requantized on the frozen grid: rtn_quantize's codes (the same arithmetic)
  CHECK(at::equal(requantize(weights(8, 96, 1), d4).codes, s.quant("dense.int4.weight").codes));
  CHECK(at::equal(requantize(weights(6, 40, 2), grids.at("dense.int3.weight")).codes, s.quant("dense.int3.weight").codes));
  CHECK(at::equal(requantize(weights(4, 18, 5).reshape({4, 2, 3, 3}), grids.at("conv.weight")).codes,
                  s.quant("conv.weight").codes));
  CHECK(at::equal(requantize(s.sparse.at("bm.int4.weight").weight, grids.at("bm.int4.weight")).codes,
                  s.quant("bm.int4.weight").codes));
  // the planted kept 0 of the 2:4 entry is there, and stays kept
  CHECK(deq.at("nm24.int4.weight").eq(0).logical_and(nm.mask).any().item<bool>());
  CHECK(requantize(deq.at("nm24.int4.weight"), nm).dequantize().eq(0).logical_and(nm.mask).any().item<bool>());
}

TEST_CASE("frozen grids: re-packing the read weights with add_like gives the same bytes", "[fakequant]") {
  mctest::TempDir dir;
  const std::string path = dir.file("p.safetensors"), again = dir.file("again.safetensors");
  Sample().write(path);
  const auto deq = read_all(path);
  auto r = open_safetensors(path);
  const auto grids = read_frozen_grids(*r);
  // write_packed_checkpoint's order: dense by name, quantized by key, sparse by key
  PackedCheckpointWriter pw(again);
  pw.add_dense("norm.weight", deq.at("norm.weight"));
  for (bool sparse : {false, true})
    for (const auto& [key, g] : grids)
      if (g.sparse.has_value() == sparse) add_like(pw, deq.at(key), g);
  pw.finish({{"k", "v"}});
  CHECK(mctest::read_bytes(again) == mctest::read_bytes(path));
}

TEST_CASE("frozen grids: straight-through gradient, projection of perturbed weights, re-packed as projected", "[fakequant]") {
  mctest::TempDir dir;
  const std::string path = dir.file("p.safetensors"), trained = dir.file("t.safetensors");
  Sample().write(path);
  const auto deq = read_all(path);
  auto r = open_safetensors(path);
  const auto grids = read_frozen_grids(*r);
  auto gen = at::detail::createCPUGenerator(42);
  std::map<std::string, at::Tensor> projected;
  PackedCheckpointWriter pw(trained);
  for (bool sparse : {false, true})
    for (const auto& [key, g] : grids) {
      if (g.sparse.has_value() != sparse) continue;
      INFO(key);
      const at::Tensor w0 = deq.at(key);
      // perturbed by 0.3 steps of noise, two weights pushed far out of the range (clamped), and large
      // weights at pruned places
      at::Tensor noise = at::randn(w0.sizes(), gen, at::kFloat).mul_(0.3);
      at::Tensor w = g.quant ? w0.add(noise.mul_(g.scale_full.view(w0.sizes()))) : w0.add(noise.mul_(0.01));
      w.view(-1)[0] = 100.0f;
      w.view(-1)[1] = -100.0f;
      if (g.mask.defined()) w.view(g.mask.sizes()).masked_fill_(g.mask.logical_not(), 7.0f);
      w.requires_grad_(true);
      const at::Tensor y = fake_quant_ste(w, g);
      CHECK(y.requires_grad());
      const at::Tensor rnd = at::randn(w0.sizes(), gen, at::kFloat);
      (y * rnd).sum().backward();
      const at::Tensor keep = g.mask.defined() ? g.mask.view(w0.sizes()) : at::ones(w0.sizes(), at::kBool);
      CHECK(at::equal(w.grad(), at::where(keep, rnd, at::zeros({}))));
      const at::Tensor wd = w.detach();
      if (g.quant)
        CHECK(same_bits(y.detach(), project_loop(wd, g)));
      else
        CHECK(same_bits(y.detach(), at::where(keep, wd.to(at::kHalf).to(at::kFloat), at::zeros({}))));
      CHECK(y.detach().masked_select(keep.logical_not()).eq(0).all().item<bool>());
      CHECK_FALSE(same_bits(y.detach(), w0));  // the perturbation moved some codes
      projected[key] = y.detach();
      add_like(pw, wd, g);
    }
  pw.finish({});
  // the re-packed file reads back as exactly the projected weights
  const auto got = read_all(trained);
  REQUIRE(got.size() == projected.size());
  for (const auto& [key, y] : projected) {
    INFO(key);
    CHECK(same_bits(got.at(key), y));
  }
}

TEST_CASE("frozen grids: a pruned place stays 0 whatever the weight there", "[fakequant]") {
  mctest::TempDir dir;
  const std::string path = dir.file("p.safetensors");
  Sample().write(path);
  auto r = open_safetensors(path);
  const auto grids = read_frozen_grids(*r);
  for (const char* key : {"nm24.int4.weight", "bm.int4.weight", "bm.f16.weight"}) {
    INFO(key);
    const FrozenGrid& g = grids.at(key);
    const at::Tensor pruned_at = g.mask.logical_not().view(g.weight_shape);
    for (float big : {1e4f, -3e38f, INFINITY, NAN}) {
      const at::Tensor w = at::full(g.weight_shape, 0.01f).masked_fill_(pruned_at, big);
      const at::Tensor y = fake_quant_ste(w, g);
      CHECK(y.masked_select(pruned_at).eq(0).all().item<bool>());
      // the kept places are as if the pruned ones held 0
      CHECK(same_bits(y, fake_quant_ste(w.masked_fill(pruned_at, 0.0f), g)));
      if (g.quant) {  // codes: the zero point
        const at::Tensor p = g.mask.logical_not();
        CHECK(at::equal(requantize(w, g).codes.masked_select(p), g.zero_full.masked_select(p).to(at::kByte)));
      }
    }
  }
}

TEST_CASE("frozen grids: files that are not packed, malformed ones, mismatched weights", "[fakequant]") {
  mctest::TempDir dir;
  const std::string plain = dir.file("plain.safetensors"), path = dir.file("p.safetensors");
  write_safetensors(plain, {from_torch("w", at::ones({2, 2}))}, {});
  CHECK(read_frozen_grids(*open_safetensors(plain)).empty());

  Sample().write(path);
  {
    auto r = open_safetensors(path);
    const auto grids = read_frozen_grids(*r);
    CHECK_THROWS_AS(fake_quant_ste(at::ones({8, 95}), grids.at("dense.int4.weight")), Error);
    CHECK_THROWS_AS(requantize(at::ones({5, 20}), grids.at("bm.f16.weight")), Error);
  }
  // drop the scales of one entry: InputError naming the file and the tensor
  auto r = open_safetensors(path);
  std::vector<HostTensor> ts;
  for (HostTensor& t : r->load_all())
    if (t.name != "act.weight.scales") ts.push_back(t);
  const auto meta = r->metadata();
  r.reset();
  write_safetensors(path, ts, meta);
  CHECK_THROWS_WITH(read_frozen_grids(*open_safetensors(path)),
                    Catch::Contains(path) && Catch::Contains("act.weight.scales"));
}
