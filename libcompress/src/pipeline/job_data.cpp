// Data, files and output directories of the pipeline's jobs (job_data.h).
#include "mcompress/job_data.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "mcompress/atomic_file.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/events.h"
#include "mcompress/model.h"
#include "mcompress/rng.h"
#include "mcompress/tensor.h"
#include "mcompress/tokenizer.h"

namespace mc {

namespace fs = std::filesystem;

namespace {

bool has_ext(const std::string& p, std::initializer_list<const char*> exts) {
  const std::string e = fs::path(p).extension().string();
  for (const char* x : exts)
    if (e == x) return true;
  return false;
}

// An MNIST directory: t10k (or train) images and labels, gzip-compressed or raw.
LabeledData read_mnist_dir(const std::string& dir) {
  for (const char* split : {"t10k", "train"}) {
    for (const char* gz : {".gz", ""}) {
      const fs::path img = fs::path(dir) / (std::string(split) + "-images-idx3-ubyte" + gz);
      const fs::path lab = fs::path(dir) / (std::string(split) + "-labels-idx1-ubyte" + gz);
      if (fs::exists(img) && fs::exists(lab)) return read_mnist(img.string(), lab.string());
    }
  }
  fail("eval", dir, ": directory holds no MNIST t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]");
}

// A NUL byte in the first 64 KiB: not a text file.
bool looks_binary(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(65536, '\0');
  in.read(head.data(), std::streamsize(head.size()));
  head.resize(size_t(in.gcount()));
  return head.find('\0') != std::string::npos;
}

}  // namespace

std::string find_tokenizer(const std::string& model_path) {
  fs::path dir = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
  if (dir.empty()) dir = ".";
  for (const char* name : {"tokenizer.bin", "tokenizer.json"})
    if (fs::exists(dir / name)) return (dir / name).string();
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && n.rfind("tok", 0) == 0 && n.size() > 4 && n.compare(n.size() - 4, 4, ".bin") == 0)
      found.push_back(e.path().string());
  }
  std::sort(found.begin(), found.end());
  return found.empty() ? "" : found.front();
}

uint64_t count_parameters(const Model& model) { return uint64_t(count_distinct_parameters(model.params())); }

std::map<std::string, DType> stored_dtypes(const std::string& model_path) {
  std::map<std::string, DType> out;
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) {
    for (const auto& e : fs::directory_iterator(model_path, ec))
      if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path().string());
  } else {
    files.push_back(model_path);
  }
  for (const auto& f : files) {
    try {
      const auto reader = open_checkpoint(f);  // kept alive: tensors() refers into it
      for (const auto& t : reader->tensors()) out[t.name] = t.dtype;
    } catch (const Error&) {
      return {};
    }
  }
  return out;
}

uint64_t model_bytes(const std::string& model_path) {
  if (!fs::is_directory(model_path)) return fs::file_size(model_path);
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(model_path)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".bin" || ext == ".pt")) n += e.file_size();
  }
  return n;
}

EvalData load_eval_data(const Model& model, const std::string& model_path, const EvalDataOptions& o) {
  const std::string& data = o.data;
  if (!fs::exists(data)) fail<FileError>("eval", data, ": no such file or directory");
  EvalData ed;
  ed.labeled = fs::is_directory(data) || has_ext(data, {".safetensors", ".h5", ".hdf5", ".pt", ".pth"});
  if (ed.labeled) {
    if (model.is_language_model())
      fail("eval", data, ": labeled examples (MNIST / tensor file) need a classifier, but ", model_path,
               " is a language model");
    ed.examples = fs::is_directory(data) ? read_mnist_dir(data) : read_tensor_dataset(data);
    return ed;
  }
  if (!model.is_language_model())
    fail("eval", data, ": a classifier needs labeled examples (an MNIST directory or a tensor file), not text");
  ed.tokenizer_path = o.tokenizer.empty() ? find_tokenizer(model_path) : o.tokenizer;
  std::unique_ptr<Tokenizer> tok;
  if (!ed.tokenizer_path.empty()) tok = load_tokenizer(ed.tokenizer_path);
  // An embedding padded beyond the tokenizer (Qwen: 151936 rows, 151669 tokens) is normal; a tokenizer with
  // ids the embedding lacks is not.
  if (tok && tok->text_vocab_size() > model.vocab_size())
    fail("eval", ed.tokenizer_path, ": tokenizer has ", tok->vocab_size(), " tokens but the model's vocabulary has ",
             "only ", model.vocab_size());
  const bool tokens = o.tokens_u16 || o.tokens_u32 || has_ext(data, {".u16", ".u32", ".tok16", ".tok32"});
  if (tokens) {
    const int bpt = (o.tokens_u32 || has_ext(data, {".u32", ".tok32"})) ? 4 : 2;
    ed.corpus = make_lm_corpus(read_token_file(data, bpt), tok.get());
    return ed;
  }
  if (!tok)
    fail("eval", "no tokenizer beside ", model_path, " (tokenizer.bin, tok*.bin, tokenizer.json): pass --tokenizer");
  if (looks_binary(data))
    fail("eval", data, ": holds NUL bytes, not text (a token file? pass --tokens-u16 or --tokens-u32)");
  auto docs = read_documents(data, o.separator);
  if (docs.empty()) fail("eval", data, ": no documents (empty file, or only separators)");
  ed.corpus = make_lm_corpus(*tok, docs);
  return ed;
}

