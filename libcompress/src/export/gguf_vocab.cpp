// tokenizer.ggml.* for GGUF llama files. Token types (llama.cpp llama_token_type): 1 normal, 2 unknown,
// 3 control, 4 user defined, 5 unused, 6 byte.
#include "export/gguf_vocab.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mcompress/error.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/tokenizer.h"
#include "mcompress/tokenizer_config.h"

namespace mc::gguf_detail {

namespace {

using json = nlohmann::json;
enum TokenType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<double> scores;
  std::vector<int64_t> types;
  std::vector<std::string> merges;
  std::string model;  // "llama" or "gpt2"
  std::string pre;    // gpt2: llama.cpp's pre-tokenizer name
  int64_t bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = true;  // SentencePiece-style: a "▁" before the text (Llama 2); Gemma 3's has none
  std::string chat_template;
};

// Whether a SentencePiece-style tokenizer.json puts "▁" before the text: a Prepend normalizer, or a
// Metaspace pre-tokenizer whose prepend_scheme is not "never" (add_prefix_space in older files).
bool prepends_space(const json& j) {
  std::function<bool(const json&)> any = [&](const json& n) -> bool {
    if (n.is_array()) {
      for (const auto& e : n) if (any(e)) return true;
      return false;
    }
    if (!n.is_object()) return false;
    const std::string type = n.value("type", "");
    if (type == "Prepend") return true;
    if (type == "Metaspace")
      return n.value("prepend_scheme", std::string(n.value("add_prefix_space", true) ? "always" : "never")) != "never";
    for (const char* k : {"normalizers", "pretokenizers"})
      if (n.contains(k) && any(n[k])) return true;
    return false;
  };
  return any(j.value("normalizer", json())) || any(j.value("pre_tokenizer", json()));
}

// The split regex of a byte-level tokenizer.json's pre_tokenizer ("" when it has none).
std::string split_regex(const json& p) {
  if (!p.is_object()) return "";
  const std::string type = p.value("type", "");
  if (type == "Sequence" && p.contains("pretokenizers"))
    for (const json& x : p["pretokenizers"])
      if (std::string r = split_regex(x); !r.empty()) return r;
  if (type == "Split" && p.contains("pattern") && p["pattern"].contains("Regex")) return p["pattern"]["Regex"];
  return "";
}

// llama.cpp's name of a pre-tokenizer (tokenizer.ggml.pre), recognised by the split regex as llama.cpp's
// converter recognises it (by the tokens it gives a test text: the regex decides them). Llama 3 splits digits
// in runs of up to three, Qwen2/2.5/3 one by one; otherwise the same pattern.
std::string pre_tokenizer_name(const json& pre) {
  static const char* kLlama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const char* kQwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const std::string r = split_regex(pre);
  if (r == kLlama3) return "llama-bpe";
  if (r == kQwen2) return "qwen2";
  return "default";  // GPT-2's own regex (ByteLevel with use_regex) and anything unrecognised
}

bool is_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  return std::isxdigit(static_cast<unsigned char>(t[3])) && std::isxdigit(static_cast<unsigned char>(t[4]));
}

std::string escape_spaces(const std::string& s) {
  std::string out;
  for (char c : s) out += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
  return out;
}

Vocab from_llama2c(const std::string& path) {
  const Llama2cTokenizer tok = read_llama2c_tokenizer(path);
  Vocab v;
  v.model = "llama", v.unk = 0, v.bos = 1, v.eos = 2;
  for (size_t i = 0; i < tok.vocab.size(); ++i) {
    std::string t = tok.vocab[i];
    int64_t type = kNormal;
    if (i == 0) t = "<unk>", type = kUnknown;
    else if (i == 1) t = "<s>", type = kControl;
    else if (i == 2) t = "</s>", type = kControl;
    else if (t.empty()) type = kControl;
    else if (is_byte_token(t)) type = kByte;
    v.tokens.push_back(escape_spaces(t));
    v.scores.push_back(tok.scores[i]);
    v.types.push_back(type);
  }
  return v;
}

