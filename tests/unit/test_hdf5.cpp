// HDF5 reader/writer: round trips of every storable dtype in our layout and in the Keras layout,
// and failures (truncated/corrupt/non-HDF5 input, unwritable output, unstorable dtypes) that must be
// one-line InputErrors leaving no output behind. Files written by h5py are checked in
// tests/python/test_hdf5_interop.py.
#include <algorithm>
#include <cstring>
#include <functional>
#include <map>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/hdf5.h"
#include "test_utils.h"

namespace {

using mc::DType;
using mc::HostTensor;

// Deterministic bytes (an LCG): every bit pattern is fair game for a bit-exact round trip,
// NaN payloads, subnormals and infinities included. BOOL gets 0/1.
HostTensor pattern(const std::string& name, DType t, mc::Shape shape, uint32_t seed) {
  const int64_t n = mc::shape_numel(shape);
  std::vector<uint8_t> b(static_cast<size_t>(n * mc::dtype_info(t).block_bytes));
  uint32_t s = seed * 2654435761u + 1;
  for (auto& x : b) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<uint8_t>(s >> 24);
    if (t == DType::BOOL) x &= 1;
  }
  return HostTensor::owned(name, t, std::move(shape), std::move(b));
}

HostTensor f16_specials() {
  const uint16_t v[] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x3c00, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x7d01, 0xfe42};
  std::vector<uint8_t> b(sizeof v);
  std::memcpy(b.data(), v, sizeof v);
  return HostTensor::owned("specials.f16", DType::F16, {11}, std::move(b));
}

std::vector<uint8_t> bytes_of(const HostTensor& t) { return std::vector<uint8_t>(t.data, t.data + t.nbytes); }

void require_same(const HostTensor& want, const HostTensor& got, const std::string& got_name) {
  INFO("tensor " << want.name << " read back as " << got_name);
  CHECK(got.name == got_name);
  CHECK(got.dtype == want.dtype);
  CHECK(got.shape == want.shape);
  CHECK(bytes_of(got) == bytes_of(want));
}

std::vector<HostTensor> every_dtype() {
  std::vector<HostTensor> v;
  v.push_back(pattern("fc1.weight", DType::F32, {4, 3}, 1));
  v.push_back(pattern("fc1.bias", DType::F64, {4}, 2));
  v.push_back(pattern("half.w", DType::F16, {2, 3, 5}, 3));
  v.push_back(f16_specials());
  v.push_back(pattern("bf.w", DType::BF16, {6, 2}, 4));
  v.push_back(pattern("i64", DType::I64, {5}, 5));
  v.push_back(pattern("i32", DType::I32, {2, 2}, 6));
  v.push_back(pattern("i16", DType::I16, {3}, 7));
  v.push_back(pattern("i8", DType::I8, {9}, 8));
  v.push_back(pattern("u8", DType::U8, {2, 4}, 9));
  v.push_back(pattern("mask", DType::BOOL, {3, 3}, 10));
  v.push_back(pattern("scalar", DType::F32, {}, 11));
  v.push_back(pattern("empty", DType::F32, {0, 4}, 12));
  v.push_back(pattern("nested/group.w", DType::I32, {2}, 13));
  v.push_back(pattern("a.0", DType::F16, {1}, 14));  // written after "nested/...": creation order must hold
  return v;
}

void require_input_error_about(const std::string& path, const std::function<void()>& fn) {
  try {
    fn();
    FAIL("no exception for " << path);
  } catch (const mc::InputError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.rfind("[", 0) == 0);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  }
}

}  // namespace

TEST_CASE("hdf5: every dtype round trips bit-exactly in our layout, metadata kept", "[hdf5]") {
  mctest::TempDir dir;
  const std::string path = dir.file("model.h5");
  const auto tensors = every_dtype();
  const std::map<std::string, std::string> meta = {
      {"author", "mcompress test"}, {"unicode", "gr\xc3\xbc\xc3\x9f" "e \xe2\x9c\x93"}, {"empty", ""},
      {"big.config", std::string(100000, 'x')}};  // larger than one HDF5 object header (64 KiB)
  mc::WriteOptions opts;
  opts.metadata = meta;
  mc::write_checkpoint(path, tensors, opts);  // format from the .h5 extension
  CHECK(mctest::count_files(dir.path) == 1);
  CHECK(mc::detect_format(path) == "hdf5");

  auto r = mc::open_checkpoint(path);
  CHECK(r->format() == "hdf5");
  REQUIRE(r->tensors().size() == tensors.size());
  const auto file = mctest::read_bytes(path);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& ti = r->tensors()[i];
    CHECK(ti.name == tensors[i].name);  // file order is write order
    CHECK(ti.nbytes == tensors[i].nbytes);
    require_same(tensors[i], r->load(tensors[i].name), tensors[i].name);
    if (ti.nbytes > 0) {  // contiguous data: the offset points at the tensor's bytes
      REQUIRE(ti.offset > 0);
      REQUIRE(ti.offset + ti.nbytes <= file.size());
      const auto at = file.begin() + static_cast<std::ptrdiff_t>(ti.offset);
      CHECK(std::vector<uint8_t>(at, at + static_cast<std::ptrdiff_t>(ti.nbytes)) == bytes_of(tensors[i]));
    }
  }
  CHECK(r->metadata() == meta);  // the layout's own root attributes are not metadata
}

