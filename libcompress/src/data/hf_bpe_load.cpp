// Reads the parts of a Hugging Face tokenizer.json that a BPE encoder needs, refusing what it does not
// implement (other model types, unknown normalizers/pre-tokenizers, unknown split regexes) rather than
// tokenizing differently from the reference without a word.
//
// Supported: model BPE (vocab + merges as "a b" or ["a", "b"], unk_token, fuse_unk, byte_fallback,
// ignore_merges); normalizers Sequence, Prepend, Replace (string pattern), NFC (ICU); pre-tokenizers Sequence, ByteLevel (GPT-2 split
// when use_regex), Split with the GPT-2, Llama 3 or Qwen2 regex (behavior Isolated), Metaspace;
// pre-tokenizer Split with a string pattern (any behavior, no invert); post-processors TemplateProcessing, Roberta/BertProcessing, ByteLevel, Sequence (for BOS/EOS only).
#include <nlohmann/json.hpp>

#include "data/hf_bpe.h"
#include "data/tokenizer_impl.h"
#include "mcompress/error.h"

namespace mc {

namespace {

using json = nlohmann::json;
using detail::HfBpeSpec;
using detail::HfNormalizeStep;
using detail::SplitPattern;

constexpr const char* kComp = "tokenizer";
constexpr const char* kMetaspace = "\xE2\x96\x81";  // "▁" U+2581
constexpr int64_t kMaxId = int64_t(1) << 26;          // far above any real vocab; bounds the id table

std::string type_of(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) return j["type"].get<std::string>();
  return "";
}

bool flag(const json& j, const char* key, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  return j[key].get<bool>();
}

class Loader {
 public:
  explicit Loader(HfBpeSpec& s) : s_(s) {}

  [[noreturn]] void bad(const std::string& msg) const { fail(kComp, s_.path, ": ", msg); }

  void normalizer(const json& n) {
    if (n.is_null()) return;
    const std::string t = type_of(n);
    if (t == "Sequence") {
      for (const json& x : n.at("normalizers")) normalizer(x);
    } else if (t == "Prepend") {
      s_.normalizer.push_back({HfNormalizeStep::Prepend, n.at("prepend").get<std::string>(), ""});
      if (s_.normalizer.back().a == kMetaspace) s_.dummy_prefix = true;
    } else if (t == "Replace") {
      const json& p = n.at("pattern");
      if (!p.contains("String"))
        bad("normalizer Replace with a regex pattern is not supported (only {\"String\": ...})");
      s_.normalizer.push_back({HfNormalizeStep::Replace, p["String"].get<std::string>(),
                               n.at("content").get<std::string>()});
      if (s_.normalizer.back().a.empty()) bad("normalizer Replace has an empty pattern");
    } else if (t == "NFC") {
      s_.normalizer.push_back({HfNormalizeStep::Nfc, "", ""});
    } else {
      bad("normalizer '" + t + "' is not supported (supported: Sequence, Prepend, Replace, NFC)");
    }
  }

