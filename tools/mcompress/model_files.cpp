#include "model_files.h"

#include <chrono>
#include <cmath>
#include <memory>
#include <unistd.h>
#include <cstdio>
#include <optional>

#include "cli.h"
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <set>
#include <vector>

#include <fstream>
#include <memory>

#include <ATen/ATen.h>

#include "mcompress/atomic_file.h"
#include <sstream>
#include "mcompress/error.h"
#include "mcompress/rng.h"
#include "mcompress/tensor.h"
#include "mcompress/model.h"
#include "mcompress/tokenizer.h"
#include "mcompress/train.h"

namespace mcli {

namespace po = boost::program_options;

namespace fs = std::filesystem;

namespace {

bool has_ext(const std::string& p, std::initializer_list<const char*> exts) {
  const std::string e = fs::path(p).extension().string();
  for (const char* x : exts)
    if (e == x) return true;
  return false;
}

// An MNIST directory: t10k (or train) images and labels, gzip-compressed or raw.
mc::LabeledData read_mnist_dir(const std::string& dir) {
  for (const char* split : {"t10k", "train"}) {
    for (const char* gz : {".gz", ""}) {
      const fs::path img = fs::path(dir) / (std::string(split) + "-images-idx3-ubyte" + gz);
      const fs::path lab = fs::path(dir) / (std::string(split) + "-labels-idx1-ubyte" + gz);
      if (fs::exists(img) && fs::exists(lab)) return mc::read_mnist(img.string(), lab.string());
    }
  }
  mc::fail("eval", dir, ": directory holds no MNIST t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]");
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

uint64_t count_parameters(const mc::Model& model) { return uint64_t(mc::count_distinct_parameters(model.params())); }

uint64_t model_bytes(const std::string& model_path) {
  if (!fs::is_directory(model_path)) return fs::file_size(model_path);
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(model_path)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".bin" || ext == ".pt")) n += e.file_size();
  }
  return n;
}

EvalData load_eval_data(const mc::Model& model, const std::string& model_path, const EvalDataOptions& o) {
  const std::string& data = o.data;
  if (!fs::exists(data)) mc::fail<mc::FileError>("eval", data, ": no such file or directory");
  EvalData ed;
  ed.labeled = fs::is_directory(data) || has_ext(data, {".safetensors", ".h5", ".hdf5", ".pt", ".pth"});
  if (ed.labeled) {
    if (model.is_language_model())
      mc::fail("eval", data, ": labeled examples (MNIST / tensor file) need a classifier, but ", model_path,
               " is a language model");
    ed.examples = fs::is_directory(data) ? read_mnist_dir(data) : mc::read_tensor_dataset(data);
    return ed;
  }
  if (!model.is_language_model())
    mc::fail("eval", data, ": a classifier needs labeled examples (an MNIST directory or a tensor file), not text");
  ed.tokenizer_path = o.tokenizer.empty() ? find_tokenizer(model_path) : o.tokenizer;
  std::unique_ptr<mc::Tokenizer> tok;
  if (!ed.tokenizer_path.empty()) tok = mc::load_tokenizer(ed.tokenizer_path);
  if (tok && tok->vocab_size() != model.vocab_size())
    mc::fail("eval", ed.tokenizer_path, ": tokenizer has ", tok->vocab_size(), " tokens but the model's vocabulary has ",
             model.vocab_size());
  const bool tokens = o.tokens_u16 || o.tokens_u32 || has_ext(data, {".u16", ".u32", ".tok16", ".tok32"});
  if (tokens) {
    const int bpt = (o.tokens_u32 || has_ext(data, {".u32", ".tok32"})) ? 4 : 2;
    ed.corpus = mc::make_lm_corpus(mc::read_token_file(data, bpt), tok.get());
    return ed;
  }
  if (!tok)
    mc::fail("eval", "no tokenizer beside ", model_path, " (tokenizer.bin, tok*.bin, tokenizer.json): pass --tokenizer");
  if (looks_binary(data))
    mc::fail("eval", data, ": holds NUL bytes, not text (a token file? pass --tokens-u16 or --tokens-u32)");
  auto docs = mc::read_documents(data, o.separator);
  if (docs.empty()) mc::fail("eval", data, ": no documents (empty file, or only separators)");
  ed.corpus = mc::make_lm_corpus(*tok, docs);
  return ed;
}

