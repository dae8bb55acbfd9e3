// Sparse entries of packed checkpoints (quant/sparse.h, docs/packed-format.md "Sparse entries"):
// exact round trips for bitmask and N:M, float16 values and int4/int8 codes; the bytes they cost
// against the dense layouts (printed, and checked against sparse_bytes and the per-weight arithmetic);
// the writer's refusals and the reader's errors for malformed files.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/prune/prune.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/packed_entries.h"
#include "mcompress/torch_bridge.h"
#include "quant_helpers.h"
#include "test_utils.h"

using namespace mc;

namespace {

using mctest::spec_of;
using mctest::weights;

// A pruned weight: bitmask -> the smallest half of |w| over the layer zeroed; n:m -> nm_mask.
at::Tensor pruned(int64_t out, int64_t in, const SparseLayout& l, uint64_t seed, double sparsity = 0.5) {
  const at::Tensor w = weights(out, in, seed);
  const at::Tensor keep = l.bitmask() ? layer_mask(w.abs(), sparsity) : nm_mask(w.abs(), l.n, l.m);
  return w.mul(keep.to(at::kFloat));
}

// The float16-representable version of w (what a float16 sparse entry reads back).
at::Tensor f16(const at::Tensor& w) { return w.to(at::kHalf).to(at::kFloat); }

std::map<std::string, at::Tensor> read_all(const std::string& path) {
  auto r = open_safetensors(path);
  std::map<std::string, at::Tensor> m;
  for (const HostTensor& t : read_packed_checkpoint(*r)) m.emplace(t.name, to_torch(t).clone());
  return m;
}

uint64_t file_tensor_bytes(const std::string& path) {
  auto r = open_safetensors(path);
  uint64_t b = 0;
  for (const TensorInfo& ti : r->tensors()) b += ti.nbytes;
  return b;
}

std::string read_error(const std::string& path) {
  try {
    auto r = open_safetensors(path);
    read_packed_checkpoint(*r);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

// Replaces (or adds) one tensor of a safetensors file, and optionally the packed description.
void rewrite(const std::string& path, const HostTensor& t, const std::string& desc = "") {
  auto r = open_safetensors(path);
  std::vector<HostTensor> ts = r->load_all();
  bool found = false;
  for (HostTensor& x : ts)
    if (x.name == t.name) x = t, found = true;
  if (!found && !t.name.empty()) ts.push_back(t);
  std::map<std::string, std::string> meta = r->metadata();
  if (!desc.empty()) meta[kPackedMetadataKey] = desc;
  r.reset();
  write_safetensors(path, ts, meta);
}

HostTensor u8(const std::string& name, Shape shape, std::vector<uint8_t> bytes) {
  return HostTensor::owned(name, DType::U8, std::move(shape), std::move(bytes));
}

const SparseLayout kBitmask{0, 0}, k24{2, 4}, k48{4, 8};

// The entries of the export and of the round-trip test: every layout with float16 values and codes.
std::map<std::string, SparseEntry> sample_entries() {
  std::map<std::string, SparseEntry> s;
  auto add = [&](const std::string& key, at::Tensor w, SparseLayout l, std::optional<QuantSpec> spec) {
    SparseEntry e{w, l, std::nullopt};
    if (spec) e.quant = rtn_quantize(w, *spec);
    s[key] = e;
  };
  add("bm.f16.weight", f16(pruned(6, 100, kBitmask, 1)), kBitmask, std::nullopt);  // 100 columns: mask padding
  add("bm.int4.weight", pruned(8, 96, kBitmask, 2, 0.6), kBitmask, spec_of(4, true, 32));
  add("bm.int8.weight", pruned(5, 40, kBitmask, 3), kBitmask, spec_of(8, false, 0));
  add("bm.int3.weight", pruned(4, 33, kBitmask, 4, 0.3), kBitmask, spec_of(3, false, 16));  // odd stream
  add("nm24.f16.weight", f16(pruned(7, 64, k24, 5)), k24, std::nullopt);
  add("nm24.int4.weight", pruned(6, 64, k24, 6), k24, spec_of(4, false, 32));
  add("nm48.int8.weight", pruned(3, 48, k48, 7), k48, spec_of(8, true, 16));
  add("nm48.f16.weight", f16(pruned(5, 24, k48, 8)), k48, std::nullopt);
  // 2:4 where some groups have fewer than 2 non-zeros (a kept weight that is 0): kept zeros are stored
  at::Tensor w = f16(pruned(4, 16, k24, 9));
  w.narrow(1, 0, 4).zero_();
  w[2][5] = 0;
  add("nm24.short.weight", w, k24, std::nullopt);
  // a conv kernel [4, 2, 3, 3] stored as [4, 18]
  add("conv.weight", f16(pruned(4, 18, kBitmask, 10)).reshape({4, 2, 3, 3}), kBitmask, std::nullopt);
  // act-order style g_idx: columns alternate between the groups
  QuantResult gq = rtn_quantize(pruned(4, 64, k24, 11), spec_of(4, true, 32));
  gq.g_idx = at::arange(64, at::kInt).remainder(2);
  s["nm24.gidx.weight"] = SparseEntry{gq.dequantize(), k24, gq};
  return s;
}

// What reading an entry must give: the codes' dequantization, or the float16 values.
at::Tensor expected(const SparseEntry& e) { return e.quant ? e.quant->dequantize() : f16(e.weight); }

}  // namespace

TEST_CASE("sparse layout: index bits and validation", "[pack][sparse]") {
  CHECK(k24.index_bits() == 2);
  CHECK(k48.index_bits() == 3);
  CHECK(SparseLayout{8, 16}.index_bits() == 4);
  CHECK(SparseLayout{1, 2}.index_bits() == 2);  // the packing's narrowest width
  CHECK(kBitmask.index_bits() == 0);
  CHECK_THROWS_WITH(k24.validate("w", 10), Catch::Contains("groups of 4 columns do not divide in_features 10"));
  CHECK_THROWS_WITH((SparseLayout{4, 4}.validate("w", 8)), Catch::Contains("1 <= n < m"));
  CHECK_THROWS_WITH((SparseLayout{2, 32}.validate("w", 64)), Catch::Contains("2 <= m <= 16"));
}

TEST_CASE("sparse entries round trip exactly: bitmask and N:M, float16 values and int3/4/8 codes", "[pack][sparse]") {
  mctest::TempDir dir;
  const std::string path = dir.file("sparse.safetensors");
  const auto entries = sample_entries();
  QuantResult dq = rtn_quantize(weights(4, 64, 20), spec_of(4, true, 32));
  write_packed_checkpoint(path, {{"norm.weight", at::ones({7})}}, {{"dense.q.weight", dq}}, {{"k", "v"}}, entries);
  auto r = open_safetensors(path);
  const auto desc = nlohmann::json::parse(r->metadata().at(kPackedMetadataKey))["tensors"];
  CHECK(desc["bm.int4.weight"]["sparse"] == nlohmann::json({{"layout", "bitmask"}, {"kept", 8 * 96 - 460}}));
  CHECK(desc["nm24.int4.weight"]["sparse"] == nlohmann::json({{"layout", "n:m"}, {"n", 2}, {"m", 4}, {"kept", 6 * 32}}));
  CHECK(desc["nm24.f16.weight"]["dtype"] == "F16");
  CHECK(desc["nm24.int4.weight"]["bits"] == 4);
  CHECK(desc["conv.weight"]["weight_shape"] == nlohmann::json::array({4, 2, 3, 3}));
  CHECK_FALSE(desc["dense.q.weight"].contains("sparse"));
  // the parts
  CHECK(r->info("bm.f16.weight.mask").shape == Shape{6, 13});
  CHECK(r->info("bm.f16.weight.values").dtype == DType::F16);
  CHECK(r->info("bm.f16.weight.values").shape == Shape{300});
  CHECK(r->info("bm.int4.weight.qweight").shape == Shape{(8 * 96 - 460 + 1) / 2});
  CHECK(r->info("nm24.int4.weight.indices").shape == Shape{6, 8});  // 32 kept x 2 bits
  CHECK(r->info("nm24.int4.weight.qweight").shape == Shape{6, 16});
  CHECK(r->info("nm48.int8.weight.indices").shape == Shape{3, 9});  // 24 kept x 3 bits
  CHECK(r->info("nm24.gidx.weight.g_idx").shape == Shape{64});
  CHECK_FALSE(r->contains("bm.f16.weight.scales"));
  r.reset();

  const auto got = read_all(path);
  CHECK(got.size() == entries.size() + 2);
  for (const auto& [key, e] : entries) {
    INFO(key);
    REQUIRE(got.count(key));
    CHECK(got.at(key).sizes() == e.weight.sizes());
    CHECK(at::equal(got.at(key), expected(e).reshape(e.weight.sizes())));
  }
  CHECK(at::equal(got.at("dense.q.weight"), dq.dequantize()));
  CHECK(at::equal(got.at("norm.weight"), at::ones({7})));
}

TEST_CASE("PackedEntryReader reads each entry as read_packed_entries and read_packed_checkpoint do", "[pack][sparse]") {
  mctest::TempDir dir;
  const std::string path = dir.file("sparse.safetensors");
  const auto entries = sample_entries();
  QuantResult dq = rtn_quantize(weights(4, 64, 20), spec_of(4, true, 32));
  write_packed_checkpoint(path, {{"norm.weight", at::ones({7})}}, {{"dense.q.weight", dq}}, {}, entries);
  auto whole = open_safetensors(path);
  const auto all = read_packed_entries(*whole);
  const std::vector<HostTensor> dense = read_packed_checkpoint(*whole);
  PackedEntryReader r(open_safetensors(path));
  CHECK(r.keys().size() == all.size());
  // placeholders in read_packed_checkpoint's order: no data, the parameter's shape (a conv kernel's own shape)
  const std::vector<HostTensor> unread = r.parameters_unread();
  REQUIRE(unread.size() == dense.size());
  for (size_t i = 0; i < unread.size(); ++i) {
    INFO(dense[i].name);
    CHECK(unread[i].name == dense[i].name);
    CHECK(unread[i].shape == dense[i].shape);
    CHECK((unread[i].data == nullptr) == r.contains(dense[i].name));
    if (r.contains(dense[i].name)) {
      CHECK(unread[i].dtype == DType::F32);
      CHECK(at::equal(r.dequantized(dense[i].name), to_torch(dense[i])));
      CHECK(r.info(dense[i].name).shape() == dense[i].shape);
    }
  }
  for (const auto& [key, want] : all) {
    INFO(key);
    const PackedEntryParts got = r.load(key);
    const PackedEntryInfo& info = r.info(key);
    CHECK(info.sparse == want.sparse.has_value());
    CHECK(info.spec.has_value() == want.quant.has_value());
    CHECK(got.quant.has_value() == want.quant.has_value());
    if (want.quant) {
      CHECK(at::equal(got.quant->codes, want.quant->codes));
      CHECK(at::equal(got.quant->scales, want.quant->scales));
      CHECK(info.g_idx == want.quant->g_idx.defined());
      CHECK(info.spec->bits == want.quant->spec.bits);
    }
    CHECK(got.mask.defined() == want.mask.defined());
    if (want.mask.defined()) CHECK(at::equal(got.mask, want.mask));
    r.release(key);  // pages handed back; reading again gives the same values
    CHECK(at::equal(r.dequantized(key), r.dequantized(key)));
  }
  CHECK_FALSE(r.contains("norm.weight"));
  CHECK_THROWS_WITH(r.info("norm.weight"), Catch::Contains("no packed tensor 'norm.weight'"));
}

TEST_CASE("sparse float16 values are rounded to float16 on write", "[pack][sparse]") {
  mctest::TempDir dir;
  const std::string path = dir.file("r.safetensors");
  const at::Tensor w = pruned(4, 32, k24, 30);  // float32 values, not float16 ones
  REQUIRE_FALSE(at::equal(w, f16(w)));
  PackedCheckpointWriter pw(path);
  pw.add_sparse("w", w, k24, nullptr);
  pw.finish({});
  CHECK(at::equal(read_all(path).at("w"), f16(w)));
}

TEST_CASE("sparse bytes: 50% sparse costs about half, plus 1 bit per weight of positions", "[pack][sparse]") {
  mctest::TempDir dir;
  const int64_t out = 256, in = 512, n = out * in;
  struct Case {
    const char* name;
    SparseLayout layout;
    std::optional<QuantSpec> spec;
  };
  const std::vector<Case> cases = {{"bitmask fp16", kBitmask, std::nullopt},
                                   {"bitmask int4 sym g32", kBitmask, spec_of(4, true, 32)},
                                   {"bitmask int8 sym per-channel", kBitmask, spec_of(8, true, 0)},
                                   {"2:4 fp16", k24, std::nullopt},
                                   {"2:4 int4 sym g32", k24, spec_of(4, true, 32)},
                                   {"2:4 int8 sym per-channel", k24, spec_of(8, true, 0)},
                                   {"4:8 int4 sym g32", k48, spec_of(4, true, 32)}};
  for (const Case& c : cases) {
    INFO(c.name);
    const at::Tensor w = pruned(out, in, c.layout, 40);
    const std::string path = dir.file("s.safetensors");
    std::optional<QuantResult> q;
    if (c.spec) q = rtn_quantize(w, *c.spec);
    PackedCheckpointWriter pw(path);
    pw.add_sparse("w", w, c.layout, q ? &*q : nullptr);
    pw.finish({});
    const uint64_t bytes = file_tensor_bytes(path);
    const QuantSpec* sp = c.spec ? &*c.spec : nullptr;
    CHECK(int64_t(bytes) == sparse_bytes(out, in, n / 2, c.layout, sp));
    const int64_t dense = dense_packed_bytes(out, in, sp);
    const double bpw = double(bytes) * 8 / double(n), dense_bpw = double(dense) * 8 / double(n);
    WARN(c.name << ": " << bpw << " bits/weight vs dense " << dense_bpw << " (ratio " << double(bytes) / double(dense)
                << ")");
    // half of the dense codes or values + 1 bit per weight for the positions (bitmask: 1 bit per
    // weight; 2:4: a 2-bit position per kept weight; 4:8: 3 bits per kept = 1.5) + the unchanged grid
    const double value_bits = c.spec ? c.spec->bits : 16;
    const double pos_bits = c.layout.bitmask() ? 1.0 : 0.5 * c.layout.index_bits();
    const double grid_bits = dense_bpw - value_bits;
    CHECK(bpw == Approx(value_bits / 2 + pos_bits + grid_bits).epsilon(1e-12));
    if (c.layout.bitmask() || c.layout.m == 4) CHECK(bpw < dense_bpw);
    read_all(path);  // and it reads back
  }
  // the headline figures: 50% int4 g32 costs 3.5 of dense 4.5 bits; fp16 9 of 16
  const QuantSpec s4 = spec_of(4, true, 32);
  CHECK(double(sparse_bytes(out, in, n / 2, kBitmask, &s4)) * 8 / double(n) == 3.5);
  CHECK(double(sparse_bytes(out, in, n / 2, k24, &s4)) * 8 / double(n) == 3.5);
  CHECK(double(sparse_bytes(out, in, n / 2, kBitmask, nullptr)) * 8 / double(n) == 9.0);
}

TEST_CASE("sparse writer refusals", "[pack][sparse]") {
  mctest::TempDir dir;
  const std::string path = dir.file("w.safetensors");
  SECTION("a group with more survivors than the N:M layout keeps") {
    at::Tensor w = pruned(3, 16, k24, 50);
    w[1][8] = 0.f, w[1][9] = 0.5f, w[1][10] = 0.5f, w[1][11] = 0.5f;
    CHECK_THROWS_WITH(write_packed_checkpoint(path, {}, {}, {}, {{"w", {w, k24, std::nullopt}}}),
                      Catch::Contains("w: row 1, columns 8..11 hold 3 non-zeros; a 2:4 layout keeps 2"));
    CHECK(mctest::count_files(dir.path) == 0);
  }
  SECTION("m not dividing the row") {
    CHECK_THROWS_WITH(write_packed_checkpoint(path, {}, {}, {}, {{"w", {weights(2, 10, 1), k24, std::nullopt}}}),
                      Catch::Contains("do not divide in_features 10"));
  }
  SECTION("values beyond float16") {
    at::Tensor w = pruned(2, 16, kBitmask, 51);
    w[0][3] = 1e6f;
    CHECK_THROWS_WITH(write_packed_checkpoint(path, {}, {}, {}, {{"w", {w, kBitmask, std::nullopt}}}),
                      Catch::Contains("not a finite float16 value"));
  }
  SECTION("codes that do not dequantize to 0 where the weight is pruned") {
    const at::Tensor w = pruned(2, 32, kBitmask, 52);
    const QuantResult q = rtn_quantize(weights(2, 32, 52), spec_of(4, true, 32));  // of the unpruned weight
    CHECK_THROWS_WITH(write_packed_checkpoint(path, {}, {}, {}, {{"w", {w, kBitmask, q}}}),
                      Catch::Contains("where the weight is pruned"));
  }
  SECTION("a key given both sparse and dense") {
    CHECK_THROWS_AS(write_packed_checkpoint(path, {{"w", at::ones({2})}}, {}, {}, {{"w", {weights(2, 8, 1), kBitmask, std::nullopt}}}),
                    InputError);
  }
}

TEST_CASE("sparse reader: malformed files name the file and tensor", "[pack][sparse]") {
  mctest::TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const at::Tensor wb = f16(pruned(2, 12, kBitmask, 60));  // 12 of 24 kept; 2 mask bytes per row
  const at::Tensor wn = f16(pruned(2, 12, SparseLayout{3, 6}, 61));  // 3:6 -> 3-bit positions
  auto write = [&] {
    write_packed_checkpoint(path, {}, {}, {},
                            {{"b", {wb, kBitmask, std::nullopt}}, {"n", {wn, SparseLayout{3, 6}, std::nullopt}}});
  };
  write();
  REQUIRE(read_error(path) == "(no error)");
  std::vector<uint8_t> mask;
  {
    auto r = open_safetensors(path);
    const HostTensor m = r->load("b.mask");
    mask.assign(m.data, m.data + m.nbytes);
  }
  SECTION("mask of the wrong length") {
    rewrite(path, u8("b.mask", {2, 1}, {0xff, 0x0f}));
    CHECK_THAT(read_error(path), Catch::Contains(path) && Catch::Contains("'b.mask' is U8 [2, 1], expected U8 [2, 2]"));
  }
  SECTION("mask bits past the last column") {
    mask[3] |= 0x20;  // row 1, column 13
    rewrite(path, u8("b.mask", {2, 2}, mask));
    CHECK_THAT(read_error(path), Catch::Contains("'b.mask' row 1 marks column 13, past the last column 11"));
  }
  SECTION("mask count against kept") {
    mask[0] ^= 0x01;
    rewrite(path, u8("b.mask", {2, 2}, mask));
    CHECK_THAT(read_error(path), Catch::Contains("'b.mask' marks") && Catch::Contains("\"kept\": 12"));
  }
  SECTION("values of the wrong count or dtype") {
    rewrite(path, HostTensor::owned("b.values", DType::F16, {11}, std::vector<uint8_t>(22)));
    CHECK_THAT(read_error(path), Catch::Contains("'b.values' is F16 [11], expected F16 [12]"));
    rewrite(path, HostTensor::owned("b.values", DType::F32, {12}, std::vector<uint8_t>(48)));
    CHECK_THAT(read_error(path), Catch::Contains("'b.values' is F32 [12], expected F16 [12]"));
  }
  SECTION("a position outside the group, and positions out of order") {
    // 3:6 keeps 3 per group, 2 groups per row: 6 positions x 3 bits = 18 bits -> 3 bytes per row
    std::vector<uint8_t> idx(6, 0);
    auto put = [&](int row, const std::vector<int>& pos) {
      uint32_t v = 0;
      for (size_t k = 0; k < pos.size(); ++k) v |= uint32_t(pos[k]) << (3 * k);
      for (int b = 0; b < 3; ++b) idx[size_t(row * 3 + b)] = uint8_t(v >> (8 * b));
    };
    put(0, {0, 1, 2, 3, 4, 5});
    put(1, {0, 2, 7, 1, 2, 3});
    rewrite(path, u8("n.indices", {2, 3}, idx));
    CHECK_THAT(read_error(path), Catch::Contains("'n.indices' row 1 group 0 holds position 7, outside 0..5"));
    put(1, {0, 2, 5, 3, 3, 4});
    rewrite(path, u8("n.indices", {2, 3}, idx));
    CHECK_THAT(read_error(path), Catch::Contains("'n.indices' row 1 group 1: positions are not strictly ascending"));
  }
  SECTION("a part the layout does not use") {
    rewrite(path, u8("b.indices", {2, 1}, {0, 0}));
    CHECK_THAT(read_error(path), Catch::Contains("packed tensor 'b' has 'b.indices', which its description (F16, bitmask) does not use"));
  }
  SECTION("description errors") {
    auto with_desc = [&](const std::string& entry) {
      rewrite(path, u8("", {}, {}), R"({"format":"mcompress-packed-v1","tensors":{"n":)" + entry + "}}");
      return read_error(path);
    };
    CHECK_THAT(with_desc(R"({"dtype":"F16","shape":[2,12],"sparse":{"layout":"n:m","n":3,"m":6,"kept":13}})"),
               Catch::Contains("sparse tensor 'n': \"kept\": 13, a 3:6 layout of 2x12 keeps 12"));
    CHECK_THAT(with_desc(R"({"dtype":"F16","shape":[2,12],"sparse":{"layout":"csr","kept":12}})"),
               Catch::Contains("packed tensor 'n': bad description: sparse layout 'csr'"));
    CHECK_THAT(with_desc(R"({"dtype":"BF16","shape":[2,12],"sparse":{"layout":"n:m","n":3,"m":6,"kept":12}})"),
               Catch::Contains("\"dtype\": \"F16\""));
    CHECK_THAT(with_desc(R"({"dtype":"F16","shape":[2,12],"sparse":{"layout":"n:m","n":3,"m":5,"kept":12}})"),
               Catch::Contains("groups of 5 columns do not divide in_features 12"));
    CHECK_THAT(with_desc(R"({"bits":4,"group_size":32,"symmetric":true,"shape":[2,12],"sparse":{"layout":"n:m","n":3,"m":6,"kept":12}})"),
               Catch::Contains("packed tensor 'n' lacks 'n.qweight'"));
  }
  SECTION("a dense quantized entry with a sparse part next to it") {
    write_packed_checkpoint(path, {}, {{"q", rtn_quantize(weights(2, 32, 1), spec_of(4, true, 32))}}, {});
    rewrite(path, u8("q.mask", {2, 4}, std::vector<uint8_t>(8)));
    CHECK_THAT(read_error(path), Catch::Contains("'q' has 'q.mask', which its description (int4, dense) does not use"));
  }
}

// Writes files for tests/python/test_packed_layout.py (hidden; run with MC_PACKED_EXPORT=<dir>):
// sparse.safetensors (the sparse sample entries, a dense quantized weight and a dense tensor) and
// sparse_reference.safetensors with what each must read back as.
TEST_CASE("export sparse entries for the Python layout check", "[.sparse-export]") {
  const char* dir = std::getenv("MC_PACKED_EXPORT");
  if (!dir) {
    WARN("skipped: set MC_PACKED_EXPORT to a directory");
    return;
  }
  const auto entries = sample_entries();
  const QuantResult dq = rtn_quantize(weights(4, 64, 20), spec_of(4, false, 32));
  write_packed_checkpoint(std::string(dir) + "/sparse.safetensors", {{"norm.weight", at::ones({7})}},
                          {{"dense.q.weight", dq}}, {{"note", "sparse"}}, entries);
  std::vector<HostTensor> ref = {from_torch("norm.weight", at::ones({7})), from_torch("dense.q.weight", dq.dequantize())};
  for (const auto& [key, e] : entries) ref.push_back(from_torch(key, expected(e).reshape(e.weight.sizes()).contiguous()));
  write_safetensors(std::string(dir) + "/sparse_reference.safetensors", ref, {});
}
