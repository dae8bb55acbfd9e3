// llama2.c checkpoint writer: legacy (version 0) or "ak42" version 1, fp32, atomically.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <unordered_map>

#include "io/llama2c_layout.h"
#include "mcompress/atomic_file.h"
#include "mcompress/error.h"

namespace mc {

using namespace llama2c_detail;

namespace {

constexpr const char* kComp = "llama2c";
constexpr int64_t kChunk = 1 << 16;  // values converted at a time; a multiple of every block size

class ConfigBuilder {
 public:
  ConfigBuilder(const std::string& path, const std::map<std::string, std::string>& meta,
                const std::unordered_map<std::string, const HostTensor*>& by_name)
      : path_(path), meta_(meta), by_name_(by_name) {}

  std::optional<int32_t> meta(const char* key) const {
    auto it = meta_.find(key);
    if (it == meta_.end()) return std::nullopt;
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0' || errno != 0 || v < INT32_MIN || v > INT32_MAX)
      fail(kComp, path_, ": metadata ", key, "='", it->second, "' is not a 32-bit integer");
    return int32_t(v);
  }
  // Dimension d of tensor `name`, for inferring `key` when the metadata lacks it.
  int32_t dim_of(const char* key, const std::string& name, size_t d) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end() || it->second->shape.size() <= d)
      fail(kComp, path_, ": '", key, "' is not in the metadata and cannot be inferred: tensor '", name,
           it == by_name_.end() ? "' is missing" : "' has too few dimensions");
    const int64_t v = it->second->shape[d];
    if (v <= 0 || v > INT32_MAX)
      fail(kComp, path_, ": cannot infer '", key, "' from tensor '", name, "' ", shape_str(it->second->shape));
    return int32_t(v);
  }
  int32_t get(const char* key, const std::string& name, size_t d) const {
    if (auto v = meta(key)) return *v;
    return dim_of(key, name, d);
  }

  Llama2cConfig build() const {
    Llama2cConfig c;
    c.dim = get("dim", "tok_embeddings.weight", 1);
    c.vocab_size = get("vocab_size", "tok_embeddings.weight", 0);
    c.hidden_dim = get("hidden_dim", "layers.0.feed_forward.w1.weight", 0);
    if (auto v = meta("n_layers")) {
      c.n_layers = *v;
    } else {
      int64_t n = 0;  // 1 + the largest i in "layers.<i>."
      for (const auto& kv : by_name_) {
        if (kv.first.compare(0, 7, "layers.") != 0) continue;
        const char* p = kv.first.c_str() + 7;
        char* end = nullptr;
        long i = std::strtol(p, &end, 10);
        if (end != p && *end == '.' && i >= 0 && i < INT32_MAX) n = std::max<int64_t>(n, i + 1);
      }
      if (n == 0) fail(kComp, path_, ": 'n_layers' is not in the metadata and no 'layers.<i>.' tensors are given");
      c.n_layers = int32_t(n);
    }
    auto heads = meta("n_heads");
    if (!heads)
      fail(kComp, path_, ": 'n_heads' is not in the metadata and cannot be inferred from the tensor shapes "
           "(pass it as metadata, e.g. n_heads=8)");
    c.n_heads = *heads;
    if (auto v = meta("n_kv_heads")) {
      c.n_kv_heads = *v;
    } else {
      const int64_t kv_dim = dim_of("n_kv_heads", "layers.0.attention.wk.weight", 0);
      if (c.n_heads <= 0 || c.dim % c.n_heads != 0 || kv_dim % (c.dim / c.n_heads) != 0)
        fail(kComp, path_, ": cannot infer 'n_kv_heads' from wk rows ", kv_dim, " with dim ", c.dim, " and n_heads ",
             c.n_heads);
      c.n_kv_heads = int32_t(kv_dim / (c.dim / c.n_heads));
    }
    if (auto v = meta("seq_len")) c.seq_len = *v;
    else if (by_name_.count(kRopeReal)) c.seq_len = dim_of("seq_len", kRopeReal, 0);
    else fail(kComp, path_, ": 'seq_len' is not in the metadata and cannot be inferred from the tensor shapes "
              "(pass it as metadata, e.g. seq_len=512)");
    return c;
  }

