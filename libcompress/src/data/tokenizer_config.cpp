// read_tokenizer_config: tokenizer_config.json (+ tokenizer.json for the ids and the post-processor).
#include "mcompress/tokenizer_config.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mcompress/error.h"

namespace mc {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail<FileError>("tokenizer", p.string(), ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    fail("tokenizer", p.string(), ": bad JSON: ", e.what());
  }
}

// Token text -> id: tokenizer.json's added tokens take precedence over the model vocabulary (as in
// transformers, where added tokens are matched before the model runs).
std::map<std::string, int64_t> token_ids(const json& tok) {
  std::map<std::string, int64_t> ids;
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array())
    for (const json& a : tok["added_tokens"])
      if (a.contains("content") && a.contains("id")) ids.emplace(a["content"].get<std::string>(), a["id"].get<int64_t>());
  if (tok.contains("model") && tok["model"].contains("vocab") && tok["model"]["vocab"].is_object())
    for (const auto& [t, id] : tok["model"]["vocab"].items())
      if (id.is_number_integer()) ids.emplace(t, id.get<int64_t>());
  return ids;
}

// The single-text template of the post-processor: the special tokens before and after the sequence.
void template_specials(const json& p, std::string* first, std::string* last) {
  if (!p.is_object()) return;
  const std::string type = p.value("type", "");
  if (type == "Sequence" && p.contains("processors")) {
    for (const json& x : p["processors"]) template_specials(x, first, last);
  } else if (type == "TemplateProcessing" && p.contains("single") && p["single"].is_array() && !p["single"].empty()) {
    const json& s = p["single"];
    if (s.front().contains("SpecialToken")) *first = s.front()["SpecialToken"].value("id", "");
    if (s.back().contains("SpecialToken")) *last = s.back()["SpecialToken"].value("id", "");
  }
}

}  // namespace

TokenizerConfig read_tokenizer_config(const std::string& tokenizer_json) {
  const fs::path given(tokenizer_json);
  const fs::path dir = fs::is_directory(given) ? given : given.parent_path();
  const fs::path tok_path = fs::is_directory(given) ? dir / "tokenizer.json" : given;
  const fs::path cfg_path = dir / "tokenizer_config.json";
  TokenizerConfig tc;
  json tok = json::object();
  if (fs::exists(tok_path) && fs::is_regular_file(tok_path)) {
    std::ifstream in(tok_path, std::ios::binary);
    char c = ' ';
    while (in.get(c) && std::isspace(static_cast<unsigned char>(c))) {
    }
    if (c == '{') tok = read_json(tok_path);  // a llama2.c tokenizer.bin has no config
  }
  const auto ids = token_ids(tok);
  std::string first, last;
  if (tok.contains("post_processor")) template_specials(tok["post_processor"], &first, &last);
  auto id_of = [&](const std::string& text) -> int64_t {
    auto it = ids.find(text);
    return it == ids.end() ? -1 : it->second;
  };
  tc.add_bos = !first.empty();
  tc.add_eos = !last.empty();
  if (!fs::exists(cfg_path)) return tc;

  const json cfg = read_json(cfg_path);
  tc.found = true;
  auto bad = [&](const char* key, const json& v) {
    fail("tokenizer", cfg_path.string(), ": '", key, "' is ", v.dump(), ", expected ", 
         std::string(key).rfind("add_", 0) == 0 ? "true/false" : "a token string or {\"content\": ...}");
  };
  auto special = [&](const char* key) -> int64_t {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return -1;
    if (it->is_string()) return id_of(it->get<std::string>());
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
      return id_of((*it)["content"].get<std::string>());
    bad(key, *it);
    return -1;
  };
  tc.bos_id = special("bos_token"), tc.eos_id = special("eos_token");
  tc.pad_id = special("pad_token"), tc.unk_id = special("unk_token");
  auto flag = [&](const char* key, bool& out) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return;
    if (!it->is_boolean()) bad(key, *it);
    out = it->get<bool>();
  };
  flag("add_bos_token", tc.add_bos);
  flag("add_eos_token", tc.add_eos);
  if (tc.bos_id < 0 && tc.add_bos && !first.empty()) tc.bos_id = id_of(first);  // the template names it
  if (tc.eos_id < 0 && tc.add_eos && !last.empty()) tc.eos_id = id_of(last);
  if (auto it = cfg.find("chat_template"); it != cfg.end() && !it->is_null()) {
    if (it->is_string()) {
      tc.chat_template = it->get<std::string>();
    } else if (it->is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
      for (const json& t : *it)
        if (t.is_object() && t.value("name", "") == "default" && t.contains("template") && t["template"].is_string())
          tc.chat_template = t["template"].get<std::string>();
    } else {
      fail("tokenizer", cfg_path.string(), ": 'chat_template' is ", it->type_name(), ", expected a string or a list");
    }
  }
  return tc;
}

}  // namespace mc
