// Code packing and packed safetensors checkpoints: bytes packed by hand and by a bit-by-bit oracle,
// round trips for every width, the file round trip (exactly the dequantization the codes encode, also
// with act-order GPTQ's column -> group map g_idx), the 4.5 bits per weight of int4 g32 and the errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/packed.h"
#include "mcompress/torch_bridge.h"
#include "quant_helpers.h"
#include "test_utils.h"

using namespace mc;

namespace {

// Oracle: sets bit (k*bits + j) of the row for bit j of code k, one bit at a time.
std::vector<uint8_t> pack_bitwise(const std::vector<uint8_t>& codes, int64_t rows, int64_t cols, int bits) {
  const int64_t rb = (cols * bits + 7) / 8;
  std::vector<uint8_t> out(size_t(rows * rb), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      for (int j = 0; j < bits; ++j) {
        const int64_t bit = k * bits + j;
        if ((codes[size_t(r * cols + k)] >> j) & 1) out[size_t(r * rb + bit / 8)] |= uint8_t(1 << (bit % 8));
      }
  return out;
}

at::Tensor random_codes(int64_t rows, int64_t cols, int bits, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(0, 1 << bits, {rows, cols}, gen, at::kByte);
}

using mctest::spec_of;
using mctest::weights;

std::vector<uint8_t> bytes_of(const std::initializer_list<int>& codes, int bits) {
  std::vector<uint8_t> c;
  for (int v : codes) c.push_back(uint8_t(v));
  return pack_codes(at::from_blob(c.data(), {1, int64_t(c.size())}, at::kByte).clone(), bits);
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

// GPTQ with act_order and dynamic groups on a random layer whose input channels have very different
// scales (so the order is far from the identity): its groups are not column ranges, quant.g_idx is set.
// 100 = 3 x 32 + 4 columns: the short group is the last one in quantization order.
QuantResult act_order_gptq(int64_t out, int64_t in, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const at::Tensor x = at::randn({4 * in, in}, gen, at::kFloat).mul_(at::rand({in}, gen, at::kFloat).add_(0.1));
  GptqOptions o;
  o.spec = spec_of(4, false, 32);
  o.act_order = true;
  const GptqResult g = gptq_quantize(weights(out, in, seed + 1), x.t().matmul(x).div_(double(x.size(0))), o);
  REQUIRE(g.quant.g_idx.defined());
  return g.quant;
}

// Replaces (or adds) one tensor of a safetensors file, keeping the rest and the metadata.
void rewrite(const std::string& path, const HostTensor& t) {
  auto r = open_safetensors(path);
  std::vector<HostTensor> ts = r->load_all();
  bool found = false;
  for (HostTensor& x : ts)
    if (x.name == t.name) x = t, found = true;
  if (!found) ts.push_back(t);
  std::map<std::string, std::string> meta = r->metadata();
  r.reset();
  write_safetensors(path, ts, meta);
}

// A small model: packed layers of several kinds and dense tensors.
struct Sample {
  std::map<std::string, at::Tensor> dense;
  std::map<std::string, QuantResult> quantized;
  Sample() {
    dense["norm.weight"] = at::linspace(0.5, 1.5, 100, at::kFloat);
    dense["step"] = at::arange(3, at::kLong);
    quantized["layers.0.attention.wq.weight"] = rtn_quantize(weights(64, 256, 1), spec_of(4, true, 32));
    quantized["layers.0.feed_forward.w1.weight"] = rtn_quantize(weights(5, 100, 2), spec_of(3, false, 32));
    quantized["layers.0.feed_forward.w2.weight"] = rtn_quantize(weights(7, 33, 3), spec_of(8, false, 0));
    quantized["output.weight"] = rtn_quantize(weights(3, 21, 4), spec_of(2, true, -1));
    quantized["tok_embeddings.weight"] = rtn_quantize(weights(9, 70, 5), spec_of(5, true, 64));
    quantized["layers.0.feed_forward.w3.weight"] = act_order_gptq(6, 100, 6);
  }
};

}  // namespace

TEST_CASE("pack: int4/int2/int3 bytes by hand", "[pack]") {
  CHECK(bytes_of({1, 2}, 4) == std::vector<uint8_t>{0x21});
  CHECK(bytes_of({1, 2, 3}, 4) == std::vector<uint8_t>{0x21, 0x03});           // padded high nibble
  CHECK(bytes_of({1, 2, 3, 0, 3}, 2) == std::vector<uint8_t>{0x39, 0x03});    // 00 11 10 01
  // int3 codes 1..7,0 -> sum c_k << 3k = 0x1F58D1 -> D1 58 1F
  CHECK(bytes_of({1, 2, 3, 4, 5, 6, 7, 0}, 3) == std::vector<uint8_t>{0xD1, 0x58, 0x1F});
  CHECK(bytes_of({200, 7}, 8) == std::vector<uint8_t>{200, 7});
  CHECK(packed_row_bytes(100, 3) == 38);
}

TEST_CASE("pack/unpack round trip for every width and odd row lengths, bytes as the oracle", "[pack]") {
  for (int bits = 2; bits <= 8; ++bits)
    for (int64_t cols : {1, 3, 5, 7, 13, 33, 100, 257}) {
      INFO("bits " << bits << " cols " << cols);
      const int64_t rows = 6;
      at::Tensor c = random_codes(rows, cols, bits, uint64_t(bits * 1000 + cols));
      std::vector<uint8_t> packed = pack_codes(c, bits);
      REQUIRE(int64_t(packed.size()) == rows * packed_row_bytes(cols, bits));
      std::vector<uint8_t> cv(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + rows * cols);
      CHECK(packed == pack_bitwise(cv, rows, cols, bits));
      CHECK(at::equal(unpack_codes(packed.data(), rows, cols, bits), c));
    }
}

TEST_CASE("pack: codes that do not fit and bad widths are rejected", "[pack]") {
  at::Tensor c = at::zeros({2, 9}, at::kByte);
  c[1][4] = 16;
  CHECK_THROWS_WITH(pack_codes(c, 4), Catch::Contains("code 16 at [1, 4] does not fit in 4 bits"));
  CHECK_THROWS_WITH(pack_codes(c, 9), Catch::Contains("bits 9 outside 2..8"));
  CHECK_THROWS_AS(pack_codes(c.to(at::kInt), 8), InputError);
}

TEST_CASE("packed checkpoint round trip: exact dequantization, dense unchanged, metadata merged", "[pack]") {
  mctest::TempDir dir;
  const std::string path = dir.file("model.safetensors");
  Sample m;
  write_packed_checkpoint(path, m.dense, m.quantized, {{"mcompress.config", "{\"dim\": 64}"}});
  auto reader = open_safetensors(path);
  REQUIRE(is_packed_checkpoint(*reader));
  CHECK(reader->metadata().at("mcompress.config") == "{\"dim\": 64}");
  auto desc = nlohmann::json::parse(reader->metadata().at(kPackedMetadataKey));
  CHECK(desc["format"] == "mcompress-packed-v1");
  CHECK(desc["tensors"]["layers.0.feed_forward.w1.weight"]["bits"] == 3);
  CHECK(desc["tensors"]["layers.0.feed_forward.w1.weight"]["shape"] == nlohmann::json::array({5, 100}));
  CHECK(desc["tensors"]["output.weight"]["group_size"] == -1);
  // the layout: asymmetric weights have zeros, symmetric ones do not
  CHECK(reader->info("layers.0.feed_forward.w1.weight.zeros").shape == Shape{5, 2});  // 4 groups x 3 bits
  CHECK(reader->info("layers.0.feed_forward.w1.weight.qweight").shape == Shape{5, 38});
  CHECK(reader->info("tok_embeddings.weight.scales").dtype == DType::F16);
  CHECK_FALSE(reader->contains("layers.0.attention.wq.weight.zeros"));
  // g_idx only where the groups are not column ranges; the other entries do not mention it
  CHECK(desc["tensors"]["layers.0.feed_forward.w3.weight"]["g_idx"] == true);
  CHECK(reader->info("layers.0.feed_forward.w3.weight.g_idx").dtype == DType::I32);
  CHECK(reader->info("layers.0.feed_forward.w3.weight.g_idx").shape == Shape{100});
  CHECK_FALSE(desc["tensors"]["layers.0.attention.wq.weight"].contains("g_idx"));
  CHECK_FALSE(reader->contains("layers.0.attention.wq.weight.g_idx"));

  std::vector<HostTensor> got = read_packed_checkpoint(*reader);
  CHECK(got.size() == m.dense.size() + m.quantized.size());
  std::map<std::string, HostTensor> by_name;
  for (auto& t : got) by_name.emplace(t.name, t);
  for (const auto& [name, q] : m.quantized) {
    INFO(name);
    REQUIRE(by_name.count(name));
    const HostTensor& t = by_name.at(name);
    CHECK(t.dtype == DType::F32);
    CHECK(at::equal(to_torch(t), q.dequantize()));
  }
  for (const auto& [name, d] : m.dense) {
    INFO(name);
    REQUIRE(by_name.count(name));
    CHECK(at::equal(to_torch(by_name.at(name)), d));
  }
}

TEST_CASE("packed int4 g32 symmetric costs 4.5 bits per weight including scales", "[pack]") {
  mctest::TempDir dir;
  const std::string path = dir.file("w4.safetensors");
  const int64_t out = 64, in = 256;
  write_packed_checkpoint(path, {}, {{"w", rtn_quantize(weights(out, in, 9), spec_of(4, true, 32))}}, {});
  auto reader = open_safetensors(path);
  uint64_t bytes = 0;
  for (const TensorInfo& ti : reader->tensors()) bytes += ti.nbytes;
  // 4 bits per code + one 16-bit scale per 32 weights = 4 + 0.5
  CHECK(double(bytes) * 8 / double(out * in) == 4.5);
  CHECK(reader->tensors().size() == 2);
}

TEST_CASE("packed checkpoint: bad inputs and malformed files", "[pack]") {
  mctest::TempDir dir;
  const std::string path = dir.file("m.safetensors");
  QuantResult q = rtn_quantize(weights(4, 64, 11), spec_of(4, true, 32));
  SECTION("scales that are not fp16 values are refused, no file written") {
    QuantResult bad = q;
    bad.scales = q.scales * 1.0001f;
    CHECK_THROWS_WITH(write_packed_checkpoint(path, {}, {{"w", bad}}, {}), Catch::Contains("float16 values"));
    CHECK(mctest::count_files(dir.path) == 0);
  }
  SECTION("a name both dense and quantized") {
    CHECK_THROWS_AS(write_packed_checkpoint(path, {{"w", at::ones({2})}}, {{"w", q}}, {}), InputError);
  }
  SECTION("missing scales") {
    write_safetensors(path, {HostTensor::owned("w.qweight", DType::U8, {4, 32}, std::vector<uint8_t>(128))},
                      {{kPackedMetadataKey, R"({"format":"mcompress-packed-v1","tensors":{"w":{"bits":4,)"
                                            R"("group_size":32,"symmetric":true,"shape":[4,64]}}})"}});
    CHECK_THAT(read_error(path), Catch::Contains("packed tensor 'w' lacks 'w.scales'"));
  }
  SECTION("bad metadata") {
    write_safetensors(path, {}, {{kPackedMetadataKey, "{not json"}});
    CHECK_THAT(read_error(path), Catch::Contains("not valid JSON"));
    write_safetensors(path, {}, {{kPackedMetadataKey, R"({"format":"other-v9","tensors":{}})"}});
    CHECK_THAT(read_error(path), Catch::Contains("unsupported packed format 'other-v9'"));
    write_safetensors(path, {}, {{kPackedMetadataKey, R"({"format":"mcompress-packed-v1","tensors":{"w":)"
                                                      R"({"bits":12,"group_size":32,"symmetric":true,"shape":[4,64]}}})"}});
    CHECK_THAT(read_error(path), Catch::Contains("bits 12 outside 2..8"));
  }
  SECTION("wrong qweight shape") {
    write_packed_checkpoint(path, {}, {{"w", q}}, {});
    rewrite(path, HostTensor::owned("w.qweight", DType::U8, {4, 31}, std::vector<uint8_t>(124)));
    CHECK_THAT(read_error(path), Catch::Contains("'w.qweight' is U8 [4, 31], expected U8 [4, 32]"));
  }
  SECTION("a g_idx that does not fit is refused on write, no file written") {
    QuantResult bad = q;
    bad.g_idx = at::zeros({64}, at::kInt);
    bad.g_idx[5] = 2;  // 2 groups of 32
    CHECK_THROWS_WITH(write_packed_checkpoint(path, {}, {{"w", bad}}, {}),
                      Catch::Contains("w: g_idx values must lie in 0..1"));
    bad.g_idx = at::zeros({63}, at::kInt);
    CHECK_THROWS_WITH(write_packed_checkpoint(path, {}, {{"w", bad}}, {}), Catch::Contains("g_idx must be an integer [64]"));
    CHECK(mctest::count_files(dir.path) == 0);
  }
  SECTION("a malformed g_idx in the file names the file and tensor") {
    QuantResult gq = q;
    gq.g_idx = at::arange(64, at::kInt).remainder(2);  // columns alternate between the 2 groups
    write_packed_checkpoint(path, {}, {{"w", gq}}, {});
    {
      auto r = open_safetensors(path);
      CHECK(at::equal(to_torch(read_packed_checkpoint(*r).at(0)), gq.dequantize()));
    }
    std::vector<int32_t> gv(64, 1);
    gv[7] = 2;
    rewrite(path, HostTensor::owned("w.g_idx", DType::I32, {64}, std::vector<uint8_t>((uint8_t*)gv.data(), (uint8_t*)(gv.data() + 64))));
    CHECK_THAT(read_error(path), Catch::Contains(path) && Catch::Contains("'w.g_idx' maps column 7 to group 2, outside 0..1"));
    gv[7] = -1;
    rewrite(path, HostTensor::owned("w.g_idx", DType::I32, {64}, std::vector<uint8_t>((uint8_t*)gv.data(), (uint8_t*)(gv.data() + 64))));
    CHECK_THAT(read_error(path), Catch::Contains("'w.g_idx' maps column 7 to group -1"));
    rewrite(path, HostTensor::owned("w.g_idx", DType::I32, {32}, std::vector<uint8_t>(128)));
    CHECK_THAT(read_error(path), Catch::Contains("'w.g_idx' is I32 [32], expected I32 [64]"));
  }
  SECTION("a g_idx tensor the description does not announce, or an announced one that is missing") {
    write_packed_checkpoint(path, {}, {{"w", q}}, {});
    rewrite(path, HostTensor::owned("w.g_idx", DType::I32, {64}, std::vector<uint8_t>(256)));
    CHECK_THAT(read_error(path), Catch::Contains("has 'w.g_idx' but its description lacks \"g_idx\": true"));
    write_safetensors(path, {HostTensor::owned("w.qweight", DType::U8, {4, 32}, std::vector<uint8_t>(128)),
                             HostTensor::owned("w.scales", DType::F16, {4, 2}, std::vector<uint8_t>(16))},
                      {{kPackedMetadataKey, R"({"format":"mcompress-packed-v1","tensors":{"w":{"bits":4,)"
                                            R"("group_size":32,"symmetric":true,"shape":[4,64],"g_idx":true}}})"}});
    CHECK_THAT(read_error(path), Catch::Contains("packed tensor 'w' lacks 'w.g_idx'"));
  }
}

// Writes files for tests/python/test_packed_layout.py (hidden; run with MC_PACKED_EXPORT=<dir>):
// packed.safetensors and reference.safetensors with the C++ dequantization of each packed weight.
TEST_CASE("export a packed checkpoint for the Python layout check", "[.pack-export]") {
  const char* dir = std::getenv("MC_PACKED_EXPORT");
  if (!dir) {
    WARN("skipped: set MC_PACKED_EXPORT to a directory");
    return;
  }
  Sample m;
  write_packed_checkpoint(std::string(dir) + "/packed.safetensors", m.dense, m.quantized, {{"note", "export"}});
  std::vector<HostTensor> ref;
  for (const auto& [name, q] : m.quantized) ref.push_back(from_torch(name, q.dequantize()));
  for (const auto& [name, d] : m.dense) ref.push_back(from_torch(name, d));
  write_safetensors(std::string(dir) + "/reference.safetensors", ref, {});
}