 private:
  const std::string& path_;
  const std::map<std::string, std::string>& meta_;
  const std::unordered_map<std::string, const HostTensor*>& by_name_;
};

void check_data(const std::string& path, const HostTensor& t) {
  if (!is_float(t.dtype) && !is_block(t.dtype))
    fail(kComp, path, ": tensor '", t.name, "' has dtype ", dtype_name(t.dtype),
         ", expected a float type (F32, F16, BF16, F64) or a ggml block type");
  auto need = dtype_nbytes(t.dtype, t.numel());
  if (!need || *need != t.nbytes || (t.nbytes && !t.data))
    fail(kComp, path, ": tensor '", t.name, "' ", dtype_name(t.dtype), " ", shape_str(t.shape), " holds ", t.nbytes,
         " bytes, expected ", need ? *need : 0);
}

// True when a and b (same shape) hold the same values.
bool same_values(const HostTensor& a, const HostTensor& b) {
  if (a.dtype == b.dtype) return a.nbytes == b.nbytes && (a.nbytes == 0 || std::memcmp(a.data, b.data, a.nbytes) == 0);
  std::vector<float> x(kChunk), y(kChunk);
  const int64_t n = a.numel();
  for (int64_t s = 0; s < n; s += kChunk) {
    const int64_t e = std::min(n, s + kChunk);
    to_f32_range(a, s, e, x.data());
    to_f32_range(b, s, e, y.data());
    if (!std::equal(x.begin(), x.begin() + (e - s), y.begin())) return false;
  }
  return true;
}

void write_f32(AtomicFile& f, const HostTensor& t) {
  if (t.dtype == DType::F32) return f.write(t.data, t.nbytes);
  std::vector<float> buf(kChunk);
  const int64_t n = t.numel();
  for (int64_t s = 0; s < n; s += kChunk) {
    const int64_t e = std::min(n, s + kChunk);
    to_f32_range(t, s, e, buf.data());
    f.write(buf.data(), uint64_t(e - s) * 4);
  }
}

// llama2.c model.py precompute_freqs_cis(head_size, seq_len), theta 10000, in float32 like torch:
// freq_i = 1 / 10000^(2i / head_size), angle = t * freq_i; cos/sin rounded from double.
void write_rope(AtomicFile& f, const Llama2cConfig& c, bool imag) {
  const int head = c.dim / c.n_heads, half = head / 2;
  std::vector<float> freq(static_cast<size_t>(half)), row(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) freq[i] = 1.0f / std::pow(10000.0f, float(2 * i) / float(head));
  for (int t = 0; t < c.seq_len; ++t) {
    for (int i = 0; i < half; ++i) {
      const double a = double(float(t) * freq[i]);
      row[i] = float(imag ? std::sin(a) : std::cos(a));
    }
    f.write(row.data(), row.size() * 4);
  }
}

std::string name_list(const std::vector<std::string>& names) {
  std::string s;
  const size_t shown = std::min<size_t>(names.size(), 8);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > shown) s += str(" (and ", names.size() - shown, " more)");
  return s;
}

}  // namespace