// The calibration set as the model's forward takes it: `samples` windows of `seqlen` tokens drawn
// reproducibly from the documents' token stream, or `samples` labeled examples.
// allow_short: a text shorter than seqlen gives shorter sequences instead of an error.
at::Tensor calibration_inputs(const EvalData& cd, int64_t samples, int64_t seqlen, uint64_t seed,
                              bool allow_short) {
  SplitMix64 rng{seed};
  if (cd.labeled) {
    const int64_t n = std::min<int64_t>(samples, cd.examples.count);
    const int64_t per = shape_numel(cd.examples.example_shape);
    Shape shape = {n};
    shape.insert(shape.end(), cd.examples.example_shape.begin(), cd.examples.example_shape.end());
    at::Tensor x = at::empty(shape, at::kFloat);
    float* dst = x.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t idx = static_cast<int64_t>(rng.below(static_cast<uint64_t>(cd.examples.count)));
      std::copy_n(cd.examples.inputs.data() + idx * per, per, dst + i * per);
    }
    return x;
  }
  std::vector<int32_t> stream;
  for (const auto& d : cd.corpus.docs) stream.insert(stream.end(), d.begin(), d.end());
  if (allow_short && !stream.empty()) seqlen = std::min<int64_t>(seqlen, static_cast<int64_t>(stream.size()));
  if (static_cast<int64_t>(stream.size()) < seqlen)
    fail("quantize", "calibration text has ", stream.size(), " tokens, shorter than one sequence of ", seqlen,
             " (--calib-seqlen)");
  at::Tensor x = at::empty({samples, seqlen}, at::kLong);
  int64_t* dst = x.data_ptr<int64_t>();
  const uint64_t starts = stream.size() - static_cast<uint64_t>(seqlen) + 1;
  for (int64_t i = 0; i < samples; ++i) {
    const int64_t s0 = static_cast<int64_t>(rng.below(starts));
    for (int64_t j = 0; j < seqlen; ++j) dst[i * seqlen + j] = stream[s0 + j];
  }
  return x;
}


// Evaluates `model` (against `reference` when given) and fills the compressed or baseline column.
void evaluate_into(Model& model, Model* reference, const EvalData& ed, const LmEvalOptions& lo,
                   bool compressed, std::vector<MetricRow>& rows, std::string& protocol) {
  auto put = [&](const char* name, double v, bool higher, int dec, bool pct, bool primary) {
    for (auto& r : rows)
      if (r.name == name) {
        (compressed ? r.compressed : r.baseline) = v;
        return;
      }
    MetricRow r;
    r.name = name, r.higher_is_better = higher, r.decimals = dec, r.percent = pct, r.is_primary = primary;
    (compressed ? r.compressed : r.baseline) = v;
    rows.push_back(r);
  };
  if (ed.labeled) {
    auto r = evaluate_classifier(model, ed.examples, {}, reference);
    protocol = r.protocol;
    put("top-1 accuracy", r.top1, true, 2, true, true);
    put("top-5 accuracy", r.top5, true, 2, true, false);
    put("mean NLL (nats/example)", r.mean_nll, false, 4, false, false);
    if (r.has_reference) {
      put("KL(baseline || compressed) per example", r.mean_kl, false, 5, false, false);
      put("same top-1 as baseline", r.top1_agreement, true, 2, true, false);
    }
  } else {
    auto r = evaluate_lm(model, ed.corpus, lo, reference);
    protocol = r.protocol;
    if (r.bits_per_byte >= 0) put("bits per byte", r.bits_per_byte, false, 4, false, false);
    put("perplexity", r.perplexity, false, 3, false, true);
    put("mean NLL (nats/token)", r.mean_nll, false, 4, false, false);
    if (r.has_reference) {
      put("KL(baseline || compressed) per token", r.mean_kl, false, 5, false, false);
      put("same top-1 as baseline", r.top1_agreement, true, 2, true, false);
    }
  }
}

