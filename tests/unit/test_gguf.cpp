// GGUF reader against files built byte by byte here (a tiny writer following the GGUF v3 spec).
#include <algorithm>
#include <cstring>
#include <tuple>

#include "mcompress/error.h"
#include "mcompress/ggml_blocks.h"
#include "mcompress/half.h"
#include "mcompress/io/gguf.h"
#include "test_utils.h"

namespace {

enum : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };

struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
};

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  std::vector<uint8_t> data;
  int64_t offset = -1;  // relative to the data section; -1: next aligned position
};

struct GgufSpec {
  uint32_t version = 3;
  uint64_t alignment = 32;  // only used for layout; add the general.alignment kv yourself
  std::vector<std::pair<std::string, Bytes>> kvs;  // key -> type + value bytes
  std::vector<TensorSpec> tensors;
};

std::vector<uint8_t> build(const GgufSpec& s) {
  Bytes f;
  f.b = {'G', 'G', 'U', 'F'};
  f.put<uint32_t>(s.version).put<uint64_t>(s.tensors.size()).put<uint64_t>(s.kvs.size());
  for (const auto& [k, v] : s.kvs) {
    f.str(k);
    f.b.insert(f.b.end(), v.b.begin(), v.b.end());
  }
  uint64_t next = 0;
  std::vector<uint64_t> offsets;
  for (const auto& t : s.tensors) {
    const uint64_t off = t.offset >= 0 ? uint64_t(t.offset) : next;
    offsets.push_back(off);
    next = std::max(next, (off + t.data.size() + s.alignment - 1) / s.alignment * s.alignment);
    f.str(t.name).put<uint32_t>(uint32_t(t.ne.size()));
    for (uint64_t d : t.ne) f.put<uint64_t>(d);
    f.put<uint32_t>(t.type).put<uint64_t>(off);
  }
  while (f.b.size() % s.alignment) f.b.push_back(0);
  const size_t data_start = f.b.size();
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    const auto& d = s.tensors[i].data;
    if (offsets[i] > (1u << 20)) continue;  // a deliberately bad offset: leave the data out
    if (f.b.size() < data_start + offsets[i] + d.size()) f.b.resize(data_start + offsets[i] + d.size(), 0);
    std::copy(d.begin(), d.end(), f.b.begin() + long(data_start + offsets[i]));
  }
  return f.b;
}

Bytes scalar_u32(uint32_t v) { return Bytes().put<uint32_t>(U32).put<uint32_t>(v); }
Bytes string_kv(const std::string& v) {
  Bytes b;
  b.put<uint32_t>(STRING).str(v);
  return b;
}

