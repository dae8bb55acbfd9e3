// PyTorch zip checkpoints: round trips, hand-built pickles (each byte written here, wrapped in a zip
// built here, independently of the library's zip writer), malformed input and the real MNIST file.
#include <cmath>
#include <cstring>
#include <random>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/torch_zip.h"
#include "test_utils.h"

using namespace mc;
using mctest::TempDir;
using namespace std::string_literals;  // "..."s keeps embedded NUL bytes

namespace {

std::string u32le(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string u16le(uint16_t v) { return std::string(reinterpret_cast<const char*>(&v), 2); }
std::string binunicode(const std::string& s) { return "X" + u32le(static_cast<uint32_t>(s.size())) + s; }
std::string int1(int v) { return std::string("K") + static_cast<char>(v); }

// A minimal stored zip (CRC left 0: the reader does not check it) with the given entries. With
// `zip64`, every size and offset goes through zip64 extra fields and the zip64 end records, as for
// archives over 4 GiB.
std::vector<uint8_t> make_zip(const std::vector<std::pair<std::string, std::string>>& entries,
                              uint16_t method = 0, bool zip64 = false) {
  const uint32_t sat = 0xffffffffu;
  auto u64le = [](uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); };
  std::string out, cd;
  for (const auto& [name, data] : entries) {
    const uint32_t off = static_cast<uint32_t>(out.size()), n = static_cast<uint32_t>(data.size());
    const std::string local_extra = zip64 ? u16le(1) + u16le(16) + u64le(n) + u64le(n) : "";
    const std::string cd_extra = zip64 ? u16le(1) + u16le(24) + u64le(n) + u64le(n) + u64le(off) : "";
    out += u32le(0x04034b50) + u16le(20) + u16le(0) + u16le(method) + u16le(0) + u16le(0) + u32le(0) +
           u32le(zip64 ? sat : n) + u32le(zip64 ? sat : n) + u16le(static_cast<uint16_t>(name.size())) +
           u16le(static_cast<uint16_t>(local_extra.size())) + name + local_extra + data;
    cd += u32le(0x02014b50) + u16le(45) + u16le(45) + u16le(0) + u16le(method) + u16le(0) + u16le(0) + u32le(0) +
          u32le(zip64 ? sat : n) + u32le(zip64 ? sat : n) + u16le(static_cast<uint16_t>(name.size())) +
          u16le(static_cast<uint16_t>(cd_extra.size())) + u16le(0) + u16le(0) + u16le(0) + u32le(0) +
          u32le(zip64 ? sat : off) + name + cd_extra;
  }
  const uint64_t cd_off = out.size(), count = entries.size();
  out += cd;
  if (zip64) {
    const uint64_t z64 = out.size();
    out += u32le(0x06064b50) + u64le(44) + u16le(45) + u16le(45) + u32le(0) + u32le(0) + u64le(count) +
           u64le(count) + u64le(cd.size()) + u64le(cd_off);
    out += u32le(0x07064b50) + u32le(0) + u64le(z64) + u32le(1);
  }
  out += u32le(0x06054b50) + u16le(0) + u16le(0) + u16le(zip64 ? 0xffff : static_cast<uint16_t>(count)) +
         u16le(zip64 ? 0xffff : static_cast<uint16_t>(count)) + u32le(zip64 ? sat : static_cast<uint32_t>(cd.size())) +
         u32le(zip64 ? sat : static_cast<uint32_t>(cd_off)) + u16le(0);
  return std::vector<uint8_t>(out.begin(), out.end());
}

// The bytes torch.save emits for _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()).
std::string tensor_pickle(const std::string& key, int storage_numel, int offset, const std::vector<int>& size,
                          const std::vector<int>& stride, const std::string& storage_type = "FloatStorage") {
  std::string p = "ctorch._utils\n_rebuild_tensor_v2\n((" + binunicode("storage") + "ctorch\n" + storage_type +
                  "\n" + binunicode(key) + binunicode("cpu") + int1(storage_numel) + "tQ" + int1(offset) + "(";
  for (int s : size) p += int1(s);
  p += "t(";
  for (int s : stride) p += int1(s);
  p += "t\x89" "ccollections\nOrderedDict\n)R" "tR";
  return p;
}

// OrderedDict of name -> pickled value, as torch.save(state_dict) writes it.
std::string state_dict_pickle(const std::vector<std::pair<std::string, std::string>>& items) {
  std::string p = "\x80\x02" "ccollections\nOrderedDict\n)R(";
  for (const auto& [k, v] : items) p += binunicode(k) + v;
  return p + "u.";
}

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::string write_zip(const TempDir& dir, const std::string& pkl, std::vector<std::pair<std::string, std::string>> data,
                      const std::string& prefix = "archive/", bool zip64 = false) {
  std::vector<std::pair<std::string, std::string>> entries = {{prefix + "data.pkl", pkl}};
  for (auto& [k, v] : data) entries.push_back({prefix + "data/" + k, v});
  entries.push_back({prefix + "version", "3\n"});
  std::string path = dir.file("hand.pt");
  mctest::write_bytes(path, make_zip(entries, 0, zip64));
  return path;
}

std::vector<float> values(const HostTensor& t) { return to_f32(t); }

// Opening must fail with InputError whose message contains `needle`.
void require_input_error(const std::string& path, const std::string& needle) {
  try {
    auto r = open_torch_zip(path);
    r->load_all();
    FAIL("expected InputError containing '" << needle << "'");
  } catch (const InputError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
    CHECK(std::string(e.what()).rfind("[torch] ", 0) == 0);
  }
}

}  // namespace