Vocab from_tokenizer_json(const std::string& path, const std::string& text) {
  auto tk = load_tokenizer(path);  // validates the file and tells which kind of BPE it is
  Vocab v;
  v.model = tk->kind() == "hf-bpe-bytelevel" ? "gpt2" : "llama";
  v.bos = tk->bos_id(), v.eos = tk->eos_id();
  try {
    const json j = json::parse(text);
    if (v.model == "gpt2") v.pre = pre_tokenizer_name(j.value("pre_tokenizer", json()));
    if (v.model == "llama") v.add_space_prefix = prepends_space(j);
    const json& m = j.at("model");
    std::map<int64_t, std::string> by_id;
    for (const auto& [tok, id] : m.at("vocab").items()) by_id[id.get<int64_t>()] = tok;
    std::map<int64_t, std::pair<std::string, bool>> added;  // id -> content, special
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& a : j["added_tokens"]) added[a.at("id").get<int64_t>()] = {a.at("content"), a.value("special", false)};
    int64_t n = 0;
    for (const auto& [id, t] : by_id) n = std::max(n, id + 1);
    for (const auto& [id, a] : added) n = std::max(n, id + 1);
    v.tokens.assign(size_t(n), "");
    v.scores.assign(size_t(n), 0.0);
    v.types.assign(size_t(n), kNormal);
    for (int64_t id = 0; id < n; ++id) {
      auto it = by_id.find(id);
      if (it != by_id.end()) v.tokens[size_t(id)] = it->second;
      else v.tokens[size_t(id)] = "[PAD" + std::to_string(id) + "]", v.types[size_t(id)] = kUnused;
      if (v.model == "llama" && is_byte_token(v.tokens[size_t(id)])) v.types[size_t(id)] = kByte;
    }
    // UNKNOWN first; an added special token then becomes CONTROL, <unk> included, as llama.cpp's converter
    // types them (SentencePiece types, then tokenizer_config.json's added_tokens_decoder: special -> CONTROL).
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      for (const auto& [id, t] : by_id)
        if (t == m["unk_token"].get<std::string>()) v.unk = id, v.types[size_t(id)] = kUnknown;
    }
    for (const auto& [id, a] : added) {
      v.tokens[size_t(id)] = a.first;
      v.types[size_t(id)] = a.second ? kControl : kUserDefined;
    }
    int64_t rank = 0;
    std::map<std::string, int64_t> index;
    for (int64_t id = 0; id < n; ++id) index.emplace(v.tokens[size_t(id)], id);
    for (const auto& mg : m.value("merges", json::array())) {
      std::string a, b;
      if (mg.is_string()) {
        const std::string s = mg.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) fail("gguf", path, ": merge '", s, "' is not 'left right'");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else {
        a = mg.at(0).get<std::string>(), b = mg.at(1).get<std::string>();
      }
      v.merges.push_back(a + " " + b);
      auto it = index.find(a + b);  // SentencePiece scores: earlier merges score higher
      if (it != index.end() && v.scores[size_t(it->second)] == 0.0) v.scores[size_t(it->second)] = -double(++rank);
      else ++rank;
    }
  } catch (const json::exception& e) {
    fail("gguf", path, ": bad tokenizer.json: ", e.what());
  }
  return v;
}

}  // namespace