TEST_CASE("hdf5: the same tensors give the same bytes (no timestamps)", "[hdf5]") {
  mctest::TempDir dir;
  for (bool keras : {false, true}) {
    mc::write_hdf5(dir.file("a.h5"), every_dtype(), {{"k", "v"}}, keras);
    mc::write_hdf5(dir.file("b.h5"), every_dtype(), {{"k", "v"}}, keras);
    CHECK(mctest::read_bytes(dir.file("a.h5")) == mctest::read_bytes(dir.file("b.h5")));
  }
}

TEST_CASE("hdf5: Keras-style round trip keeps values bit-exact under path names", "[hdf5]") {
  mctest::TempDir dir;
  const std::string path = dir.file("weights.h5");
  std::vector<HostTensor> tensors;
  tensors.push_back(pattern("fc2.weight", DType::F32, {3, 4}, 1));  // layer order = first appearance
  tensors.push_back(pattern("fc2.bias", DType::F16, {3}, 2));
  tensors.push_back(pattern("fc1.weight", DType::BF16, {4, 2}, 3));
  tensors.push_back(pattern("fc1.mask", DType::BOOL, {4}, 4));
  tensors.push_back(pattern("step", DType::I64, {}, 5));
  tensors.push_back(pattern("blocks.0.attn.wq", DType::I8, {2, 2}, 6));
  const std::vector<std::string> names = {"fc2/fc2/weight", "fc2/fc2/bias", "fc1/fc1/weight", "fc1/fc1/mask",
                                          "step/step/step", "blocks.0.attn/blocks.0.attn/wq"};
  mc::WriteOptions opts;
  opts.format = "keras-hdf5";
  opts.metadata = {{"note", "hello"}, {"hdf5.skipped", "from an earlier read: not written"},
                   {"big", std::string(70000, 'b')}};  // over the 64 KiB object header limit
  mc::write_checkpoint(path, tensors, opts);

  auto r = mc::open_hdf5(path);
  REQUIRE(r->tensors().size() == tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    CHECK(r->tensors()[i].name == names[i]);  // in layer_names / weight_names order
    require_same(tensors[i], r->load(names[i]), names[i]);
  }
  const auto& m = r->metadata();
  CHECK(m.at("layer_names") == R"(["fc2", "fc1", "step", "blocks.0.attn"])");
  CHECK(m.at("backend") == "tensorflow");
  CHECK(m.count("keras_version") == 1);
  CHECK(m.at("note") == "hello");
  CHECK(m.at("big") == std::string(70000, 'b'));
  CHECK(m.count("hdf5.skipped") == 0);
}

TEST_CASE("hdf5: Keras layer lists too long for one attribute are split and read back in order", "[hdf5]") {
  mctest::TempDir dir;
  const std::string path = dir.file("many.h5");
  std::vector<HostTensor> tensors;
  constexpr int kLayers = 2500;  // 2500 names x 30 bytes > the 64 KiB object header limit
  for (int i = 0; i < kLayers; ++i)
    tensors.push_back(pattern(mc::str("a_rather_long_layer_name_", 10000 + i, ".w"), DType::F32, {}, i));
  std::reverse(tensors.begin(), tensors.end());  // name order differs from layer order
  mc::write_hdf5(path, tensors, {}, true);
  auto r = mc::open_hdf5(path);
  REQUIRE(r->tensors().size() == tensors.size());
  CHECK(r->metadata().count("layer_names0") == 1);
  for (size_t i = 0; i < tensors.size(); i += 97) {
    const std::string layer = tensors[i].name.substr(0, tensors[i].name.size() - 2);
    CHECK(r->tensors()[i].name == layer + "/" + layer + "/w");
  }
}