void write_llama2c(const std::string& path, const std::vector<HostTensor>& tensors,
                   const std::map<std::string, std::string>& metadata, int version) {
  if (version != 0 && version != 1) fail(kComp, path, ": unknown version ", version, " (allowed: 0 = legacy, 1)");
  std::unordered_map<std::string, const HostTensor*> by_name;
  for (const HostTensor& t : tensors)
    if (!by_name.emplace(t.name, &t).second) fail(kComp, path, ": tensor '", t.name, "' given twice");
  ConfigBuilder builder(path, metadata, by_name);
  Llama2cConfig cfg = builder.build();

  // Shared classifier: no output.weight, or one equal to the embedding (as export.py decides),
  // unless the metadata says otherwise.
  const auto meta_shared = builder.meta("shared_classifier");
  auto out_it = by_name.find("output.weight");
  auto tok_it = by_name.find("tok_embeddings.weight");
  if (out_it == by_name.end()) {
    if (meta_shared && *meta_shared == 0)
      fail(kComp, path, ": metadata says shared_classifier=0 but no 'output.weight' is given");
    cfg.shared_classifier = true;
  } else if (meta_shared) {
    cfg.shared_classifier = *meta_shared != 0;
  } else {
    check_data(path, *out_it->second);
    if (tok_it != by_name.end()) check_data(path, *tok_it->second);
    cfg.shared_classifier = tok_it != by_name.end() && tok_it->second->shape == out_it->second->shape &&
                            same_values(*tok_it->second, *out_it->second);
  }
  if (std::string why = implausible(cfg); !why.empty())
    fail(kComp, path, ": cannot write config (", config_str(cfg), "): ", why);
  if (!file_bytes(cfg, version, version == 0))
    fail(kComp, path, ": config (", config_str(cfg), ") implies a file size beyond 64 bits");

  if (uint64_t(cfg.n_layers) * 9 > tensors.size())  // bounds the layout built below
    fail(kComp, path, ": n_layers ", cfg.n_layers, " needs ", uint64_t(cfg.n_layers) * 9, " layer tensors, only ",
         tensors.size(), " tensors given");
  const std::vector<Entry> entries = layout(cfg, version, version == 0);
  std::set<std::string> expected;
  std::vector<std::string> missing, unexpected;
  for (const Entry& e : entries) {
    if (e.rope) continue;
    expected.insert(e.name);
    if (!by_name.count(e.name)) missing.push_back(e.name);
  }
  for (const HostTensor& t : tensors) {
    const bool optional = t.name == kRopeReal || t.name == kRopeImag || t.name == "output.weight";
    if (!expected.count(t.name) && !optional) unexpected.push_back(t.name);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg;
    if (!missing.empty()) msg += "missing tensors: " + name_list(missing);
    if (!unexpected.empty()) msg += std::string(msg.empty() ? "" : "; ") + "unexpected tensors: " + name_list(unexpected);
    fail(kComp, path, ": ", msg, " (for ", config_str(cfg), ")");
  }
  if (cfg.shared_classifier && out_it != by_name.end()) {
    check_data(path, *out_it->second);
    check_data(path, *tok_it->second);
    if (tok_it->second->shape != out_it->second->shape || !same_values(*tok_it->second, *out_it->second))
      fail(kComp, path, ": metadata says shared_classifier=1 but 'output.weight' differs from 'tok_embeddings.weight'");
  }
  const bool has_real = by_name.count(kRopeReal), has_imag = by_name.count(kRopeImag);
  if (has_real != has_imag) fail(kComp, path, ": give both '", kRopeReal, "' and '", kRopeImag, "' or neither");
  const Shape rope_shape{cfg.seq_len, (cfg.dim / cfg.n_heads) / 2};
  for (const Entry& e : entries) {
    auto it = by_name.find(e.name);
    if (it == by_name.end()) continue;  // a RoPE table to compute
    const HostTensor& t = *it->second;
    if (t.shape != e.shape)
      fail(kComp, path, ": tensor '", e.name, "' has shape ", shape_str(t.shape), ", expected ", shape_str(e.shape),
           " for ", config_str(cfg));
    check_data(path, t);
  }
  if (has_real)
    for (const char* n : {kRopeReal, kRopeImag})
      if (by_name[n]->shape != rope_shape)
        fail(kComp, path, ": tensor '", n, "' has shape ", shape_str(by_name[n]->shape), ", expected ",
             shape_str(rope_shape));

  AtomicFile f(path, kComp);
  const int32_t params[7] = {cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads,
                             version == 0 && !cfg.shared_classifier ? -cfg.vocab_size : cfg.vocab_size, cfg.seq_len};
  if (version == 1) {
    f.write_le<uint32_t>(kMagic);
    f.write_le<int32_t>(1);
    f.write(params, sizeof params);
    f.write_le<uint8_t>(cfg.shared_classifier ? 1 : 0);
    f.write_zeros(kV1HeaderBytes - f.tell());
  } else {
    f.write(params, sizeof params);
  }
  for (const Entry& e : entries) {
    auto it = by_name.find(e.name);
    if (it != by_name.end()) write_f32(f, *it->second);
    else write_rope(f, cfg, e.name == kRopeImag);
  }
  f.commit();
}

}  // namespace mc