std::vector<GgufKV> tokenizer_kv(const std::string& path, int64_t vocab_size, int64_t model_bos, int64_t model_eos,
                                 const std::string& model_name) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("gguf", path, ": cannot read the tokenizer");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  const bool is_json = i < text.size() && text[i] == '{';
  Vocab v = is_json ? from_tokenizer_json(path, text) : from_llama2c(path);
  v.add_bos = v.bos >= 0;
  if (is_json) {
    const TokenizerConfig tc = read_tokenizer_config(path);
    if (tc.found) {
      // As llama.cpp's converter (gguf-py SpecialVocab): ids from tokenizer_config.json, a null one from
      // the model's config.json (Qwen: bos_token null, config bos_token_id <|endoftext|>, add_bos false).
      v.bos = tc.bos_id >= 0 ? tc.bos_id : model_bos;
      v.eos = tc.eos_id >= 0 ? tc.eos_id : model_eos >= 0 ? model_eos : v.eos;
      if (tc.unk_id >= 0) v.unk = tc.unk_id;
      v.pad = tc.pad_id;
      v.add_bos = tc.add_bos && v.bos >= 0;
      v.add_eos = tc.add_eos && v.eos >= 0;
    }
    v.chat_template = tc.chat_template;
  }
  // Control tokens beyond the embedding (Gemma 3's <image_soft_token> at 262144, one past the 1B text model's
  // rows) have no row for llama.cpp to read: dropped, as the file's vocabulary must match the embedding.
  while (int64_t(v.tokens.size()) > vocab_size && v.types.back() == kControl &&
         v.bos != int64_t(v.tokens.size()) - 1 && v.eos != int64_t(v.tokens.size()) - 1) {
    v.tokens.pop_back(), v.types.pop_back();
    if (v.scores.size() > v.tokens.size()) v.scores.pop_back();
  }
  if (int64_t(v.tokens.size()) > vocab_size)
    fail("gguf", path, ": the tokenizer has ", v.tokens.size(), " tokens but the model's vocab_size is ", vocab_size);
  while (int64_t(v.tokens.size()) < vocab_size) {
    v.tokens.push_back("[PAD" + std::to_string(v.tokens.size()) + "]");
    v.scores.push_back(0.0);
    v.types.push_back(kUnused);
  }
  // llama.cpp's per-token attributes (llama-vocab.cpp, "phi-3"/"phi3" in the lowercased general.name): Phi-3's
  // tokenizer has these four; another one under such a name (Llama 2's: no <|endoftext|>) fails to load there.
  std::string lower = model_name;
  for (char& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (lower.find("phi3") != std::string::npos || lower.find("phi-3") != std::string::npos) {
    for (const char* t : {"<unk>", "<s>", "</s>", "<|endoftext|>"})
      if (std::find(v.tokens.begin(), v.tokens.end(), t) == v.tokens.end())
        fail("gguf", path, ": the model's name '", model_name, "' makes llama.cpp treat it as Phi-3, which needs the token '",
             t, "' in the vocabulary, and this tokenizer has none (Phi-3's own tokenizer has it; rename the model "
             "file or directory otherwise)");
  }
  std::vector<GgufKV> kv;
  kv.emplace_back("tokenizer.ggml.model", gguf_string(v.model));
  if (v.model == "gpt2") kv.emplace_back("tokenizer.ggml.pre", gguf_string(v.pre));
  kv.emplace_back("tokenizer.ggml.tokens", gguf_string_array(v.tokens));
  if (v.model == "llama") kv.emplace_back("tokenizer.ggml.scores", gguf_f32_array(v.scores));
  kv.emplace_back("tokenizer.ggml.token_type", gguf_int_array(GgufType::I32, v.types));
  if (v.model == "gpt2") kv.emplace_back("tokenizer.ggml.merges", gguf_string_array(v.merges));
  if (v.bos >= 0) kv.emplace_back("tokenizer.ggml.bos_token_id", gguf_u32(uint32_t(v.bos)));
  if (v.eos >= 0) kv.emplace_back("tokenizer.ggml.eos_token_id", gguf_u32(uint32_t(v.eos)));
  if (v.unk >= 0) kv.emplace_back("tokenizer.ggml.unknown_token_id", gguf_u32(uint32_t(v.unk)));
  if (v.pad >= 0) kv.emplace_back("tokenizer.ggml.padding_token_id", gguf_u32(uint32_t(v.pad)));
  kv.emplace_back("tokenizer.ggml.add_bos_token", gguf_bool(v.add_bos));
  kv.emplace_back("tokenizer.ggml.add_eos_token", gguf_bool(v.add_eos));
  if (v.model == "llama") kv.emplace_back("tokenizer.ggml.add_space_prefix", gguf_bool(v.add_space_prefix));
  if (!v.chat_template.empty()) kv.emplace_back("tokenizer.chat_template", gguf_string(v.chat_template));
  return kv;
}

}  // namespace mc::gguf_detail