  void pre_tokenizer(const json& p) {
    if (p.is_null()) return;
    const std::string t = type_of(p);
    if (t == "Sequence") {
      for (const json& x : p.at("pretokenizers")) pre_tokenizer(x);
    } else if (t == "ByteLevel") {
      s_.byte_level = true;
      s_.byte_level_prefix_space = flag(p, "add_prefix_space", false);
      if (flag(p, "use_regex", true)) s_.pretok.push_back({detail::HfPreTokStep::Regex, SplitPattern::Gpt2, "", {}});
    } else if (t == "Split") {
      const json& pat = p.at("pattern");
      const std::string behavior = p.value("behavior", "Isolated");
      if (flag(p, "invert", false)) bad("Split pre-tokenizer with invert is not supported");
      if (pat.contains("String")) {
        detail::HfPreTokStep step{detail::HfPreTokStep::Literal, {}, pat["String"].get<std::string>(), {}};
        if (step.literal.empty()) bad("Split pre-tokenizer has an empty string pattern");
        const std::pair<const char*, detail::SplitBehavior> names[] = {
            {"Removed", detail::SplitBehavior::Removed},
            {"Isolated", detail::SplitBehavior::Isolated},
            {"MergedWithPrevious", detail::SplitBehavior::MergedWithPrevious},
            {"MergedWithNext", detail::SplitBehavior::MergedWithNext},
            {"Contiguous", detail::SplitBehavior::Contiguous}};
        bool known = false;
        for (const auto& [name, b] : names)
          if (behavior == name) step.behavior = b, known = true;
        if (!known) bad("Split pre-tokenizer behavior '" + behavior + "' is unknown");
        s_.pretok.push_back(step);
        return;
      }
      if (!pat.contains("Regex")) bad("Split pre-tokenizer pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
      const std::string re = pat["Regex"].get<std::string>();
      if (behavior != "Isolated")
        bad("Split pre-tokenizer with a regex and behavior '" + behavior + "' is not supported (only Isolated)");
      bool known = false;
      for (SplitPattern sp : {SplitPattern::Gpt2, SplitPattern::Llama3, SplitPattern::Qwen2})
        if (re == detail::split_pattern_regex(sp))
          s_.pretok.push_back({detail::HfPreTokStep::Regex, sp, "", {}}), known = true;
      if (!known)
        bad("Split pre-tokenizer regex is not one of the GPT-2, Llama 3 or Qwen2 patterns implemented here: " + re);
    } else if (t == "Metaspace") {
      if (s_.metaspace) bad("two Metaspace pre-tokenizers are not supported");
      s_.metaspace = true;
      s_.pretok.push_back({detail::HfPreTokStep::Metaspace, {}, "", {}});
      if (p.value("replacement", std::string(kMetaspace)) != kMetaspace)
        bad("Metaspace pre-tokenizer with a replacement other than U+2581 is not supported");
      s_.metaspace_split = flag(p, "split", true);
      if (p.contains("prepend_scheme") && p["prepend_scheme"].is_string())
        s_.metaspace_prepend = p["prepend_scheme"].get<std::string>();
      else
        s_.metaspace_prepend = flag(p, "add_prefix_space", true) ? "always" : "never";
      if (s_.metaspace_prepend != "always" && s_.metaspace_prepend != "first" && s_.metaspace_prepend != "never")
        bad("Metaspace prepend_scheme '" + s_.metaspace_prepend + "' is unknown");
      if (s_.metaspace_prepend != "never") s_.dummy_prefix = true;
    } else {
      bad("pre-tokenizer '" + t + "' is not supported (supported: ByteLevel, Split, Metaspace, Sequence)");
    }
  }

  void model(const json& m) {
    if (!m.is_object()) bad("no \"model\" object");
    const std::string type = m.contains("type") ? type_of(m) : (m.contains("merges") ? "BPE" : "");
    if (type != "BPE") bad("model type '" + type + "' is not supported (only BPE)");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty())
        bad(std::string("BPE ") + key + " is not supported");
    const json& vocab = m.at("vocab");
    if (!vocab.is_object()) bad("model.vocab is not an object");
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= kMaxId) bad("vocab id " + std::to_string(id) + " of '" + it.key() + "' is out of range");
      if (size_t(id) >= s_.id_to_token.size()) s_.id_to_token.resize(size_t(id) + 1);
      s_.id_to_token[size_t(id)] = it.key();
      s_.token_to_id.emplace(it.key(), int32_t(id));
    }
    const json& merges = m.at("merges");
    if (!merges.is_array()) bad("model.merges is not an array");
    for (size_t r = 0; r < merges.size(); ++r) {
      std::string a, b;
      const json& e = merges[r];
      if (e.is_string()) {
        const std::string str = e.get<std::string>();
        const size_t sp = str.find(' ');
        if (sp == std::string::npos || str.find(' ', sp + 1) != std::string::npos)
          bad("merge " + std::to_string(r) + " '" + str + "' is not two tokens separated by one space");
        a = str.substr(0, sp), b = str.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2) {
        a = e[0].get<std::string>(), b = e[1].get<std::string>();
      } else {
        bad("merge " + std::to_string(r) + " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const int32_t ia = vocab_id(a), ib = vocab_id(b), im = vocab_id(a + b);
      if (ia < 0 || ib < 0 || im < 0)
        bad("merge " + std::to_string(r) + " '" + a + " " + b + "': '" + (ia < 0 ? a : ib < 0 ? b : a + b) +
            "' is not in the vocab");
      s_.merges.emplace((uint64_t(uint32_t(ia)) << 32) | uint32_t(ib), HfBpeSpec::Merge{int32_t(r), im});
    }
    s_.fuse_unk = flag(m, "fuse_unk", false);
    s_.byte_fallback = flag(m, "byte_fallback", false);
    s_.ignore_merges = flag(m, "ignore_merges", false);
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      const std::string unk = m["unk_token"].get<std::string>();
      s_.unk_id = vocab_id(unk);
      if (s_.unk_id < 0) bad("unk_token '" + unk + "' is not in the vocab");
    }
  }