std::string read_file_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::string& bytes, const char* component) {
  AtomicFile f(path, component);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

std::string run_identity(const std::string& command, const std::vector<std::string>& args,
                         const std::vector<std::string>& input_files) {
  std::string id = "{\"command\": \"" + command + "\", \"args\": [";
  bool first = true;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-q" || a == "--quiet" || a == "--log-json" || a.rfind("--threads=", 0) == 0) continue;
    if (a == "--threads") {
      ++i;
      continue;
    }
    std::string esc;
    for (char c : a) esc += c == '"' || c == '\\' ? std::string("\\") + c : std::string(1, c);
    id += (first ? "\"" : ", \"") + esc + "\"";
    first = false;
  }
  id += "], \"inputs\": {";
  first = true;
  for (const auto& f : input_files) {
    std::error_code ec;
    if (f.empty() || !std::filesystem::exists(f, ec)) continue;
    const auto size = std::filesystem::is_regular_file(f, ec) ? std::filesystem::file_size(f, ec) : 0;
    const auto mtime = std::filesystem::last_write_time(f, ec).time_since_epoch().count();
    id += (first ? "\"" : ", \"") + f + "\": [" + std::to_string(size) + ", " + std::to_string(mtime) + "]";
    first = false;
  }
  return id + "}}";
}

void remove_stale_temp_files(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t t = name.rfind(".tmp-");
    if (t == std::string::npos) continue;
    const std::string pid = name.substr(t + 5);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (!std::filesystem::exists("/proc/" + pid, ec)) std::filesystem::remove(e.path(), ec);
  }
}


JobOutput::JobOutput(const std::string& out, const std::string& identity, const EventSink& events)
    : out_(out), remove_on_failure_(!fs::exists(out)) {
  fs::create_directories(out);
  remove_stale_temp_files(out);
  journal_ = std::make_unique<BlockJournal>((fs::path(out) / ".resume").string(), identity);
  if (!journal_->resumed()) return;
  events.emit("resume", nlohmann::json({{"finished", journal_->summary()}, {"journal", journal_->dir()}}).dump());
  events.print("resuming an interrupted run: " + journal_->summary() + " finished, read from " + journal_->dir());
}

JobOutput::~JobOutput() {
  std::error_code ec;
  if (remove_on_failure_) fs::remove_all(out_, ec);
}

void copy_file_atomic(const std::string& from, const std::string& to, const char* component) {
  std::ifstream in(from, std::ios::binary);
  if (!in) fail<FileError>(component, from, ": cannot be read");
  AtomicFile f(to, component);
  std::vector<char> buf(size_t(1) << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    if (in.gcount() > 0) f.write(buf.data(), uint64_t(in.gcount()));
  }
  if (in.bad()) fail<FileError>(component, from, ": read error");
  f.commit();
}

