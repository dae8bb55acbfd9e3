// llama2.c checkpoint reader (legacy headerless and version 1 "ak42"); the layout is described in
// llama2c_layout.h. The writer is in llama2c_writer.cpp, the tokenizer in llama2c_tokenizer.cpp.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "io/llama2c_layout.h"
#include "mcompress/byte_cursor.h"
#include "mcompress/error.h"
#include "mcompress/mapped_file.h"

namespace mc {

namespace llama2c_detail {

std::string implausible(const Llama2cConfig& c) {
  if (c.dim <= 0 || c.hidden_dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 ||
      c.vocab_size <= 0 || c.seq_len <= 0)
    return "all sizes must be positive";
  if (c.dim % c.n_heads != 0) return str("n_heads ", c.n_heads, " does not divide dim ", c.dim);
  if (c.n_heads % c.n_kv_heads != 0) return str("n_kv_heads ", c.n_kv_heads, " does not divide n_heads ", c.n_heads);
  return "";
}

std::optional<uint64_t> file_bytes(const Llama2cConfig& c, int version, bool with_rope) {
  const uint64_t dim = uint64_t(c.dim), hidden = uint64_t(c.hidden_dim), layers = uint64_t(c.n_layers);
  const uint64_t vocab = uint64_t(c.vocab_size), seq = uint64_t(c.seq_len);
  const uint64_t head = dim / uint64_t(c.n_heads), kv_dim = head * uint64_t(c.n_kv_heads);
  uint64_t per_layer = 0, total = 0, t = 0;
  bool bad = false;
  auto mul = [&](uint64_t a, uint64_t b) {
    uint64_t r = 0;
    bad |= __builtin_mul_overflow(a, b, &r);
    return r;
  };
  auto add = [&](uint64_t& acc, uint64_t v) { bad |= __builtin_add_overflow(acc, v, &acc); };
  // All int32 products of two sizes fit; the sums and the per-layer multiple may not.
  add(per_layer, 2 * dim);                  // attention_norm, ffn_norm
  add(per_layer, mul(2 * dim, dim));        // wq, wo
  add(per_layer, mul(2 * kv_dim, dim));     // wk, wv
  add(per_layer, mul(3 * hidden, dim));     // w1, w2, w3
  add(total, mul(per_layer, layers));
  add(total, mul(vocab, dim));              // tok_embeddings
  add(total, dim);                          // norm
  if (!c.shared_classifier) add(total, mul(vocab, dim));
  if (with_rope) add(total, mul(2 * seq, head / 2));
  t = mul(total, 4);
  add(t, version == 0 ? kLegacyHeaderBytes : kV1HeaderBytes);
  if (bad) return std::nullopt;
  return t;
}

std::vector<Entry> layout(const Llama2cConfig& c, int version, bool with_rope) {
  const int64_t dim = c.dim, hidden = c.hidden_dim, vocab = c.vocab_size;
  const int64_t head = dim / c.n_heads, kv_dim = head * c.n_kv_heads;
  auto layer = [](int i, const char* what) { return str("layers.", i, ".", what, ".weight"); };
  struct PerLayer {
    const char* what;
    Shape shape;
  };
  const PerLayer att_norm{"attention_norm", {dim}}, ffn_norm{"ffn_norm", {dim}};
  const PerLayer wq{"attention.wq", {dim, dim}}, wk{"attention.wk", {kv_dim, dim}};
  const PerLayer wv{"attention.wv", {kv_dim, dim}}, wo{"attention.wo", {dim, dim}};
  const PerLayer w1{"feed_forward.w1", {hidden, dim}}, w2{"feed_forward.w2", {dim, hidden}};
  const PerLayer w3{"feed_forward.w3", {hidden, dim}};
  std::vector<Entry> out;
  auto all_layers = [&](const PerLayer& p) {
    for (int i = 0; i < c.n_layers; ++i) out.push_back({layer(i, p.what), p.shape, false});
  };
  const Entry tok{"tok_embeddings.weight", {vocab, dim}, false};
  const Entry norm{"norm.weight", {dim}, false};
  if (version == 0) {
    out.push_back(tok);
    for (const PerLayer* p : {&att_norm, &wq, &wk, &wv, &wo, &ffn_norm, &w1, &w2, &w3}) all_layers(*p);
    out.push_back(norm);
    if (with_rope) {
      out.push_back({kRopeReal, {c.seq_len, head / 2}, true});
      out.push_back({kRopeImag, {c.seq_len, head / 2}, true});
    }
  } else {
    all_layers(att_norm);
    all_layers(ffn_norm);
    out.push_back(norm);
    out.push_back(tok);
    for (const PerLayer* p : {&wq, &wk, &wv, &wo, &w1, &w2, &w3}) all_layers(*p);
  }
  if (!c.shared_classifier) out.push_back({"output.weight", {vocab, dim}, false});
  return out;
}

std::string config_str(const Llama2cConfig& c) {
  return str("dim=", c.dim, ", hidden_dim=", c.hidden_dim, ", n_layers=", c.n_layers, ", n_heads=", c.n_heads,
             ", n_kv_heads=", c.n_kv_heads, ", vocab_size=", c.vocab_size, ", seq_len=", c.seq_len);
}

}  // namespace llama2c_detail

using namespace llama2c_detail;

namespace {

constexpr const char* kComp = "llama2c";

// The 7 int32 params at p; vocab_size keeps its sign.
Llama2cConfig read_params(const uint8_t* p) {
  int32_t v[7];
  std::memcpy(v, p, sizeof v);
  Llama2cConfig c;
  c.dim = v[0];
  c.hidden_dim = v[1];
  c.n_layers = v[2];
  c.n_heads = v[3];
  c.n_kv_heads = v[4];
  c.vocab_size = v[5];
  c.seq_len = v[6];
  return c;
}

// Legacy header: a negative vocab_size flags a separate classifier.
bool legacy_config(const uint8_t* p, Llama2cConfig* c) {
  *c = read_params(p);
  if (c->vocab_size == INT32_MIN) return false;
  c->shared_classifier = c->vocab_size > 0;
  c->vocab_size = std::abs(c->vocab_size);
  return implausible(*c).empty();
}

class Llama2cReader : public MappedCheckpointReader {
 public:
  explicit Llama2cReader(const std::string& path) : MappedCheckpointReader(path, kComp) { parse(); }
  std::string format() const override { return "llama2c"; }
  using MappedCheckpointReader::view;
  std::vector<TensorInfo> rope_;