template <typename T>
std::vector<uint8_t> raw(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// A valid file: kvs of every type, F32/F16/Q8_0/Q4_0 tensors, alignment 64.
GgufSpec full_spec() {
  GgufSpec s;
  s.alignment = 64;
  s.kvs.push_back({"general.architecture", string_kv("llama")});
  s.kvs.push_back({"general.alignment", scalar_u32(64)});
  s.kvs.push_back({"k.u8", Bytes().put<uint32_t>(U8).put<uint8_t>(200)});
  s.kvs.push_back({"k.i8", Bytes().put<uint32_t>(I8).put<int8_t>(-5)});
  s.kvs.push_back({"k.u16", Bytes().put<uint32_t>(U16).put<uint16_t>(65535)});
  s.kvs.push_back({"k.i16", Bytes().put<uint32_t>(I16).put<int16_t>(-300)});
  s.kvs.push_back({"k.i32", Bytes().put<uint32_t>(I32).put<int32_t>(-70000)});
  s.kvs.push_back({"k.f32", Bytes().put<uint32_t>(F32).put<float>(0.1f)});
  s.kvs.push_back({"k.bool", Bytes().put<uint32_t>(BOOL).put<uint8_t>(1)});
  s.kvs.push_back({"k.u64", Bytes().put<uint32_t>(U64).put<uint64_t>(18446744073709551615ull)});
  s.kvs.push_back({"k.i64", Bytes().put<uint32_t>(I64).put<int64_t>(-9000000000ll)});
  s.kvs.push_back({"k.f64", Bytes().put<uint32_t>(F64).put<double>(2.5)});
  Bytes ints;
  ints.put<uint32_t>(ARRAY).put<uint32_t>(I32).put<uint64_t>(600);
  for (int i = 0; i < 600; ++i) ints.put<int32_t>(i);
  s.kvs.push_back({"k.arr_i32", ints});
  Bytes strs;
  strs.put<uint32_t>(ARRAY).put<uint32_t>(STRING).put<uint64_t>(3).str("a").str("bb").str("");
  s.kvs.push_back({"k.arr_str", strs});
  s.kvs.push_back({"k.arr_f32", Bytes().put<uint32_t>(ARRAY).put<uint32_t>(F32).put<uint64_t>(2).put<float>(1.5f).put<float>(-2.0f)});
  Bytes nested;
  nested.put<uint32_t>(ARRAY).put<uint32_t>(ARRAY).put<uint64_t>(2);
  nested.put<uint32_t>(U8).put<uint64_t>(2).put<uint8_t>(1).put<uint8_t>(2);
  nested.put<uint32_t>(BOOL).put<uint64_t>(1).put<uint8_t>(0);
  s.kvs.push_back({"k.nested", nested});

  std::vector<float> f32 = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> f16 = {mc::f32_to_f16(0.5f), mc::f32_to_f16(-1.0f), mc::f32_to_f16(65504.0f),
                               mc::f32_to_f16(0.0f)};
  std::vector<float> src(64);
  for (int i = 0; i < 64; ++i) src[i] = float(i % 13) - 6.0f;
  std::vector<uint8_t> q8(*mc::dtype_nbytes(mc::DType::Q8_0, 64)), q4(*mc::dtype_nbytes(mc::DType::Q4_0, 32));
  mc::quantize_blocks_ref(mc::DType::Q8_0, src.data(), 64, q8.data());
  mc::quantize_blocks_ref(mc::DType::Q4_0, src.data(), 32, q4.data());
  s.tensors.push_back({"w.f32", {3, 2}, 0, raw(f32)});
  s.tensors.push_back({"w.f16", {4}, 1, raw(f16)});
  s.tensors.push_back({"w.q8", {32, 2}, 8, q8});
  s.tensors.push_back({"w.q4", {32, 1, 1, 1}, 2, q4});
  return s;
}

std::string write_file(const mctest::TempDir& dir, const std::vector<uint8_t>& bytes, const char* name = "m.gguf") {
  std::string p = dir.file(name);
  mctest::write_bytes(p, bytes);
  return p;
}

// Opening must fail with an InputError whose message contains `needle`.
void expect_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
  mctest::TempDir dir;
  std::string p = write_file(dir, bytes);
  try {
    mc::open_gguf(p);
    FAIL("no error; expected one mentioning '" << needle << "'");
  } catch (const mc::InputError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).rfind("[gguf] " + p + ": ", 0) == 0);
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("GGUF: key/values of every type and F32/F16/Q8_0/Q4_0 tensors", "[gguf]") {
  mctest::TempDir dir;
  GgufSpec spec = full_spec();
  std::string p = write_file(dir, build(spec));
  REQUIRE(mc::detect_format(p) == "gguf");
  auto r = mc::open_checkpoint(p);
  CHECK(r->format() == "gguf");
  CHECK(mc::gguf_version(*r) == 3);
  CHECK(mc::gguf_alignment(*r) == 64);

  const auto& md = r->metadata();
  CHECK(md.at("gguf.version") == "3");
  CHECK(md.at("general.architecture") == "llama");
  CHECK(md.at("k.u8") == "200");
  CHECK(md.at("k.i8") == "-5");
  CHECK(md.at("k.u16") == "65535");
  CHECK(md.at("k.i16") == "-300");
  CHECK(md.at("k.i32") == "-70000");
  CHECK(md.at("k.f32") == "0.1");  // shortest float32 spelling
  CHECK(md.at("k.bool") == "true");
  CHECK(md.at("k.u64") == "18446744073709551615");
  CHECK(md.at("k.i64") == "-9000000000");
  CHECK(md.at("k.f64") == "2.5");
  CHECK(md.at("k.arr_i32") == "[600 items: 0, 1, 2, 3, 4, 5, 6, 7, ...]");
  CHECK(md.at("k.arr_str") == "[a, bb, ]");
  CHECK(md.at("k.arr_f32") == "[1.5, -2]");
  CHECK(md.at("k.nested") == "[[1, 2], [false]]");

  const auto& kv = mc::gguf_kv(*r);
  REQUIRE(kv.size() == spec.kvs.size());
  CHECK(kv[0].first == "general.architecture");
  CHECK(kv[0].second.s == "llama");
  CHECK(kv[1].second.type == mc::GgufType::U32);
  CHECK(kv[1].second.i == 64);
  const auto& arr = kv[12].second;
  CHECK(arr.type == mc::GgufType::ARRAY);
  CHECK(arr.elem_type == mc::GgufType::I32);
  REQUIRE(arr.ai.size() == 600);
  CHECK(arr.ai[599] == 599);
  CHECK(kv[9].second.u == 18446744073709551615ull);

  REQUIRE(r->tensors().size() == 4);
  for (const auto& ti : r->tensors()) CHECK(ti.offset % 64 == 0);
  CHECK(r->info("w.f32").shape == mc::Shape{2, 3});  // ne reversed
  CHECK(r->info("w.q8").shape == mc::Shape{2, 32});
  CHECK(r->info("w.q4").shape == mc::Shape{1, 1, 1, 32});
  auto f32 = mc::to_f32(r->load("w.f32"));
  CHECK(f32 == std::vector<float>{1, 2, 3, 4, 5, 6});
  auto f16 = r->load("w.f16");
  CHECK(f16.dtype == mc::DType::F16);
  CHECK(mc::to_f32(f16) == std::vector<float>{0.5f, -1.0f, 65504.0f, 0.0f});
  for (const auto& [name, type, n, idx] : {std::tuple{"w.q8", mc::DType::Q8_0, 64, 2}, std::tuple{"w.q4", mc::DType::Q4_0, 32, 3}}) {
    auto t = r->load(name);
    CHECK(t.dtype == type);
    REQUIRE(t.nbytes == spec.tensors[idx].data.size());
    CHECK(std::memcmp(t.data, spec.tensors[idx].data.data(), t.nbytes) == 0);
    std::vector<float> expect(n);
    mc::dequantize_blocks(type, spec.tensors[idx].data.data(), n, expect.data());
    CHECK(mc::to_f32(t) == expect);
  }
}

