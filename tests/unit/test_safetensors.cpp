// safetensors reader/writer: round trips of every dtype, a file laid out by hand from the format
// description, and every kind of malformed header.
#include <cstring>
#include <nlohmann/json.hpp>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "test_utils.h"

using namespace mc;

namespace {

// Builds a file by hand: u64 length + header text + data.
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data) {
  uint64_t n = header.size();
  std::vector<uint8_t> f(reinterpret_cast<const uint8_t*>(&n), reinterpret_cast<const uint8_t*>(&n) + 8);
  for (char c : header) f.push_back(static_cast<uint8_t>(c));
  f.insert(f.end(), data.begin(), data.end());
  return f;
}

std::string open_error(const std::string& path) {
  try {
    open_safetensors(path);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("safetensors round trip of every dtype is bit exact, metadata kept", "[safetensors]") {
  mctest::TempDir dir;
  std::vector<HostTensor> ts;
  const DType types[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                         DType::I32, DType::I16, DType::I8,  DType::U8,   DType::BOOL};
  int k = 0;
  for (DType t : types) {
    Shape shape = {3, 5};
    std::vector<uint8_t> bytes(*dtype_nbytes(t, 15));
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 37 + k);
    if (t == DType::BOOL) for (auto& b : bytes) b &= 1;
    ts.push_back(HostTensor::owned(std::string("t.") + dtype_name(t), t, shape, bytes));
    ++k;
  }
  ts.push_back(HostTensor::owned("scalar", DType::F32, {}, {0, 0, 128, 63}));
  ts.push_back(HostTensor::owned("empty", DType::F32, {0, 4}, {}));
  const std::string p = dir.file("a.safetensors");
  write_safetensors(p, ts, {{"format", "pt"}, {"note", "hello"}});
  auto r = open_checkpoint(p);
  REQUIRE(r->format() == "safetensors");
  REQUIRE(r->tensors().size() == ts.size());
  CHECK(r->metadata().at("note") == "hello");
  for (const auto& t : ts) {
    auto got = r->load(t.name);
    CHECK(got.dtype == t.dtype);
    CHECK(got.shape == t.shape);
    REQUIRE(got.nbytes == t.nbytes);
    CHECK(std::memcmp(got.data, t.data, t.nbytes) == 0);
  }
  // The header is padded to 8 bytes and every tensor starts aligned to its element size.
  auto raw = mctest::read_bytes(p);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  CHECK(n % 8 == 0);
  for (const auto& ti : r->tensors()) CHECK(ti.offset % dtype_info(ti.dtype).block_bytes == 0);

  // Streamed one tensor at a time: byte-identical to writing them all at once.
  {
    SafetensorsStreamWriter w(dir.file("s.safetensors"));
    for (const auto& t : ts) w.add(t);
    CHECK_THROWS_WITH(w.add(ts[0]), Catch::Contains("duplicate tensor name"));
    w.finish({{"format", "pt"}, {"note", "hello"}});
  }
  CHECK(mctest::read_bytes(dir.file("s.safetensors")) == raw);
  // Abandoned before finish: nothing is left in the directory (spools are unnamed files).
  {
    SafetensorsStreamWriter w(dir.file("t.safetensors"));
    for (const auto& t : ts) w.add(t);
  }
  CHECK(!mctest::fs::exists(dir.file("t.safetensors")));
  CHECK(std::distance(mctest::fs::directory_iterator(dir.path), mctest::fs::directory_iterator()) == 2);
}

TEST_CASE("safetensors reads a file laid out by hand", "[safetensors]") {
  mctest::TempDir dir;
  // Two F32 values and one I16, offsets relative to the data section.
  std::vector<uint8_t> data(10);
  float a[2] = {1.5f, -2.0f};
  int16_t b = -7;
  std::memcpy(data.data(), a, 8);
  std::memcpy(data.data() + 8, &b, 2);
  auto f = make_file(R"({"b":{"dtype":"I16","shape":[1],"data_offsets":[8,10]},)"
                     R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"x":"y"}})", data);
  mctest::write_bytes(dir.file("h.safetensors"), f);
  auto r = open_safetensors(dir.file("h.safetensors"));
  REQUIRE(r->tensors().size() == 2);
  CHECK(r->tensors()[0].name == "a");  // file order is data order
  auto ta = to_f32(r->load("a"));
  CHECK(ta[0] == 1.5f);
  CHECK(ta[1] == -2.0f);
  CHECK(to_f32(r->load("b"))[0] == -7.0f);
  CHECK(r->metadata().at("x") == "y");
}

