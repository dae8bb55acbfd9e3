// Recipe YAML -> stages of CLI options (recipe.h).
#include "mcompress/recipe.h"

#include "mcompress/pipeline.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "mcompress/error.h"

namespace mc {

namespace {

constexpr const char* kC = "recipe";

std::string dashed(std::string k) {
  for (char& c : k)
    if (c == '_') c = '-';
  return k;
}

std::string fmt_num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// A scalar option value as the CLI takes it; sequences are comma-joined.
std::string scalar_text(const YAML::Node& n, const std::string& where, const std::string& key) {
  if (n.IsScalar()) return n.Scalar();
  if (n.IsSequence()) {
    std::string s;
    for (const auto& item : n) {
      if (!item.IsScalar()) fail(kC, where, ": option '", key, "' must be a list of plain values");
      s += (s.empty() ? "" : ",") + item.Scalar();
    }
    return s;
  }
  fail(kC, where, ": option '", key, "' must be a value or a list of values");
}

bool is_bool(const YAML::Node& n, bool* v) {
  if (!n.IsScalar()) return false;
  const std::string& s = n.Scalar();
  if (s == "true" || s == "True" || s == "yes") return *v = true, true;
  if (s == "false" || s == "False" || s == "no") return *v = false, true;
  return false;
}

// overrides: [{match: PATTERN or [PATTERNS], bits: 8, group-size: 64, per-channel: true, asym: true}]
void parse_overrides(const YAML::Node& list, RecipeStage& st) {
  if (!list.IsSequence()) fail(kC, st.where, ": 'overrides' must be a list of {match: PATTERN, bits: ...}");
  for (const auto& ov : list) {
    if (!ov.IsMap() || !ov["match"]) fail(kC, st.where, ": every override needs 'match' (a layer pattern)");
    std::vector<std::string> patterns;
    if (ov["match"].IsSequence())
      for (const auto& p : ov["match"]) patterns.push_back(p.as<std::string>());
    else
      patterns.push_back(ov["match"].as<std::string>());
    std::string settings;
    for (const auto& kv : ov) {
      const std::string key = dashed(kv.first.as<std::string>());
      if (key == "match") continue;
      static const std::set<std::string> allowed = {"bits", "group-size", "per-channel", "per-tensor", "sym", "asym",
                                                    "mse-clip"};
      if (!allowed.count(key))
        fail(kC, st.where, ": override key '", key, "' is unknown (allowed: match, bits, group-size, per-channel, "
             "per-tensor, sym, asym, mse-clip)");
      bool b = false;
      if (key == "bits" || key == "group-size") settings += (settings.empty() ? "" : ",") + key + "=" + kv.second.Scalar();
      else if (is_bool(kv.second, &b)) {
        if (b) settings += (settings.empty() ? "" : ",") + key;
      } else
        fail(kC, st.where, ": override '", key, "' must be true or false");
    }
    if (settings.empty()) fail(kC, st.where, ": an override without settings (bits, group-size, ...)");
    for (const auto& p : patterns) st.options.emplace_back("override", p + ":" + settings);
  }
}

const std::set<std::string>& reserved() {
  static const std::set<std::string> r = {"model", "output", "o", "teacher", "help", "threads", "quiet"};
  return r;
}

}  // namespace

bool RecipeStage::has(const std::string& option) const {
  for (const auto& [k, v] : options)
    if (k == option) return true;
  return false;
}

std::string RecipeStage::get(const std::string& option) const {
  for (const auto& [k, v] : options)
    if (k == option) return v;
  return "";
}

std::vector<std::string> RecipeStage::args() const {
  std::vector<std::string> a;
  for (const auto& [k, v] : options) {
    a.push_back("--" + k);
    if (!v.empty()) a.push_back(v);
  }
  return a;
}

std::string RecipeStage::describe() const {
  std::string s = pass;
  for (const auto& x : args()) s += " " + (x.find(' ') != std::string::npos ? "'" + x + "'" : x);
  return s;
}

std::string RecipeGate::describe() const {
  return metric + " may worsen by at most " + (relative ? fmt_num(100 * max_drop) + "%" : fmt_num(max_drop));
}

Recipe parse_recipe(const std::string& text, const std::string& where) {
  YAML::Node y;
  try {
    y = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail(kC, where, ": not valid YAML: ", e.what());
  }
  if (!y.IsMap()) fail(kC, where, ": a recipe is a mapping with 'stages'");
  Recipe r;
  r.path = where;
  r.text = text;
  static const std::set<std::string> top = {"name", "description", "seed", "stages", "gate", "export"};
  for (const auto& kv : y) {
    const std::string k = kv.first.as<std::string>();
    if (!top.count(k)) fail(kC, where, ": unknown key '", k, "' (allowed: name, description, seed, stages, gate, export)");
  }
  r.name = y["name"] ? y["name"].as<std::string>() : "";
  r.description = y["description"] ? y["description"].as<std::string>() : "";
  if (y["seed"]) {
    try {
      r.seed = y["seed"].as<uint64_t>();
    } catch (const YAML::Exception&) {
      fail(kC, where, ": 'seed' must be a non-negative integer");
    }
  }
  if (!y["stages"] || !y["stages"].IsSequence() || y["stages"].size() == 0)
    fail(kC, where, ": 'stages' must be a non-empty list (e.g. - quantize: {method: gptq, bits: 4})");
  int i = 0;
  for (const auto& node : y["stages"]) {
    ++i;
    if (!node.IsMap() || node.size() != 1)
      fail(kC, where, ": stage ", i, " must be one pass with its options (e.g. - prune: {method: sparsegpt})");
    RecipeStage st;
    st.pass = node.begin()->first.as<std::string>();
    st.where = where + ": stage " + std::to_string(i) + " (" + st.pass + ")";
    if (st.pass != "quantize" && st.pass != "prune" && st.pass != "distill")
      fail(kC, st.where, ": unknown pass '", st.pass, "' (allowed: quantize, prune, distill)");
    const YAML::Node opts = node.begin()->second;
    if (opts && !opts.IsNull()) {
      if (!opts.IsMap()) fail(kC, st.where, ": options must be a mapping");
      for (const auto& kv : opts) {
        const std::string key = dashed(kv.first.as<std::string>());
        if (reserved().count(key))
          fail(kC, st.where, ": option '", key, "' is set by mcompress run (--model, -o), not by a recipe");
        if (key == "overrides") {
          if (st.pass != "quantize") fail(kC, st.where, ": 'overrides' applies to quantize stages");
          parse_overrides(kv.second, st);
          continue;
        }
        bool b = false;
        if (is_bool(kv.second, &b)) {
          if (b) st.options.emplace_back(key, "");
          continue;
        }
        st.options.emplace_back(key, scalar_text(kv.second, st.where, key));
      }
    }
    check_stage(StageOptions(st.pass, st.options, st.where));  // a typo in stage 3 fails before stage 1 runs
    r.stages.push_back(st);
  }
  if (y["gate"]) {
    const YAML::Node g = y["gate"];
    if (!g.IsMap() || !g["metric"]) fail(kC, where, ": 'gate' needs 'metric' and max-relative-drop or max-absolute-drop");
    RecipeGate gate;
    gate.metric = g["metric"].as<std::string>();
    const bool rel = g["max-relative-drop"] || g["max_relative_drop"], abs = g["max-absolute-drop"] || g["max_absolute_drop"];
    if (rel == abs) fail(kC, where, ": 'gate' needs exactly one of max-relative-drop and max-absolute-drop");
    gate.relative = rel;
    const YAML::Node v = rel ? (g["max-relative-drop"] ? g["max-relative-drop"] : g["max_relative_drop"])
                             : (g["max-absolute-drop"] ? g["max-absolute-drop"] : g["max_absolute_drop"]);
    try {
      gate.max_drop = v.as<double>();
    } catch (const YAML::Exception&) {
      fail(kC, where, ": gate's maximum drop must be a number");
    }
    if (!(gate.max_drop >= 0) || !std::isfinite(gate.max_drop)) fail(kC, where, ": gate's maximum drop must be >= 0");
    for (const auto& kv : g) {
      const std::string k = dashed(kv.first.as<std::string>());
      if (k != "metric" && k != "max-relative-drop" && k != "max-absolute-drop")
        fail(kC, where, ": unknown gate key '", k, "' (allowed: metric, max-relative-drop, max-absolute-drop)");
    }
    r.gate = gate;
  }
  if (y["export"]) {
    r.export_format = y["export"].as<std::string>();
    static const std::set<std::string> formats = {"safetensors", "gguf", "gguf:f32", "gguf:f16", "gguf:q8_0",
        "gguf:q4_0", "gguf:q4_1", "gguf:q5_0", "gguf:q5_1", "gguf:q4_k", "gguf:q5_k", "gguf:q6_k", "gguf:q4_k_m",
        "gguf:auto", "hf-gptq", "compressed-tensors", "llama2c-q8"};
    if (!formats.count(r.export_format))
      fail(kC, where, ": export '", r.export_format,
           "' is not available (allowed: safetensors, gguf:TYPE, hf-gptq, compressed-tensors, llama2c-q8)");
  }
  return r;
}

Recipe load_recipe(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail<FileError>(kC, path, ": cannot open the recipe");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_recipe(ss.str(), path);
}

std::pair<bool, std::string> check_gate(const RecipeGate& g, double baseline, double compressed, bool higher) {
  const double worse = higher ? baseline - compressed : compressed - baseline;  // > 0: got worse
  const double drop = g.relative ? (baseline != 0 ? worse / std::fabs(baseline) : 0) : worse;
  const bool ok = drop <= g.max_drop + 1e-12;
  std::string verdict = std::string(ok ? "PASSED" : "FAILED") + ": " + g.metric + " " + fmt_num(baseline) + " -> " +
                        fmt_num(compressed) + " (" + (worse > 0 ? "worse" : "not worse") + " by " +
                        (g.relative ? fmt_num(100 * std::max(0.0, drop)) + "%" : fmt_num(std::max(0.0, drop))) +
                        "; allowed " + (g.relative ? fmt_num(100 * g.max_drop) + "%" : fmt_num(g.max_drop));
  if (!ok)
    verdict += ", missed by " + (g.relative ? fmt_num(100 * (drop - g.max_drop)) + " points" : fmt_num(drop - g.max_drop));
  return {ok, verdict + ")"};
}

}  // namespace mc