TEST_CASE("torch zip: every dtype round-trips bit-exactly", "[torch]") {
  TempDir dir;
  std::mt19937 rng(7);
  std::vector<HostTensor> in;
  const DType types[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                         DType::I32, DType::I16, DType::I8,  DType::U8,   DType::BOOL};
  for (DType t : types) {
    Shape shape = {3, 5};
    std::vector<uint8_t> bytes(*dtype_nbytes(t, 15));
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    if (t == DType::BOOL)
      for (auto& b : bytes) b &= 1;
    in.push_back(HostTensor::owned(std::string("t.") + dtype_name(t), t, shape, bytes));
  }
  std::vector<uint8_t> five(2 * 3 * 1 * 2 * 2 * 4);
  for (size_t i = 0; i < five.size(); ++i) five[i] = static_cast<uint8_t>(i * 13);
  in.push_back(HostTensor::owned("rank5", DType::F32, {2, 3, 1, 2, 2}, five));
  float one = 1.5f;
  in.push_back(HostTensor::from_f32("scalar", {}, &one));
  in.push_back(HostTensor::owned("empty", DType::F32, {0, 3}, {}));
  // Two tensors viewing one buffer (tied weights) share a storage.
  in.push_back(HostTensor::view("tied", DType::F32, {3, 5}, in[1].data, in[1].nbytes, in[1].owner));

  const std::string path = dir.file("all.pt");
  write_torch_zip(path, in, {{"source", "unit test"}, {"epoch", "3"}});
  CHECK(detect_format(path) == "torch");
  auto r = open_checkpoint(path);
  CHECK(r->format() == "torch");
  REQUIRE(r->tensors().size() == in.size());
  const std::vector<uint8_t> file = mctest::read_bytes(path);
  for (size_t i = 0; i < in.size(); ++i) {
    INFO(in[i].name);
    const TensorInfo& ti = r->tensors()[i];
    CHECK(ti.name == in[i].name);
    CHECK(ti.dtype == in[i].dtype);
    CHECK(ti.shape == in[i].shape);
    HostTensor t = r->load(ti.name);
    REQUIRE(t.nbytes == in[i].nbytes);
    if (t.nbytes) {
      CHECK(std::memcmp(t.data, in[i].data, t.nbytes) == 0);
      // Zero-copy: the data is the file's bytes at ti.offset, aligned as torch.save aligns.
      CHECK(ti.offset % 64 == 0);
      CHECK(std::memcmp(file.data() + ti.offset, in[i].data, t.nbytes) == 0);
    }
  }
  CHECK(r->info("tied").offset == r->info("t.F32").offset);
  CHECK(r->metadata().at("source") == "unit test");
  CHECK(r->metadata().at("epoch") == "3");
}