 private:
  void parse();
};

void Llama2cReader::parse() {
  ByteCursor c(file_->data(), file_->size(), kComp, path_);
  const uint64_t size = file_->size();
  Llama2cConfig cfg;
  int version = 0;
  uint32_t magic = 0;
  if (size >= 4) std::memcpy(&magic, file_->data(), 4);
  if (magic == kMagic) {
    c.need(kV1HeaderBytes, "the version 1 header");
    c.seek(4, "version");
    const int32_t v = c.read<int32_t>("version");
    if (v == 2) c.error("version 2 (Q8_0 weights) is not supported (allowed: 1, or the legacy headerless format)");
    if (v != 1) c.error(str("unsupported version ", v, " (allowed: 1, or the legacy headerless format)"));
    version = 1;
    cfg = read_params(c.take(28, "params"));
    const uint8_t shared = c.read<uint8_t>("shared_classifier");
    if (shared > 1) c.error(str("shared_classifier flag is ", int(shared), " (allowed: 0, 1)"));
    cfg.shared_classifier = shared == 1;
    if (std::string why = implausible(cfg); !why.empty())
      c.error(str("implausible header (", config_str(cfg), "): ", why));
  } else {
    c.need(kLegacyHeaderBytes, "the legacy header (7 int32)");
    if (!legacy_config(file_->data(), &cfg)) {
      Llama2cConfig raw = read_params(file_->data());
      std::string why = raw.vocab_size == INT32_MIN ? "vocab_size out of range" : implausible(cfg);
      c.error(str("not a llama2.c checkpoint: implausible legacy header (", config_str(raw), "): ", why));
    }
  }
  const auto with_rope = file_bytes(cfg, version, true);
  const auto without_rope = file_bytes(cfg, version, false);
  if (!with_rope || !without_rope)
    c.error(str("header (", config_str(cfg), ") implies a size beyond 64 bits"));
  bool rope = false;
  if (version == 1) {
    if (size != *without_rope)
      c.error(str("file has ", size, " bytes, expected ", *without_rope, " for version 1 with ", config_str(cfg),
                  cfg.shared_classifier ? " (shared classifier)" : " (separate classifier)"));
  } else if (size == *with_rope) {
    rope = true;
  } else if (size != *without_rope) {
    c.error(str("file has ", size, " bytes, expected ", *with_rope, " (legacy with RoPE tables) or ", *without_rope,
                " (without) for ", config_str(cfg), cfg.shared_classifier ? " (shared classifier)" : " (separate classifier)"));
  }

  uint64_t off = version == 0 ? kLegacyHeaderBytes : kV1HeaderBytes;
  for (Entry& e : layout(cfg, version, rope)) {
    TensorInfo ti;
    ti.name = e.name;
    ti.dtype = DType::F32;
    ti.shape = e.shape;
    ti.offset = off;
    ti.nbytes = uint64_t(shape_numel(e.shape)) * 4;
    off += ti.nbytes;
    if (e.rope) rope_.push_back(std::move(ti));
    else add_tensor(std::move(ti), kComp);
  }
  metadata_["dim"] = std::to_string(cfg.dim);
  metadata_["hidden_dim"] = std::to_string(cfg.hidden_dim);
  metadata_["n_layers"] = std::to_string(cfg.n_layers);
  metadata_["n_heads"] = std::to_string(cfg.n_heads);
  metadata_["n_kv_heads"] = std::to_string(cfg.n_kv_heads);
  metadata_["vocab_size"] = std::to_string(cfg.vocab_size);
  metadata_["seq_len"] = std::to_string(cfg.seq_len);
  metadata_["shared_classifier"] = cfg.shared_classifier ? "1" : "0";
  metadata_["llama2c.version"] = std::to_string(version);
}

int32_t meta_int(const CheckpointReader& r, const char* key) {
  auto it = r.metadata().find(key);
  if (it == r.metadata().end()) fail(kComp, r.path(), ": metadata has no '", key, "'");
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end != '\0' || errno != 0 || v < INT32_MIN || v > INT32_MAX)
    fail(kComp, r.path(), ": metadata ", key, "='", it->second, "' is not a 32-bit integer");
  return int32_t(v);
}

}  // namespace