TEST_CASE("hdf5: truncated files are one-line InputErrors", "[hdf5]") {
  mctest::TempDir dir;
  const std::string good = dir.file("good.h5");
  mc::write_hdf5(good, every_dtype(), {{"k", "v"}}, false);
  const auto bytes = mctest::read_bytes(good);
  REQUIRE(bytes.size() > 2000);
  for (size_t cut : {bytes.size() - 1, bytes.size() / 2, size_t(1500), size_t(96), size_t(9), size_t(0)}) {
    const std::string p = dir.file(mc::str("cut", cut, ".h5"));
    mctest::write_bytes(p, std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut)));
    INFO("cut at " << cut);
    require_input_error_about(p, [&] { mc::open_hdf5(p); });
    require_input_error_about(p, [&] { mc::open_checkpoint(p); });
  }
}

TEST_CASE("hdf5: damaged bytes give an InputError or a readable file, never a crash", "[hdf5]") {
  mctest::TempDir dir;
  // Small groups keep their links in the object header; over 64 links a group goes dense (fractal
  // heap), whose damaged reads once crashed HDF5 1.10 when iterated in sorted order.
  const bool dense = GENERATE(false, true);
  std::vector<HostTensor> tensors = every_dtype();
  for (int i = 0; dense && i < 80; ++i) tensors.push_back(pattern(mc::str("blocks.", i, ".w"), DType::I8, {3}, i));
  const std::string good = dir.file("good.h5");
  mc::write_hdf5(good, tensors, {{"k", "v"}}, false);
  const auto bytes = mctest::read_bytes(good);
  const std::string p = dir.file("bad.h5");
  int errors = 0;
  // Overwrite 16-byte windows all over the file (superblock, object headers, heaps, B-trees, data).
  // Our files use the 1.8 format, whose object headers carry checksums, and no variable-length
  // strings (HDF5 1.10's global-heap reader trusts stored indices: h5py files with str attributes can
  // crash it). Windows that hit only tensor bytes or free space leave a readable file.
  for (size_t at = 8; at + 16 < bytes.size(); at += dense ? 67 : 61) {
    auto bad = bytes;
    for (size_t k = 0; k < 16; ++k) bad[at + k] ^= 0xa5;
    mctest::write_bytes(p, bad);
    try {
      auto r = mc::open_hdf5(p);
      for (const auto& ti : r->tensors()) r->load(ti.name);
    } catch (const mc::InputError& e) {
      ++errors;
      CHECK(std::string(e.what()).rfind("[hdf5] ", 0) == 0);
    }
  }
  CHECK(errors > 0);
}

TEST_CASE("hdf5: a file that is not HDF5 is an InputError", "[hdf5]") {
  mctest::TempDir dir;
  const std::string p = dir.file("notes.h5");
  mctest::write_bytes(p, std::vector<uint8_t>(4096, 'z'));
  require_input_error_about(p, [&] { mc::open_hdf5(p); });
  require_input_error_about(dir.file("missing.h5"), [&] { mc::open_hdf5(dir.file("missing.h5")); });
}

TEST_CASE("hdf5: failed writes raise InputError and leave no file", "[hdf5]") {
  mctest::TempDir dir;
  const std::vector<HostTensor> ok = {pattern("w", DType::F32, {2}, 1)};

  SECTION("missing directory") {
    const std::string p = dir.file("no/such/dir/out.h5");
    require_input_error_about(p, [&] { mc::write_hdf5(p, ok, {}, false); });
  }
  SECTION("block-quantized dtype") {
    std::vector<HostTensor> q = {HostTensor::owned("q", DType::Q4_0, {32}, std::vector<uint8_t>(18))};
    const std::string p = dir.file("q.h5");
    require_input_error_about(p, [&] { mc::write_hdf5(p, q, {}, false); });
    require_input_error_about(p, [&] { mc::write_hdf5(p, q, {}, true); });
  }
  SECTION("a dataset that cannot be created midway through the file") {
    std::vector<HostTensor> clash = {pattern("x", DType::F32, {2}, 1), pattern("x/y", DType::F32, {2}, 2)};
    const std::string p = dir.file("clash.h5");
    require_input_error_about(p, [&] { mc::write_hdf5(p, clash, {}, false); });
  }
  SECTION("Keras layout collision") {
    std::vector<HostTensor> clash = {pattern("a", DType::F32, {2}, 1), pattern("a.a", DType::F32, {2}, 2)};
    const std::string p = dir.file("k.h5");
    require_input_error_about(p, [&] { mc::write_hdf5(p, clash, {}, true); });
  }
  SECTION("names that are not HDF5 paths") {
    for (const char* bad : {"a//b", "/a", "a/", "a/./b", ""}) {
      std::vector<HostTensor> t = {pattern(bad, DType::F32, {2}, 1)};
      const std::string p = dir.file("names.h5");
      INFO("name '" << bad << "'");
      require_input_error_about(p, [&] { mc::write_hdf5(p, t, {}, false); });
    }
  }
  CHECK(mctest::count_files(dir.path) == 0);
}