TEST_CASE("torch zip: hand-built state_dict with strided, tied and nested tensors", "[torch]") {
  TempDir dir;
  // Storage 0 holds [[0,1,2],[3,4,5]]. "t" is its transpose (stride (1,3)), "row1" a view at offset 3,
  // "bcast" a stride-0 expansion of element 4; everything lives under {'model': ..., 'epoch': 3}.
  std::string model = "ccollections\nOrderedDict\n)R(" + binunicode("w") + tensor_pickle("0", 6, 0, {2, 3}, {3, 1}) +
                      binunicode("t") + tensor_pickle("0", 6, 0, {3, 2}, {1, 3}) + binunicode("row1") +
                      tensor_pickle("0", 6, 3, {3}, {1}) + binunicode("bcast") + tensor_pickle("0", 6, 4, {2, 2}, {0, 0}) +
                      "u";
  std::string pkl = "\x80\x02}(" + binunicode("model") + model + binunicode("epoch") + int1(3) + binunicode("lr") +
                    "G\x3f\xe0\x00\x00\x00\x00\x00\x00"s + binunicode("tag") + binunicode("best") +
                    binunicode("layers") + "](" + tensor_pickle("1", 2, 0, {2}, {1}, "DoubleStorage") + "e" +
                    binunicode("param") + "ctorch._utils\n_rebuild_parameter\n(" + tensor_pickle("0", 6, 1, {2}, {1}) +
                    "\x88" "ccollections\nOrderedDict\n)R" "tR" + "u.";
  const bool zip64 = GENERATE(false, true);
  INFO("zip64 records: " << zip64);
  const std::string path =
      write_zip(dir, pkl, {{"0", floats({0, 1, 2, 3, 4, 5})}, {"1", std::string("\0\0\0\0\0\0\xf0\x3f", 8) + std::string(8, '\0')}},
                "checkpoint_stem/", zip64);
  auto r = open_torch_zip(path);
  REQUIRE(r->tensors().size() == 6);
  CHECK(r->tensors()[0].name == "model.w");
  CHECK(values(r->load("model.w")) == std::vector<float>{0, 1, 2, 3, 4, 5});
  CHECK(values(r->load("model.t")) == std::vector<float>{0, 3, 1, 4, 2, 5});  // the transpose
  CHECK(r->info("model.t").shape == Shape{3, 2});
  CHECK(values(r->load("model.row1")) == std::vector<float>{3, 4, 5});
  CHECK(r->info("model.row1").offset == r->info("model.w").offset + 12);  // a view of the same storage
  CHECK(values(r->load("model.bcast")) == std::vector<float>{4, 4, 4, 4});
  CHECK(r->info("layers.0").dtype == DType::F64);
  CHECK(values(r->load("layers.0")) == std::vector<float>{1, 0});
  CHECK(values(r->load("param")) == std::vector<float>{1, 2});  // _rebuild_parameter(tensor, True, ...)
  CHECK(r->metadata().at("epoch") == "3");
  CHECK(r->metadata().at("lr") == "0.5");
  CHECK(r->metadata().at("tag") == "best");
}

TEST_CASE("torch zip: forbidden globals are refused without running anything", "[torch]") {
  TempDir dir;
  SECTION("GLOBAL os.system") {
    auto path = write_zip(dir, "\x80\x02" "cos\nsystem\n" + binunicode("touch /tmp/pwned") + "\x85R.", {});
    require_input_error(path, "pickle names forbidden global 'os.system' (allowed: collections.OrderedDict");
  }
  SECTION("STACK_GLOBAL builtins.eval") {
    auto path = write_zip(dir, "\x80\x04\x95\x1c\0\0\0\0\0\0\0\x8c\x08"s + "builtins\x8c\x04" "eval\x93" +
                                   binunicode("1+1") + "\x85R.", {});
    require_input_error(path, "forbidden global 'builtins.eval'");
  }
  SECTION("__builtin__.exec inside a state dict") {
    auto pkl = state_dict_pickle({{"w", "c__builtin__\nexec\n" + binunicode("x") + "\x85R"}});
    require_input_error(write_zip(dir, pkl, {}), "forbidden global '__builtin__.exec'");
  }
  SECTION("objects built by NEWOBJ/INST are refused") {
    require_input_error(write_zip(dir, "\x80\x02" "ccollections\nOrderedDict\n)\x81.", {}), "NEWOBJ");
  }
}

