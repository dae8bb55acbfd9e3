// llama2.c checkpoints and tokenizers: the real stories260K files (values checked against numbers
// read once with numpy at known offsets) and synthetic models whose expected bytes are assembled here
// in the order of karpathy/llama2.c export.py (legacy_export, version1_export).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "mcompress/error.h"
#include "mcompress/half.h"
#include "mcompress/io/llama2c.h"
#include "test_utils.h"

namespace {

constexpr uint64_t kStoriesParams = 260032;
constexpr uint64_t kStoriesBytes = 28 + (kStoriesParams + 2 * 512 * 4) * 4;  // header + weights + RoPE tables

struct Cfg {
  int d = 8, h = 12, L = 2, heads = 2, kv_heads = 1, V = 10, seq = 4;
  int kv() const { return d / heads * kv_heads; }
};

struct Model {
  std::map<std::string, mc::HostTensor> t;
  std::vector<mc::HostTensor> list() const {
    std::vector<mc::HostTensor> v;
    for (auto& kv : t) v.push_back(kv.second);
    return v;
  }
};

Model make_model(const Cfg& c, bool shared, unsigned seed = 7) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  Model m;
  auto add = [&](const std::string& name, mc::Shape s) {
    std::vector<float> v(size_t(mc::shape_numel(s)));
    for (auto& x : v) x = u(rng);
    m.t[name] = mc::HostTensor::from_f32(name, s, v.data());
  };
  add("tok_embeddings.weight", {c.V, c.d});
  for (int i = 0; i < c.L; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    add(p + "attention_norm.weight", {c.d});
    add(p + "attention.wq.weight", {c.d, c.d});
    add(p + "attention.wk.weight", {c.kv(), c.d});
    add(p + "attention.wv.weight", {c.kv(), c.d});
    add(p + "attention.wo.weight", {c.d, c.d});
    add(p + "ffn_norm.weight", {c.d});
    add(p + "feed_forward.w1.weight", {c.h, c.d});
    add(p + "feed_forward.w2.weight", {c.d, c.h});
    add(p + "feed_forward.w3.weight", {c.h, c.d});
  }
  add("norm.weight", {c.d});
  if (!shared) add("output.weight", {c.V, c.d});
  return m;
}

std::map<std::string, std::string> meta(const Cfg& c) {
  return {{"dim", std::to_string(c.d)},          {"hidden_dim", std::to_string(c.h)},
          {"n_layers", std::to_string(c.L)},     {"n_heads", std::to_string(c.heads)},
          {"n_kv_heads", std::to_string(c.kv_heads)}, {"vocab_size", std::to_string(c.V)},
          {"seq_len", std::to_string(c.seq)}};
}