TEST_CASE("GGUF: version 2, default alignment 32, no tensors", "[gguf]") {
  mctest::TempDir dir;
  GgufSpec s;
  s.version = 2;
  s.tensors.push_back({"a", {5}, 0, raw(std::vector<float>{1, 2, 3, 4, 5})});
  s.tensors.push_back({"b", {2, 2}, 26, raw(std::vector<int32_t>{-1, 2, -3, 4})});
  auto r = mc::open_gguf(write_file(dir, build(s)));
  CHECK(mc::gguf_version(*r) == 2);
  CHECK(mc::gguf_alignment(*r) == 32);
  CHECK(r->info("b").dtype == mc::DType::I32);
  CHECK(r->info("b").offset % 32 == 0);
  CHECK(mc::to_f32(r->load("b")) == std::vector<float>{-1, 2, -3, 4});

  GgufSpec empty;
  empty.kvs.push_back({"x", string_kv("y")});
  auto e = mc::open_gguf(write_file(dir, build(empty), "e.gguf"));
  CHECK(e->tensors().empty());
  CHECK(e->metadata().at("x") == "y");
}

TEST_CASE("GGUF: malformed files raise InputError naming the problem", "[gguf]") {
  const std::vector<uint8_t> good = build(full_spec());
  auto with = [&](auto&& edit) {
    GgufSpec s = full_spec();
    edit(s);
    return build(s);
  };

  SECTION("wrong magic") {
    auto b = good;
    b[0] = 'X';
    expect_error(b, "magic 'XGUF', expected 'GGUF'");
  }
  SECTION("truncated at several points") {
    // empty, inside magic, inside counts, inside the kvs, inside the tensor infos, inside the data
    const std::string first_name = "w.f32";
    const size_t infos = size_t(std::search(good.begin(), good.end(), first_name.begin(), first_name.end()) - good.begin());
    REQUIRE(infos < good.size());
    for (size_t cut : {size_t(0), size_t(3), size_t(20), size_t(60), size_t(200), infos - 4, infos + 3, infos + 10,
                       good.size() - 120, good.size() - 1}) {
      INFO("cut at " << cut);
      std::vector<uint8_t> b(good.begin(), good.begin() + long(cut));
      mctest::TempDir dir;
      CHECK_THROWS_AS(mc::open_gguf(write_file(dir, b)), mc::InputError);
    }
    expect_error(std::vector<uint8_t>(good.begin(), good.begin() + 10), "truncated: need 8 bytes for tensor count");
    expect_error(std::vector<uint8_t>(good.begin(), good.end() - 1), "lies beyond the data section");
  }
  SECTION("version") {
    auto b = good;
    b[4] = 1;
    expect_error(b, "version 1");
    b[4] = 7;
    expect_error(b, "unsupported GGUF version 7");
  }
  SECTION("tensor offset out of range") {
    expect_error(with([](GgufSpec& s) { s.tensors[1].offset = int64_t(1) << 40; }), "tensor 'w.f16' data [1099511627776");
  }
  SECTION("misaligned offset") {
    expect_error(with([](GgufSpec& s) { s.tensors[2].offset = 8; }), "tensor 'w.q8' data offset 8 is not a multiple of the alignment 64");
  }
  SECTION("overlapping tensors") {
    expect_error(with([](GgufSpec& s) { s.tensors[3].offset = 64; }), "overlaps tensor");
  }
  SECTION("n_dims 9") {
    expect_error(with([](GgufSpec& s) { s.tensors[0].ne = {1, 1, 1, 1, 1, 1, 1, 1, 6}; }), "tensor 'w.f32' has 9 dims");
  }
  SECTION("unknown and unsupported ggml types") {
    expect_error(with([](GgufSpec& s) { s.tensors[0].type = 99; }), "unknown ggml type id 99");
    expect_error(with([](GgufSpec& s) { s.tensors[0].type = 16; }), "ggml type IQ2_XXS");
  }
  SECTION("row length not a multiple of the block size") {
    expect_error(with([](GgufSpec& s) { s.tensors[2].ne = {33, 2}; }), "ne[0] = 33 is not a multiple of the Q8_0 block size 32");
  }
  SECTION("dimension product overflows") {
    expect_error(with([](GgufSpec& s) { s.tensors[0].ne = {1ull << 40, 1ull << 40}; }), "overflow");
  }
  SECTION("huge string length") {
    Bytes v;
    v.put<uint32_t>(STRING).put<uint64_t>(1ull << 62);
    expect_error(with([&](GgufSpec& s) { s.kvs.insert(s.kvs.begin(), {"k.huge", v}); }), "key 'k.huge': string length 4611686018427387904");
  }
  SECTION("huge array count") {
    Bytes v;
    v.put<uint32_t>(ARRAY).put<uint32_t>(U64).put<uint64_t>(1ull << 61);
    expect_error(with([&](GgufSpec& s) { s.kvs.insert(s.kvs.begin(), {"k.arr", v}); }), "array of 2305843009213693952 u64 items");
  }
  SECTION("huge kv and tensor counts") {
    auto b = good;
    const uint64_t huge = 1ull << 60;
    std::memcpy(b.data() + 16, &huge, 8);
    expect_error(b, "kv count 1152921504606846976 cannot fit");
    b = good;
    std::memcpy(b.data() + 8, &huge, 8);
    expect_error(b, "tensor count 1152921504606846976 cannot fit");
  }
  SECTION("bad value types, keys and alignment") {
    expect_error(with([](GgufSpec& s) { s.kvs[2].second = Bytes().put<uint32_t>(13).put<uint8_t>(0); }), "unknown value type 13");
    expect_error(with([](GgufSpec& s) { s.kvs[2].first = "k.u16"; }), "duplicate key 'k.u16'");
    expect_error(with([](GgufSpec& s) { s.kvs[1].second = scalar_u32(48); }), "general.alignment 48 is not a power of two");
    expect_error(with([](GgufSpec& s) { s.kvs[1].second = scalar_u32(0); }), "not a power of two");
    expect_error(with([](GgufSpec& s) { s.kvs[1].second = string_kv("64"); }), "general.alignment has type string");
  }
  SECTION("arrays nested too deep") {
    Bytes v;
    v.put<uint32_t>(ARRAY);
    for (int d = 0; d < 5; ++d) v.put<uint32_t>(ARRAY).put<uint64_t>(1);
    v.put<uint32_t>(U8).put<uint64_t>(0);
    expect_error(with([&](GgufSpec& s) { s.kvs.push_back({"k.deep", v}); }), "nested more than");
  }
  SECTION("duplicate tensor names") {
    expect_error(with([](GgufSpec& s) { s.tensors[1].name = "w.f32"; }), "duplicate tensor name 'w.f32'");
  }
}
