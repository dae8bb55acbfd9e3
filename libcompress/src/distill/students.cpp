// Students built from a config file and randomly initialised (distill.h: student_from_config).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "mcompress/distill.h"
#include "mcompress/error.h"
#include "mcompress/models/classifier.h"
#include "mcompress/models/llama.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

constexpr const char* kC = "distill";

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail<FileError>(kC, path, ": cannot open the student config");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int64_t get_int(const YAML::Node& n, const std::string& path, const char* key, int64_t dflt, bool required) {
  if (!n[key]) {
    if (required) fail(kC, path, ": student config lacks '", key, "'");
    return dflt;
  }
  try {
    return n[key].as<int64_t>();
  } catch (const YAML::Exception&) {
    fail(kC, path, ": student config '", key, "' is not an integer");
  }
}

std::unique_ptr<Model> llama_student(const LlamaModel& teacher, const YAML::Node& y, const std::string& path,
                                     uint64_t seed) {
  LlamaConfig c = teacher.config();
  const LlamaConfig& t = teacher.config();
  static const std::set<std::string> known = {"dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "layers",
                                              "heads", "kv_heads", "hidden"};
  for (const auto& kv : y) {
    const std::string k = kv.first.as<std::string>();
    if (!known.count(k))
      fail(kC, path, ": unknown student config key '", k, "' (allowed: dim, n_layers, n_heads, n_kv_heads, hidden_dim)");
  }
  auto pick = [&](const char* a, const char* b, int64_t dflt, bool required) {
    return y[a] ? get_int(y, path, a, dflt, true) : get_int(y, path, b, dflt, required);
  };
  c.dim = pick("dim", "dim", t.dim, true);
  c.n_layers = pick("n_layers", "layers", t.n_layers, true);
  c.n_heads = pick("n_heads", "heads", t.n_heads, true);
  c.n_kv_heads = pick("n_kv_heads", "kv_heads", c.n_heads, false);
  const int64_t dflt_hidden = (t.hidden_dim * c.dim / t.dim + 7) / 8 * 8;
  c.hidden_dim = pick("hidden_dim", "hidden", dflt_hidden, false);
  if (c.n_heads <= 0 || c.dim % c.n_heads != 0)
    fail(kC, path, ": student n_heads ", c.n_heads, " must divide dim ", c.dim);
  c.head_dim = c.dim / c.n_heads;
  try {
    c.validate();
  } catch (const InputError& e) {
    fail(kC, path, ": student ", e.what());
  }
  std::map<std::string, HostTensor> w;
  for (const auto& [k, v] : init_llama_weights(c, seed)) w[k] = from_torch(k, v);
  return std::make_unique<LlamaModel>(c, w);
}

// PyTorch's default initialisation of linear / conv layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
std::unique_ptr<Model> classifier_student(const std::string& text, const std::string& path, uint64_t seed) {
  YAML::Node y;
  try {
    y = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail(kC, path, ": not valid YAML: ", e.what());
  }
  if (!y["layers"] || !y["layers"].IsSequence()) fail(kC, path, ": classifier student config lacks a 'layers' list");
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::map<std::string, HostTensor> w;
  auto uniform = [&](const std::string& name, std::vector<int64_t> shape, double bound) {
    w[name] = from_torch(name, at::empty(shape, at::kFloat).uniform_(-bound, bound, gen));
  };
  for (const auto& l : y["layers"]) {
    const std::string type = l["type"] ? l["type"].as<std::string>() : "";
    const std::string name = l["name"] ? l["name"].as<std::string>() : "";
    const bool bias = !l["bias"] || l["bias"].as<bool>();
    if (type == "linear") {
      const int64_t in = l["in"].as<int64_t>(), out = l["out"].as<int64_t>();
      uniform(name + ".weight", {out, in}, 1.0 / std::sqrt(double(in)));
      if (bias) uniform(name + ".bias", {out}, 1.0 / std::sqrt(double(in)));
    } else if (type == "conv2d") {
      const int64_t in = l["in"].as<int64_t>(), out = l["out"].as<int64_t>(), k = l["kernel"].as<int64_t>();
      const double bound = 1.0 / std::sqrt(double(in * k * k));
      uniform(name + ".weight", {out, in, k, k}, bound);
      if (bias) uniform(name + ".bias", {out}, bound);
    } else if (type == "batchnorm") {
      const int64_t f = l["features"].as<int64_t>();
      w[name + ".weight"] = from_torch(name + ".weight", at::ones({f}));
      w[name + ".bias"] = from_torch(name + ".bias", at::zeros({f}));
      w[name + ".running_mean"] = from_torch(name + ".running_mean", at::zeros({f}));
      w[name + ".running_var"] = from_torch(name + ".running_var", at::ones({f}));
    }
  }
  return std::make_unique<ClassifierModel>(text, w, path);
}

}  // namespace

std::unique_ptr<Model> student_from_config(const Model& teacher, const std::string& path, uint64_t seed) {
  const std::string text = read_text(path);
  if (!teacher.is_language_model()) return classifier_student(text, path, seed);
  auto* lt = dynamic_cast<const LlamaModel*>(&teacher);
  if (!lt) fail(kC, "students from a config need a llama-family teacher (got ", teacher.arch(), ")");
  YAML::Node y;
  try {
    y = YAML::Load(text);  // JSON is YAML too
  } catch (const YAML::Exception& e) {
    fail(kC, path, ": not valid YAML or JSON: ", e.what());
  }
  if (!y.IsMap()) fail(kC, path, ": student config must be a mapping (dim, n_layers, n_heads, ...)");
  return llama_student(*lt, y, path, seed);
}

}  // namespace mc