void append(std::vector<uint8_t>& out, const mc::HostTensor& t) { out.insert(out.end(), t.data, t.data + t.nbytes); }
template <typename T>
void append_le(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

// Expected weight bytes in export.py order (without header and RoPE tables).
std::vector<uint8_t> legacy_weights(const Model& m, const Cfg& c) {
  std::vector<uint8_t> out;
  append(out, m.t.at("tok_embeddings.weight"));
  for (const char* w : {"attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "ffn_norm",
                        "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"})
    for (int i = 0; i < c.L; ++i) append(out, m.t.at("layers." + std::to_string(i) + "." + w + ".weight"));
  append(out, m.t.at("norm.weight"));
  return out;
}
std::vector<uint8_t> v1_weights(const Model& m, const Cfg& c) {
  std::vector<uint8_t> out;
  auto all = [&](const char* w) {
    for (int i = 0; i < c.L; ++i) append(out, m.t.at("layers." + std::to_string(i) + "." + w + ".weight"));
  };
  all("attention_norm");
  all("ffn_norm");
  append(out, m.t.at("norm.weight"));
  append(out, m.t.at("tok_embeddings.weight"));
  for (const char* w : {"attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
                        "feed_forward.w2", "feed_forward.w3"})
    all(w);
  if (m.t.count("output.weight")) append(out, m.t.at("output.weight"));
  return out;
}

float f32_at(const std::vector<uint8_t>& b, size_t off) {
  float v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}
int32_t i32_at(const std::vector<uint8_t>& b, size_t off) {
  int32_t v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    FAIL("no error; expected one mentioning '" << needle << "'");
  } catch (const mc::InputError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("llama2c: stories260K legacy checkpoint", "[llama2c]") {
  MC_REQUIRE_SHARED(path, "stories260K/stories260K.bin");
  CHECK(mc::detect_format(path) == "llama2c");
  auto r = mc::open_checkpoint(path);
  CHECK(r->format() == "llama2c");
  const auto& md = r->metadata();
  CHECK(md.at("dim") == "64");
  CHECK(md.at("hidden_dim") == "172");
  CHECK(md.at("n_layers") == "5");
  CHECK(md.at("n_heads") == "8");
  CHECK(md.at("n_kv_heads") == "4");
  CHECK(md.at("vocab_size") == "512");
  CHECK(md.at("seq_len") == "512");
  CHECK(md.at("shared_classifier") == "1");
  CHECK(md.at("llama2c.version") == "0");
  auto cfg = mc::llama2c_config(*r);
  CHECK(cfg.n_kv_heads == 4);
  CHECK(cfg.shared_classifier);

  CHECK(r->tensors().size() == 2 + 5 * 9);
  CHECK_FALSE(r->contains("output.weight"));
  int64_t params = 0;
  for (const auto& ti : r->tensors()) params += mc::shape_numel(ti.shape);
  CHECK(params == int64_t(kStoriesParams));
  CHECK(r->info("layers.2.attention.wk.weight").shape == mc::Shape{32, 64});
  CHECK(r->info("layers.0.feed_forward.w2.weight").shape == mc::Shape{64, 172});

  // Oracle: numpy.frombuffer(file[28:], float32) at the element offsets given (values printed with repr).
  auto at = [&](const char* name, int64_t i) { return mc::to_f32(r->load(name))[size_t(i)]; };
  CHECK(at("tok_embeddings.weight", 0) == -0.29474878311157227f);                // float 0
  CHECK(at("tok_embeddings.weight", 511 * 64 + 63) == -0.424032598733902f);      // float 32767
  CHECK(at("layers.0.attention_norm.weight", 0) == 0.9722429513931274f);         // float 32768
  CHECK(at("layers.2.attention.wk.weight", 1 * 64 + 5) == 0.05171306058764458f); // float 57733
  CHECK(at("layers.4.feed_forward.w2.weight", 63 * 172 + 171) == -0.0035068716388195753f);  // float 204927
  CHECK(at("layers.3.ffn_norm.weight", 10) == 0.9055319428443909f);              // float 94730
  CHECK(at("norm.weight", 63) == 1.7077769041061401f);                           // float 260031
  double sum = 0;  // numpy: float(np.sum(f[:260032].astype(np.float64)))
  for (const auto& t : r->load_all())
    for (float v : mc::to_f32(t)) sum += v;
  CHECK(sum == Approx(-14.691442941950697).margin(1e-9));  // summation order differs: ~1e-12

  auto rope = mc::llama2c_freq_cis(*r);
  REQUIRE(rope.size() == 2);
  CHECK(rope[0].name == "freq_cis_real");
  CHECK(rope[0].shape == mc::Shape{512, 4});
  CHECK(mc::to_f32(rope[0])[0] == 1.0f);  // cos(0)
  CHECK(mc::to_f32(rope[1])[0] == 0.0f);  // sin(0)
}

TEST_CASE("llama2c: stories260K round trips (legacy byte-identical, version 1)", "[llama2c]") {
  MC_REQUIRE_SHARED(path, "stories260K/stories260K.bin");
  mctest::TempDir dir;
  const auto original = mctest::read_bytes(path);
  REQUIRE(original.size() == kStoriesBytes);
  auto r = mc::open_llama2c(path);
  auto tensors = r->load_all();

  // With the stored RoPE tables passed along: the same file, byte for byte.
  auto with_rope = tensors;
  for (auto& t : mc::llama2c_freq_cis(*r)) with_rope.push_back(t);
  mc::write_llama2c(dir.file("legacy.bin"), with_rope, r->metadata(), 0);
  CHECK(mctest::read_bytes(dir.file("legacy.bin")) == original);

  // Recomputed tables: weights identical; torch's float32 cos/sin (which wrote the file) and ours
  // (correctly rounded from double) disagree by 1 ulp on a few percent of the 4096 entries.
  mc::write_llama2c(dir.file("recomputed.bin"), tensors, r->metadata(), 0);
  const auto recomputed = mctest::read_bytes(dir.file("recomputed.bin"));
  REQUIRE(recomputed.size() == original.size());
  const size_t weights_end = 28 + kStoriesParams * 4;
  CHECK(std::equal(original.begin(), original.begin() + long(weights_end), recomputed.begin()));
  int differ = 0;
  for (size_t off = weights_end; off < original.size(); off += 4) {
    const int32_t a = i32_at(original, off), b = i32_at(recomputed, off);
    differ += a != b;
    INFO("RoPE float at byte " << off);
    CHECK(std::abs(int64_t(a) - int64_t(b)) <= 1);  // within 1 ulp (same sign near 0: both positive or equal)
  }
  CHECK(differ < 4096 / 10);

  // Version 1: same tensors back.
  mc::write_llama2c(dir.file("v1.bin"), tensors, r->metadata(), 1);
  const auto v1 = mctest::read_bytes(dir.file("v1.bin"));
  CHECK(v1.size() == 256 + kStoriesParams * 4);
  CHECK(std::string(v1.begin(), v1.begin() + 4) == "24ka");
  auto r1 = mc::open_checkpoint(dir.file("v1.bin"));
  CHECK(r1->metadata().at("llama2c.version") == "1");
  CHECK(r1->metadata().at("shared_classifier") == "1");
  CHECK(mc::llama2c_freq_cis(*r1).empty());
  REQUIRE(r1->tensors().size() == r->tensors().size());
  for (const auto& t : tensors) {
    auto u = r1->load(t.name);
    CHECK(u.shape == t.shape);
    REQUIRE(u.nbytes == t.nbytes);
    CHECK(std::memcmp(u.data, t.data, t.nbytes) == 0);
  }
  // And v1 back to legacy gives the original weights.
  mc::write_llama2c(dir.file("back.bin"), r1->load_all(), r1->metadata(), 0);
  const auto back = mctest::read_bytes(dir.file("back.bin"));
  CHECK(std::equal(original.begin(), original.begin() + long(weights_end), back.begin()));
}

TEST_CASE("llama2c: writer byte layout matches export.py", "[llama2c]") {
  mctest::TempDir dir;
  const Cfg c;
  for (bool shared : {true, false}) {
    INFO("shared " << shared);
    Model m = make_model(c, shared);
    mc::write_llama2c(dir.file("l.bin"), m.list(), meta(c), 0);
    mc::write_llama2c(dir.file("v.bin"), m.list(), meta(c), 1);
    const auto legacy = mctest::read_bytes(dir.file("l.bin"));
    const auto v1 = mctest::read_bytes(dir.file("v.bin"));

    std::vector<uint8_t> expect;
    for (int v : {c.d, c.h, c.L, c.heads, c.kv_heads, shared ? c.V : -c.V, c.seq}) append_le<int32_t>(expect, v);
    auto w = legacy_weights(m, c);
    expect.insert(expect.end(), w.begin(), w.end());
    const size_t rope_at = expect.size(), half = size_t(c.d / c.heads / 2);
    REQUIRE(legacy.size() == rope_at + 2 * size_t(c.seq) * half * 4 + (shared ? 0 : size_t(c.V * c.d) * 4));
    CHECK(std::equal(expect.begin(), expect.end(), legacy.begin()));
    // freq_cis_real[t][i] = cos(t / 10000^(2i/head_size)); head_size 4: freqs 1 and 0.01.
    CHECK(f32_at(legacy, rope_at) == 1.0f);
    CHECK(f32_at(legacy, rope_at + (3 * half + 1) * 4) == Approx(std::cos(0.03)).epsilon(1e-7));
    CHECK(f32_at(legacy, rope_at + (c.seq * half + 2 * half + 0) * 4) == Approx(std::sin(2.0)).epsilon(1e-7));
    if (!shared) {
      const auto& out = m.t.at("output.weight");
      CHECK(std::equal(out.data, out.data + out.nbytes, legacy.end() - long(out.nbytes)));
    }

    std::vector<uint8_t> h1;
    append_le<uint32_t>(h1, 0x616b3432);
    append_le<int32_t>(h1, 1);
    for (int v : {c.d, c.h, c.L, c.heads, c.kv_heads, c.V, c.seq}) append_le<int32_t>(h1, v);
    h1.push_back(shared ? 1 : 0);
    h1.resize(256, 0);
    auto w1 = v1_weights(m, c);
    h1.insert(h1.end(), w1.begin(), w1.end());
    CHECK(v1 == h1);

    for (const char* f : {"l.bin", "v.bin"}) {
      auto r = mc::open_checkpoint(dir.file(f));
      CHECK(r->metadata().at("shared_classifier") == (shared ? "1" : "0"));
      CHECK(r->contains("output.weight") == !shared);
      for (const auto& [name, t] : m.t) {
        auto u = r->load(name);
        CHECK(u.shape == t.shape);
        CHECK(std::memcmp(u.data, t.data, t.nbytes) == 0);
      }
    }
  }
}

TEST_CASE("llama2c: writer infers the config, converts F16, and reports bad input", "[llama2c]") {
  mctest::TempDir dir;
  const Cfg c;
  Model m = make_model(c, true);
  mc::write_llama2c(dir.file("full.bin"), m.list(), meta(c), 0);
  // Only n_heads and seq_len given: the rest comes from the shapes.
  mc::write_llama2c(dir.file("inferred.bin"), m.list(), {{"n_heads", "2"}, {"seq_len", "4"}}, 0);
  CHECK(mctest::read_bytes(dir.file("inferred.bin")) == mctest::read_bytes(dir.file("full.bin")));
  // An output.weight equal to the embedding is the shared classifier (export.py: torch.equal).
  auto with_out = m.list();
  with_out.push_back(m.t.at("tok_embeddings.weight"));
  with_out.back().name = "output.weight";
  mc::write_llama2c(dir.file("tied.bin"), with_out, meta(c), 0);
  CHECK(mctest::read_bytes(dir.file("tied.bin")) == mctest::read_bytes(dir.file("full.bin")));

  std::vector<mc::HostTensor> half;
  for (const auto& t : m.list()) half.push_back(mc::convert_dtype(t, mc::DType::F16));
  mc::write_llama2c(dir.file("f16.bin"), half, meta(c), 1);
  auto r = mc::open_llama2c(dir.file("f16.bin"));
  for (const auto& t : half) CHECK(mc::to_f32(r->load(t.name)) == mc::to_f32(t));

  const size_t files_before = mctest::count_files(dir.path);
  const std::string out = dir.file("bad.bin");
  auto m_no_heads = meta(c);
  m_no_heads.erase("n_heads");
  expect_error([&] { mc::write_llama2c(out, m.list(), m_no_heads, 0); }, "'n_heads' is not in the metadata");
  expect_error([&] { mc::write_llama2c(out, m.list(), {{"n_heads", "2"}}, 0); }, "'seq_len' is not in the metadata");
  auto missing = m;
  missing.t.erase("layers.1.attention.wk.weight");
  expect_error([&] { mc::write_llama2c(out, missing.list(), meta(c), 0); }, "missing tensors: layers.1.attention.wk.weight");
  auto extra = m.list();
  extra.push_back(mc::HostTensor::from_f32("extra.bias", {1}, std::vector<float>{1}.data()));
  expect_error([&] { mc::write_llama2c(out, extra, meta(c), 1); }, "unexpected tensors: extra.bias");
  auto wrong = m;
  wrong.t["norm.weight"] = mc::HostTensor::from_f32("norm.weight", {4}, std::vector<float>(4).data());
  expect_error([&] { mc::write_llama2c(out, wrong.list(), meta(c), 0); }, "'norm.weight' has shape [4], expected [8]");
  auto ints = m;
  ints.t["norm.weight"] = mc::HostTensor::owned("norm.weight", mc::DType::I32, {8}, std::vector<uint8_t>(32));
  expect_error([&] { mc::write_llama2c(out, ints.list(), meta(c), 0); }, "dtype I32");
  auto odd = meta(c);
  odd["n_heads"] = "3";
  expect_error([&] { mc::write_llama2c(out, m.list(), odd, 0); }, "n_heads 3 does not divide dim 8");
  expect_error([&] { mc::write_llama2c(out, m.list(), meta(c), 2); }, "unknown version 2");
  auto untied = meta(c);
  untied["shared_classifier"] = "1";
  auto diff_out = make_model(c, false).list();
  expect_error([&] { mc::write_llama2c(out, diff_out, untied, 0); }, "'output.weight' differs");
  CHECK(mctest::count_files(dir.path) == files_before);  // nothing half-written
}

TEST_CASE("llama2c: truncated, resized and implausible files", "[llama2c]") {
  MC_REQUIRE_SHARED(path, "stories260K/stories260K.bin");
  mctest::TempDir dir;
  const auto original = mctest::read_bytes(path);
  CHECK(mc::looks_like_llama2c_legacy(original.data(), original.size()));
  CHECK_FALSE(mc::looks_like_llama2c_legacy(original.data(), original.size() + 4));

  auto write = [&](const std::vector<uint8_t>& b) {
    mctest::write_bytes(dir.file("x.bin"), b);
    return dir.file("x.bin");
  };
  expect_error([&] { mc::open_llama2c(write({original.begin(), original.begin() + 1000})); },
               "file has 1000 bytes, expected 1056540");
  auto longer = original;
  longer.resize(original.size() + 4);
  expect_error([&] { mc::open_llama2c(write(longer)); }, "file has 1056544 bytes, expected 1056540");
  expect_error([&] { mc::open_llama2c(write({original.begin(), original.begin() + 20})); }, "truncated");
  auto bad_heads = original;
  const int32_t seven = 7;
  std::memcpy(bad_heads.data() + 12, &seven, 4);
  CHECK_FALSE(mc::looks_like_llama2c_legacy(bad_heads.data(), bad_heads.size()));
  expect_error([&] { mc::open_llama2c(write(bad_heads)); }, "n_heads 7 does not divide dim 64");
  // Without the RoPE tables is accepted too (sizes differ by exactly the two tables).
  std::vector<uint8_t> no_rope(original.begin(), original.begin() + long(28 + kStoriesParams * 4));
  CHECK(mc::open_llama2c(write(no_rope))->tensors().size() == 47);

  auto r = mc::open_llama2c(path);
  mc::write_llama2c(dir.file("v1.bin"), r->load_all(), r->metadata(), 1);
  const auto v1 = mctest::read_bytes(dir.file("v1.bin"));
  expect_error([&] { mc::open_llama2c(write({v1.begin(), v1.begin() + 100})); }, "truncated: need 256 bytes");
  expect_error([&] { mc::open_llama2c(write({v1.begin(), v1.end() - 4})); }, "expected 1040384 for version 1");
  auto v2 = v1;
  v2[4] = 2;
  expect_error([&] { mc::open_llama2c(write(v2)); }, "version 2 (Q8_0 weights) is not supported");
  auto flag = v1;
  flag[36] = 7;
  expect_error([&] { mc::open_llama2c(write(flag)); }, "shared_classifier flag is 7");
}

TEST_CASE("llama2c: tok512 tokenizer", "[llama2c]") {
  MC_REQUIRE_SHARED(path, "stories260K/tok512.bin");
  mctest::TempDir dir;
  auto tok = mc::read_llama2c_tokenizer(path);
  // Oracle: python struct.unpack over the file.
  CHECK(tok.max_token_length == 7);
  REQUIRE(tok.vocab.size() == 512);
  REQUIRE(tok.scores.size() == 512);
  CHECK(tok.vocab[0] == "<unk>");
  CHECK(tok.vocab[1] == "\n<s>\n");
  CHECK(tok.vocab[2] == "\n</s>\n");
  CHECK(tok.vocab[3] == "<0x00>");
  CHECK(tok.vocab[258] == "<0xFF>");
  CHECK(tok.vocab[259] == " t");
  CHECK(tok.vocab[300] == " ha");
  CHECK(tok.scores[300] == -41.0f);
  CHECK(tok.vocab[511] == "\xe2\x80\x8a");
  CHECK(tok.scores[511] == -252.0f);

  mc::write_llama2c_tokenizer(dir.file("t.bin"), tok);
  const auto original = mctest::read_bytes(path);
  CHECK(mctest::read_bytes(dir.file("t.bin")) == original);

  auto write = [&](const std::vector<uint8_t>& b) {
    mctest::write_bytes(dir.file("x.bin"), b);
    return dir.file("x.bin");
  };
  expect_error([&] { mc::read_llama2c_tokenizer(write({original.begin(), original.end() - 1})); }, "truncated: token 511");
  expect_error([&] { mc::read_llama2c_tokenizer(write({original.begin(), original.begin() + 9})); }, "truncated: token 0");
  expect_error([&] { mc::read_llama2c_tokenizer(write({original.begin(), original.begin() + 2})); }, "max_token_length");
  auto negative = original;
  const int32_t minus = -3;
  std::memcpy(negative.data() + 8, &minus, 4);
  expect_error([&] { mc::read_llama2c_tokenizer(write(negative)); }, "token 0 at offset 4 has negative length -3");
  auto huge = original;
  const int32_t big = 1 << 30;
  std::memcpy(huge.data() + 8, &big, 4);
  expect_error([&] { mc::read_llama2c_tokenizer(write(huge)); }, "has length 1073741824 but only");
  auto small = tok;
  small.max_token_length = 3;
  expect_error([&] { mc::write_llama2c_tokenizer(dir.file("s.bin"), small); }, "shorter than the longest token");
}