TEST_CASE("safetensors rejects malformed files with one clear message", "[safetensors]") {
  mctest::TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  std::vector<uint8_t> data(16, 0);
  struct Case { const char* what; std::vector<uint8_t> file; const char* expect; };
  auto hdr = [&](const std::string& h) { return make_file(h, data); };
  std::vector<Case> cases = {
      {"truncated length", {1, 2, 3}, "truncated"},
      {"length beyond file", [] { std::vector<uint8_t> f(16, 0); f[0] = 200; return f; }(), "exceeds the file"},
      {"not json", hdr("{not json"), "not valid JSON"},
      {"not object", hdr("[1,2]"), "must be a JSON object"},
      {"unknown dtype", hdr(R"({"w":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}})"), "unknown dtype 'F8'"},
      {"shape x dtype", hdr(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})"), "needs 12 bytes"},
      {"offsets beyond", hdr(R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})"), "beyond the data section"},
      {"offsets reversed", hdr(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})"), "end before they begin"},
      {"overlap", hdr(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})"), "overlaps"},
      {"duplicate", hdr(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                        R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})"), "duplicate tensor name 'a'"},
      {"negative dim", hdr(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})"), "non-negative"},
      {"metadata not strings", hdr(R"({"__metadata__":{"k":1}})"), "must be a string"},
      {"missing offsets", hdr(R"({"w":{"dtype":"U8","shape":[1]}})"), "data_offsets"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    mctest::write_bytes(p, c.file);
    std::string msg = open_error(p);
    CHECK_THAT(msg, Catch::Contains(c.expect));
    CHECK_THAT(msg, Catch::Contains(p));
  }
}

TEST_CASE("a failed safetensors write leaves no file behind", "[safetensors]") {
  mctest::TempDir dir;
  CHECK_THROWS_AS(write_safetensors(dir.file("missing/x.safetensors"), {}, {}), InputError);
  // A block-quantized tensor cannot be stored: the error comes before anything is created.
  std::vector<uint8_t> q(34, 0);
  auto t = HostTensor::owned("q", DType::Q8_0, {32}, q);
  CHECK_THROWS_WITH(write_safetensors(dir.file("q.safetensors"), {t}, {}), Catch::Contains("Q8_0"));
  std::vector<uint8_t> f(4, 0);
  auto a = HostTensor::owned("a", DType::F32, {1}, f);
  CHECK_THROWS_WITH(write_safetensors(dir.file("d.safetensors"), {a, a}, {}), Catch::Contains("duplicate"));
  CHECK(mctest::count_files(dir.path) == 0);
}

TEST_CASE("format detection by magic bytes", "[safetensors]") {
  mctest::TempDir dir;
  std::vector<uint8_t> f(4, 0);
  write_safetensors(dir.file("x.weird"), {HostTensor::owned("a", DType::F32, {1}, f)}, {});
  CHECK(detect_format(dir.file("x.weird")) == "safetensors");
  mctest::write_bytes(dir.file("junk"), {'h', 'e', 'l', 'l', 'o'});
  CHECK(detect_format(dir.file("junk")) == "");
  CHECK_THROWS_WITH(open_checkpoint(dir.file("junk")), Catch::Contains("unknown format"));
  CHECK(format_from_extension("a/b.safetensors") == "safetensors");
  CHECK(format_from_extension("m.pth") == "torch");
  CHECK(format_from_extension("m.h5") == "hdf5");
  CHECK(format_from_extension("m.bin") == "llama2c-legacy");
}