void copy_companion_files(const std::string& model_path, const std::string& tokenizer, const std::string& out) {
  std::error_code ec;
  fs::path dir = fs::is_directory(model_path, ec) ? fs::path(model_path) : fs::path(model_path).parent_path();
  if (dir.empty()) dir = ".";
  std::vector<fs::path> files;
  if (!tokenizer.empty()) files.emplace_back(tokenizer);
  for (const char* n : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                        "tokenizer.model", "chat_template.jinja", "tokenizer.bin", "preprocessor_config.json",
                        "processor_config.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
                        "normalizer.json"})
    files.push_back(dir / n);
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("tok", 0) == 0 && n.size() > 4 && n.compare(n.size() - 4, 4, ".bin") == 0) files.push_back(e.path());
  }
  std::set<std::string> done;
  for (const auto& f : files) {
    const fs::path to = fs::path(out) / f.filename();
    if (!fs::is_regular_file(f, ec) || !done.insert(f.filename().string()).second) continue;
    if (fs::exists(to, ec) && fs::equivalent(f, to, ec)) continue;
    copy_file_atomic(f.string(), to.string(), "output");
  }
}

// SHA-256 (FIPS 180-4).
namespace {

class Sha256 {
 public:
  void update(const unsigned char* p, size_t n) {
    len_ += n;
    while (n > 0) {
      const size_t take = std::min(n, size_t(64) - fill_);
      std::copy_n(p, take, buf_.begin() + long(fill_));
      fill_ += take, p += take, n -= take;
      if (fill_ == 64) block(buf_.data()), fill_ = 0;
    }
  }
  std::string hex() {
    const uint64_t bits = len_ * 8;
    const unsigned char one = 0x80, zero = 0;
    update(&one, 1);
    while (fill_ != 56) update(&zero, 1);
    unsigned char l[8];
    for (int i = 0; i < 8; ++i) l[i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
    update(l, 8);
    std::string s;
    char b[9];
    for (uint32_t v : h_) std::snprintf(b, sizeof b, "%08x", v), s += b;
    return s;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void block(const unsigned char* p) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h_[0] += a, h_[1] += b, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }
  std::array<uint32_t, 8> h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> buf_{};
  size_t fill_ = 0;
  uint64_t len_ = 0;
};

void hash_file_into(Sha256& h, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<FileError>("data", path, ": cannot be read");
  std::vector<char> buf(size_t(1) << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    h.update(reinterpret_cast<const unsigned char*>(buf.data()), size_t(in.gcount()));
  }
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Sha256 h;
  h.update(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return h.hex();
}

std::string sha256_file(const std::string& path) {
  Sha256 h;
  if (!fs::is_directory(path)) {
    hash_file_into(h, path);
    return h.hex();
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    h.update(reinterpret_cast<const unsigned char*>(n.data()), n.size() + 1);  // with the NUL
    hash_file_into(h, (fs::path(path) / n).string());
  }
  return h.hex();
}

std::pair<int64_t, int64_t> parse_range(const std::string& spec, int64_t n, const char* opt) {
  if (spec.empty()) return {0, n};
  const size_t c = spec.find(':');
  int64_t a = 0, b = n;
  try {
    if (c == std::string::npos) throw std::invalid_argument("no colon");
    if (c > 0) a = std::stoll(spec.substr(0, c));
    if (c + 1 < spec.size()) b = std::stoll(spec.substr(c + 1));
  } catch (const std::exception&) {
    fail("data", opt, " '", spec, "' is not START:END (e.g. 0:8000)");
  }
  if (a < 0 || b > n || a >= b)
    fail("data", opt, " ", spec, " is empty or outside the data's ", n, " items");
  return {a, b};
}

void slice_eval_data(EvalData& ed, const std::string& spec, const char* opt) {
  if (ed.labeled) {
    const int64_t n = ed.examples.count;
    auto [a, b] = parse_range(spec, n, opt);
    const int64_t per = n ? int64_t(ed.examples.inputs.size()) / n : 0;
    ed.examples.inputs = std::vector<float>(ed.examples.inputs.begin() + a * per, ed.examples.inputs.begin() + b * per);
    ed.examples.labels = std::vector<int64_t>(ed.examples.labels.begin() + a, ed.examples.labels.begin() + b);
    ed.examples.count = b - a;
  } else {
    auto& c = ed.corpus;
    auto [a, b] = parse_range(spec, int64_t(c.docs.size()), opt);
    c.docs = std::vector<std::vector<int32_t>>(c.docs.begin() + a, c.docs.begin() + b);
    if (!c.bytes.empty()) c.bytes = std::vector<std::vector<int32_t>>(c.bytes.begin() + a, c.bytes.begin() + b);
  }
}

}  // namespace mc