  void added_tokens(const json& a) {
    if (a.is_null()) return;
    for (const json& t : a) {
      detail::HfAddedToken tok;
      tok.content = t.at("content").get<std::string>();
      const int64_t id = t.at("id").get<int64_t>();
      if (id < 0 || id >= kMaxId) bad("added token id " + std::to_string(id) + " is out of range");
      tok.id = int32_t(id);
      tok.special = flag(t, "special", false);
      tok.normalized = flag(t, "normalized", !tok.special);  // the tokenizers library's default
      tok.lstrip = flag(t, "lstrip", false);
      tok.rstrip = flag(t, "rstrip", false);
      tok.single_word = flag(t, "single_word", false);
      if (tok.content.empty()) bad("added token " + std::to_string(id) + " has empty content");
      if (size_t(id) >= s_.id_to_token.size()) s_.id_to_token.resize(size_t(id) + 1);
      if (s_.id_to_token[size_t(id)].empty()) s_.id_to_token[size_t(id)] = tok.content;
      s_.added.push_back(tok);
    }
  }

  // BOS/EOS from the post-processor: special tokens before the sequence are BOS, after it EOS.
  void post_processor(const json& p) {
    const std::string t = type_of(p);
    if (t == "Sequence") {
      for (const json& x : p.at("processors")) post_processor(x);
    } else if (t == "TemplateProcessing" && p.contains("single")) {
      bool seen_sequence = false;
      for (const json& item : p["single"]) {
        if (item.contains("Sequence")) seen_sequence = true;
        if (!item.contains("SpecialToken")) continue;
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        int32_t id = -1;
        if (p.contains("special_tokens") && p["special_tokens"].contains(name)) {
          const json& ids = p["special_tokens"][name].at("ids");
          if (!ids.empty()) id = ids[0].get<int32_t>();
        }
        if (id < 0) id = token_id(name);
        (seen_sequence ? s_.eos_id : s_.bos_id) = id;
        if (!seen_sequence && id >= 0) s_.adds_bos = true;
      }
    } else if (t == "RobertaProcessing" || t == "BertProcessing") {
      if (p.contains("cls")) s_.bos_id = p["cls"].at(1).get<int32_t>(), s_.adds_bos = true;
      if (p.contains("sep")) s_.eos_id = p["sep"].at(1).get<int32_t>();
    }
  }

  // Falls back on the usual names of BOS/EOS tokens.
  void named_specials() {
    auto first_of = [&](std::initializer_list<const char*> names) {
      for (const char* n : names)
        if (int32_t id = token_id(n); id >= 0) return id;
      return int32_t(-1);
    };
    if (s_.bos_id < 0) s_.bos_id = first_of({"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>"});
    if (s_.eos_id < 0) s_.eos_id = first_of({"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"});
  }

 private:
  int32_t vocab_id(const std::string& t) const {
    auto it = s_.token_to_id.find(t);
    return it == s_.token_to_id.end() ? -1 : it->second;
  }
  int32_t token_id(const std::string& t) const {
    for (const auto& a : s_.added)
      if (a.content == t) return a.id;
    return vocab_id(t);
  }

  HfBpeSpec& s_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path, const std::string& json_text) {
  HfBpeSpec spec;
  spec.path = path;
  Loader load(spec);
  try {
    const json j = json::parse(json_text);
    if (!j.is_object()) load.bad("not a tokenizer.json: the top level is not an object");
    load.model(j.contains("model") ? j["model"] : json());
    load.added_tokens(j.value("added_tokens", json()));
    load.normalizer(j.value("normalizer", json()));
    load.pre_tokenizer(j.value("pre_tokenizer", json()));
    load.post_processor(j.value("post_processor", json()));
    load.named_specials();
  } catch (const json::exception& e) {
    load.bad(std::string("malformed tokenizer.json: ") + e.what());
  }
  if (spec.byte_level && spec.metaspace) load.bad("ByteLevel and Metaspace pre-tokenizers together are not supported");
  if (spec.token_to_id.empty()) load.bad("the BPE vocab is empty");
  return detail::make_hf_bpe_tokenizer(std::move(spec));
}

}  // namespace mc