TEST_CASE("torch zip: malformed pickles give one clear InputError", "[torch]") {
  TempDir dir;
  const std::string store = floats({0, 1, 2, 3, 4, 5});
  struct Case {
    const char* what;
    std::string pkl;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"missing storage", state_dict_pickle({{"w", tensor_pickle("7", 6, 0, {6}, {1})}}), "'archive/data/7'"},
      {"offset past storage", state_dict_pickle({{"w", tensor_pickle("0", 6, 5, {2, 3}, {3, 1})}}), "reaches element"},
      {"storage too small", state_dict_pickle({{"w", tensor_pickle("0", 60, 0, {6}, {1})}}), "too few for 60"},
      {"unknown opcode", "\x80\x02\xff.", "unknown pickle opcode 0xff"},
      {"stack underflow", "\x80\x02s.", "SETITEM needs a value"},
      {"missing memo", "\x80\x02h\x05.", "memo entry 5"},
      {"truncated pickle", "\x80\x02X\xff\x00\x00\x00" "abc"s, "truncated"},
      {"no STOP", "\x80\x02}", "before its STOP"},
      {"REDUCE args not a tuple", "\x80\x02" "ccollections\nOrderedDict\n]R.", "expected a tuple"},
      {"rebuild with wrong arg types",
       state_dict_pickle({{"w", "ctorch._utils\n_rebuild_tensor_v2\n(" + binunicode("x") + "K\x00)))\x89)tR"s}}),
       "needs a storage"},
      {"self-referencing list", "\x80\x02]q\x00h\x00" "a."s, "self-referencing"},
      {"APPEND on a dict", "\x80\x02}K\x01" "a.", "APPEND on a dict"},
      {"bad persistent id", "\x80\x02K\x01Q.", "persistent id must be"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    require_input_error(write_zip(dir, c.pkl, {{"0", store}}), c.needle);
  }
}

TEST_CASE("torch zip: bad archives", "[torch]") {
  TempDir dir;
  const std::string path = dir.file("x.pt");
  SECTION("wrong magic") {
    mctest::write_bytes(path, std::vector<uint8_t>(100, 'x'));
    require_input_error(path, "not a zip archive");
    CHECK_THROWS_AS(open_checkpoint(path), InputError);
  }
  SECTION("compressed entry") {
    mctest::write_bytes(path, make_zip({{"archive/data.pkl", "\x80\x02}."}}, 8));
    require_input_error(path, "is compressed (method 8)");
  }
  SECTION("no data.pkl") {
    mctest::write_bytes(path, make_zip({{"archive/other", "x"}}));
    require_input_error(path, "no <dir>/data.pkl");
  }
  SECTION("big-endian byteorder") {
    mctest::write_bytes(path, make_zip({{"archive/data.pkl", "\x80\x02}."}, {"archive/byteorder", "big"}}));
    require_input_error(path, "big-endian");
  }
  SECTION("every truncation of a valid file") {
    const std::string good = dir.file("good.pt");
    float v[4] = {1, 2, 3, 4};
    write_torch_zip(good, {HostTensor::from_f32("w", {2, 2}, v)}, {});
    const std::vector<uint8_t> bytes = mctest::read_bytes(good);
    for (size_t n = 0; n < bytes.size(); n += 7) {
      INFO("truncated to " << n << " of " << bytes.size());
      mctest::write_bytes(path, std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<long>(n)));
      CHECK_THROWS_AS(open_torch_zip(path), InputError);
    }
  }
}