std::unique_ptr<CheckpointReader> open_llama2c(const std::string& path) {
  return std::make_unique<Llama2cReader>(path);
}

Llama2cConfig llama2c_config(const CheckpointReader& r) {
  Llama2cConfig c;
  c.dim = meta_int(r, "dim");
  c.hidden_dim = meta_int(r, "hidden_dim");
  c.n_layers = meta_int(r, "n_layers");
  c.n_heads = meta_int(r, "n_heads");
  c.n_kv_heads = meta_int(r, "n_kv_heads");
  c.vocab_size = meta_int(r, "vocab_size");
  c.seq_len = meta_int(r, "seq_len");
  c.shared_classifier = meta_int(r, "shared_classifier") != 0;
  return c;
}

std::vector<HostTensor> llama2c_freq_cis(const CheckpointReader& r) {
  std::vector<HostTensor> out;
  if (auto* l = dynamic_cast<const Llama2cReader*>(&r))
    for (const TensorInfo& ti : l->rope_) out.push_back(l->view(ti));
  return out;
}

bool looks_like_llama2c_legacy(const uint8_t* data, uint64_t file_size) {
  if (!data || file_size < kLegacyHeaderBytes) return false;
  Llama2cConfig c;
  if (!legacy_config(data, &c)) return false;
  auto a = file_bytes(c, 0, true), b = file_bytes(c, 0, false);
  return (a && *a == file_size) || (b && *b == file_size);
}

}  // namespace mc