// The calibration set as the model's forward takes it: `samples` windows of `seqlen` tokens drawn
// reproducibly from the documents' token stream, or `samples` labeled examples.
// allow_short: a text shorter than seqlen gives shorter sequences instead of an error.
at::Tensor calibration_inputs(const EvalData& cd, int64_t samples, int64_t seqlen, uint64_t seed,
                              bool allow_short) {
  mc::SplitMix64 rng{seed};
  if (cd.labeled) {
    const int64_t n = std::min<int64_t>(samples, cd.examples.count);
    const int64_t per = mc::shape_numel(cd.examples.example_shape);
    mc::Shape shape = {n};
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
    mc::fail("quantize", "calibration text has ", stream.size(), " tokens, shorter than one sequence of ", seqlen,
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
void evaluate_into(mc::Model& model, mc::Model* reference, const EvalData& ed, const mc::LmEvalOptions& lo,
                   bool compressed, std::vector<mc::MetricRow>& rows, std::string& protocol) {
  auto put = [&](const char* name, double v, bool higher, int dec, bool pct, bool primary) {
    for (auto& r : rows)
      if (r.name == name) {
        (compressed ? r.compressed : r.baseline) = v;
        return;
      }
    mc::MetricRow r;
    r.name = name, r.higher_is_better = higher, r.decimals = dec, r.percent = pct, r.is_primary = primary;
    (compressed ? r.compressed : r.baseline) = v;
    rows.push_back(r);
  };
  if (ed.labeled) {
    auto r = mc::evaluate_classifier(model, ed.examples, {}, reference);
    protocol = r.protocol;
    put("top-1 accuracy", r.top1, true, 2, true, true);
    put("top-5 accuracy", r.top5, true, 2, true, false);
    put("mean NLL (nats/example)", r.mean_nll, false, 4, false, false);
    if (r.has_reference) {
      put("KL(baseline || compressed) per example", r.mean_kl, false, 5, false, false);
      put("same top-1 as baseline", r.top1_agreement, true, 2, true, false);
    }
  } else {
    auto r = mc::evaluate_lm(model, ed.corpus, lo, reference);
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


void print_summary(const mc::Report& rep, bool labeled, const std::string& out, const char* bits_label,
                   const char* baseline_label, const char* compressed_label) {
  std::printf("\n%-40s %12s %12s %10s\n", "", baseline_label, compressed_label, "change");
  auto val = [](const mc::MetricRow& m, const std::optional<double>& v) {
    if (!v) return std::string("");
    return m.percent ? fmt("%.2f%%", 100 * *v) : fmt(("%." + std::to_string(m.decimals) + "f").c_str(), *v);
  };
  for (const auto& m : rep.metrics) {
    std::string change = m.baseline && m.compressed && *m.baseline != 0
                             ? fmt("%+.2f%%", 100 * (*m.compressed - *m.baseline) / std::fabs(*m.baseline))
                             : "";
    std::printf("%-40s %12s %12s %10s\n", m.name.c_str(), val(m, m.baseline).c_str(), val(m, m.compressed).c_str(),
                change.c_str());
  }
  std::printf("%-40s %12s %12s %9.2fx\n", "file size", human_bytes(rep.size_before).c_str(),
              human_bytes(rep.size_after).c_str(), double(rep.size_before) / double(rep.size_after));
  double qbits = 0, qn = 0;
  for (const auto& l : rep.layers) qbits += l.bits_per_weight * double(l.params), qn += double(l.params);
  if (qn > 0) std::printf("%-40s %12s %12s\n", bits_label, "32", fmt("%.3f", qbits / qn).c_str());
  if (auto r = rep.retention())
    std::printf("\nretention %.2f%% (%s)\n", 100 * *r,
                labeled ? (std::string(compressed_label) + " / " + baseline_label + " top-1").c_str()
                        : (std::string(baseline_label) + " / " + compressed_label + " perplexity").c_str());
  for (const auto& w : rep.warnings) std::printf("warning: %s\n", w.c_str());
  std::printf("report: %s/report.md (also report.html, report.json)\n", out.c_str());
}


std::string read_file_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::string& bytes, const char* component) {
  mc::AtomicFile f(path, component);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

std::string eta_text(double s) {
  char b[32];
  if (s >= 3600) std::snprintf(b, sizeof b, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  else std::snprintf(b, sizeof b, "%dm%02ds", int(s / 60), int(s) % 60);
  return b;
}

std::function<void(const mc::TrainProgress&)> train_progress(bool quiet) {
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  return [quiet, tty](const mc::TrainProgress& p) {
    if (log_json()) {
      nlohmann::json j = {{"step", p.step}, {"steps", p.steps}, {"loss", p.loss}, {"lr", p.lr},
                          {"items_per_s", p.items_per_s}, {"unit", p.unit}, {"eta_s", p.eta_s}};
      for (const auto& [name, v] : p.parts) j["parts"][name] = v;
      if (p.valid_loss >= 0) j["held_out_loss"] = p.valid_loss;
      log_event("train", j.dump());
      return;
    }
    if (quiet) return;
    const bool report = p.valid_loss >= 0 || p.step == p.steps || p.step % 50 == 0;
    if (!tty && !report) return;
    std::string s = "step " + fmt("%5.0f", double(p.step)) + "/" + std::to_string(p.steps) + "  loss " + fmt("%.4f", p.loss);
    if (p.parts.size() > 1)
      for (const auto& [name, v] : p.parts) s += " " + name + " " + fmt("%.3f", v);
    s += "  lr " + fmt("%.2e", p.lr) + "  " + fmt("%6.0f", p.items_per_s) + " " + p.unit + "/s  ETA " + eta_text(p.eta_s);
    if (p.valid_loss >= 0) s += "  held-out " + fmt("%.4f", p.valid_loss);
    if (tty) std::printf("\r%s%s", s.c_str(), report ? "\n" : "");
    else std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
}

std::vector<int32_t> text_token_stream(const std::string& path, const mc::Tokenizer& tok) {
  std::vector<int32_t> out;
  for (const auto& doc : mc::read_documents(path)) {
    out.push_back(tok.bos_id());
    auto ids = tok.encode(doc);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',') {
      if (!cur.empty()) v.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  return v;
}

std::function<void(const std::string&, const mc::LayerInfo&, int64_t, int64_t)> layer_progress(
    const std::string& method, bool quiet) {
  struct State {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::string phase;
  };
  auto st = std::make_shared<State>();
  const bool tty = ::isatty(1) != 0;
  return [=](const std::string& phase, const mc::LayerInfo& l, int64_t i, int64_t n) {
    if (quiet && !log_json()) return;
    if (phase != st->phase) st->phase = phase, st->start = std::chrono::steady_clock::now();
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - st->start).count();
    const double eta = i > 1 ? el / double(i - 1) * double(n - i + 1) : 0.0;
    if (log_json()) {
      log_event("progress", nlohmann::json({{"method", method}, {"phase", phase}, {"layer", l.name}, {"i", i}, {"n", n},
                                            {"elapsed_s", el}, {"eta_s", eta}}).dump());
      return;
    }
    if (tty)
      std::printf("\r%s %s layer %lld/%lld %-32s %6.1f s, ETA %5.0f s", method.c_str(), phase.c_str(),
                  static_cast<long long>(i), static_cast<long long>(n), l.name.c_str(), el, eta);
    else
      std::printf("%s %s layer %lld/%lld %s (%.1f s elapsed, ETA %.0f s)\n", method.c_str(), phase.c_str(),
                  static_cast<long long>(i), static_cast<long long>(n), l.name.c_str(), el, eta);
    std::fflush(stdout);
  };
}

void end_progress(bool quiet) {
  if (!quiet && ::isatty(1)) std::printf("\r%-100s\r", "");
}


void add_run_data_options(po::options_description& desc, RunDataOptions& r, int64_t default_calib_samples,
                          const char* calib_samples_help) {
  desc.add_options()
      ("eval", po::value<std::string>(&r.eval_data), "evaluation data (text, token file, MNIST directory, tensor file)")
      ("calib", po::value<std::string>(&r.calib_data), "calibration data (default: the --eval data)")
      ("calib-samples", po::value<int64_t>(&r.calib_samples)->default_value(default_calib_samples), calib_samples_help)
      ("calib-seqlen", po::value<int64_t>(&r.calib_seqlen)->default_value(128), "tokens per calibration sequence")
      ("seed", po::value<uint64_t>(&r.seed)->default_value(0), "seed of the calibration sampling")
      ("tokenizer", po::value<std::string>(&r.tokenizer), "tokenizer (default: one beside the model)")
      ("arch", po::value<std::string>(&r.arch), "classifier architecture YAML")
      ("window", po::value<int64_t>(&r.window)->default_value(128), "evaluation window (tokens)")
      ("truncate", po::bool_switch(&r.truncate), "score only each document's first window")
      ("separator", po::value<std::string>(&r.separator)->default_value("<|endoftext|>"), "document separator")
      ("max-docs", po::value<int64_t>(&r.max_docs)->default_value(0), "evaluate at most N documents (0 = all)")
      ("device", po::value<std::string>(&r.device)->default_value("cpu"), "cpu or cuda");
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

JobOutput::JobOutput(const std::string& out, const std::string& command, const std::vector<std::string>& args,
                     const std::vector<std::string>& inputs, bool quiet)
    : out_(out), remove_on_failure_(!std::filesystem::exists(out)) {
  std::filesystem::create_directories(out);
  remove_stale_temp_files(out);
  journal_ = std::make_unique<mc::BlockJournal>((std::filesystem::path(out) / ".resume").string(),
                                                run_identity(command, args, inputs));
  if (!journal_->resumed()) return;
  if (log_json())
    log_event("resume", nlohmann::json({{"finished", journal_->summary()}, {"journal", journal_->dir()}}).dump());
  else if (!quiet)
    std::printf("resuming an interrupted run: %s finished, read from %s\n", journal_->summary().c_str(),
                journal_->dir().c_str());
}

JobOutput::~JobOutput() {
  std::error_code ec;
  if (remove_on_failure_) std::filesystem::remove_all(out_, ec);
}

}  // namespace mcli