// Random byte flips of a valid file: every outcome is a clean InputError or a readable checkpoint.
TEST_CASE("torch zip: mutated files never crash", "[torch]") {
  TempDir dir;
  const std::string good = dir.file("good.pt"), path = dir.file("m.pt");
  float v[6] = {1, 2, 3, 4, 5, 6};
  std::string pkl = state_dict_pickle({{"a", tensor_pickle("0", 6, 0, {2, 3}, {3, 1})},
                                       {"b", tensor_pickle("0", 6, 1, {2, 2}, {1, 2})}});
  mctest::write_bytes(good, make_zip({{"archive/data.pkl", pkl}, {"archive/data/0", floats({1, 2, 3, 4, 5, 6})}}));
  const std::vector<uint8_t> base = mctest::read_bytes(good);
  std::mt19937 rng(1234);
  int opened = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> b = base;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      // Mostly inside the pickle, where the interesting structure is.
      size_t at = rng() % 4 ? 30 + 16 + rng() % pkl.size() : rng() % b.size();
      if (at < b.size()) b[at] = static_cast<uint8_t>(rng());
    }
    mctest::write_bytes(path, b);
    try {
      auto r = open_torch_zip(path);
      for (auto& t : r->load_all()) (void)to_f32(t);
      ++opened;
    } catch (const InputError&) {
    }
  }
  (void)v;
  CHECK(opened > 0);
}

TEST_CASE("torch zip: failed writes leave nothing behind", "[torch]") {
  TempDir dir;
  float v[2] = {1, 2};
  const HostTensor t = HostTensor::from_f32("w", {2}, v);
  CHECK_THROWS_AS(write_torch_zip(dir.file("missing/dir/x.pt"), {t}, {}), InputError);
  CHECK(mctest::count_files(dir.path) == 0);
  std::vector<uint8_t> q(18);
  const HostTensor q4 = HostTensor::owned("q", DType::Q4_0, {32}, q);
  try {
    write_torch_zip(dir.file("q.pt"), {t, q4}, {});
    FAIL("block type accepted");
  } catch (const InputError& e) {
    CHECK(std::string(e.what()).find("Q4_0") != std::string::npos);
  }
  CHECK_THROWS_AS(write_torch_zip(dir.file("d.pt"), {t, t}, {}), InputError);  // duplicate name
  CHECK(mctest::count_files(dir.path) == 0);
}

TEST_CASE("torch zip: the MNIST MLP state_dict written by torch.save", "[torch]") {
  MC_REQUIRE_SHARED(path, "mnist/mnist_mlp.state_dict");
  auto r = open_checkpoint(path);
  CHECK(r->format() == "torch");
  REQUIRE(r->tensors().size() == 4);
  const char* names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
  const Shape shapes[] = {{500, 784}, {500}, {10, 500}, {10}};
  for (int i = 0; i < 4; ++i) {
    CHECK(r->tensors()[i].name == names[i]);
    CHECK(r->tensors()[i].shape == shapes[i]);
    CHECK(r->tensors()[i].dtype == DType::F32);
  }
  // Reference values printed once by /usr/bin/python3 (torch 1.13):
  //   sd = torch.load('mnist_mlp.state_dict', map_location='cpu'); sd['fc1.weight'][0,0].item(), ...
  const std::vector<float> w1 = values(r->load("fc1.weight"));
  CHECK(double(w1[0]) == 0.012964981608092785);
  CHECK(double(w1[1]) == 0.003441189182922244);
  CHECK(double(w1[123 * 784 + 456]) == 0.04577665403485298);
  CHECK(double(w1[499 * 784 + 783]) == 0.018979359418153763);
  const std::vector<float> b1 = values(r->load("fc1.bias"));
  CHECK(double(b1[0]) == 0.19316934049129486);
  CHECK(double(b1[499]) == 0.08566997945308685);
  const std::vector<float> w2 = values(r->load("fc2.weight"));
  CHECK(double(w2[9 * 500 + 499]) == 0.06508131325244904);
  CHECK(double(w2[3 * 500 + 7]) == -0.24940010905265808);
  const std::vector<float> b2 = values(r->load("fc2.bias"));
  CHECK(double(b2[0]) == -0.1008339375257492);
  CHECK(double(b2[9]) == 0.003258026670664549);
  // torch: sd['fc1.weight'].double().sum() = -2320.789288371835. torch sums in a different order, so
  // allow for double rounding over 392000 terms (~1e-12 relative); 1e-9 leaves ample room.
  constexpr double kSumRelTol = 1e-9;
  double sum = 0;
  for (float x : w1) sum += x;
  CHECK(std::abs(sum - -2320.789288371835) < kSumRelTol * 2320.79);
}
