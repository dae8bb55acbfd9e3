// The tokenizer.json BPE encoder/decoder (the file is read by hf_bpe_load.cpp).
//
// encode: the text is split on added tokens (added_tokens.h: leftmost-longest; normalized=false ones in
// the raw text, the others in each remaining segment's normalized text); every other segment is
// normalized (Prepend, Replace, NFC), pre-tokenized by the file's steps in order (regex or string Split,
// Metaspace; byte-level: then bytes mapped to GPT-2's byte characters), and
// each piece is turned into symbols (characters; unknown ones via byte fallback <0xAB> or unk) that are
// merged by rank, lowest first, leftmost on ties, as the tokenizers library's BPE::merge_word does.
#include <algorithm>
#include <array>
#include <deque>
#include <unordered_map>

#include "data/added_tokens.h"
#include "data/bpe_merge.h"
#include "data/hf_bpe.h"
#include "mcompress/error.h"

namespace mc::detail {

namespace {

constexpr const char* kMetaspace = "\xE2\x96\x81";  // "▁" U+2581
constexpr size_t kWordCacheLimit = 1 << 16;          // distinct pieces remembered during one encode()

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6)), out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xE0 | (cp >> 12)), out += char(0x80 | ((cp >> 6) & 0x3F)), out += char(0x80 | (cp & 0x3F));
  }
}

// The byte of a "<0xAB>" token (the spelling tokenizers' byte_fallback uses), or -1.
int byte_token_value(const std::string& t) {
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>' || hex(t[3]) < 0 || hex(t[4]) < 0) return -1;
  return hex(t[3]) * 16 + hex(t[4]);
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size())
    out.append(s, pos, hit - pos).append(to);
  out.append(s, pos, std::string::npos);
  s.swap(out);
}

class HfBpe final : public Tokenizer {
 public:
  explicit HfBpe(HfBpeSpec s) : s_(std::move(s)) {
    const size_t n = s_.id_to_token.size();
    auto valid = [&](int32_t id) { return id >= 0 && size_t(id) < n ? id : -1; };
    s_.bos_id = valid(s_.bos_id);
    s_.eos_id = valid(s_.eos_id);
    byte_ids_.fill(-1);
    for (int b = 0; b < 256; ++b) {
      static const char* hex = "0123456789ABCDEF";
      const std::string name = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
      if (auto it = s_.token_to_id.find(name); it != s_.token_to_id.end()) byte_ids_[size_t(b)] = it->second;
    }
    std::unordered_map<std::string, int> from_unicode;
    const auto& table = byte_to_unicode_table();
    for (int b = 0; b < 256; ++b) from_unicode[table[size_t(b)]] = b;
    bytes_.resize(n);
    for (size_t id = 0; id < n; ++id) {
      const std::string& t = s_.id_to_token[id];
      std::string& out = bytes_[id];
      if (s_.byte_level) {
        for (size_t i = 0; i < t.size();) {
          int len = 1;
          decode_utf8(t, i, len);
          auto it = from_unicode.find(t.substr(i, size_t(len)));
          if (it != from_unicode.end()) out += char(it->second);
          else out.append(t, i, size_t(len));
          i += size_t(len);
        }
      } else {
        const int b = byte_token_value(t);
        if (b >= 0) {
          out = std::string(1, char(b));
        } else {
          out = t;
          replace_all(out, kMetaspace, " ");
        }
      }
    }
    std::vector<const HfAddedToken*> raw, normalized;
    std::vector<std::string> raw_pat, norm_pat;
    for (const HfAddedToken& a : s_.added) {
      std::string text = a.content;  // what the decoder makes of the token (special ones: nothing)
      if (!s_.byte_level) replace_all(text, kMetaspace, " ");
      bytes_[size_t(a.id)] = a.special ? std::string() : text;
      if (a.normalized) normalized.push_back(&a), norm_pat.push_back(normalize(a.content));
      else raw.push_back(&a), raw_pat.push_back(a.content);
    }
    raw_added_ = std::make_unique<AddedTokenMatcher>(std::move(raw), raw_pat);
    norm_added_ = std::make_unique<AddedTokenMatcher>(std::move(normalized), norm_pat);
  }

  std::string kind() const override { return s_.byte_level ? "hf-bpe-bytelevel" : "hf-bpe-sentencepiece"; }
  int32_t vocab_size() const override { return int32_t(s_.id_to_token.size()); }
  int32_t text_vocab_size() const override {
    int32_t n = vocab_size();  // drop special added tokens from the top while they are the last ids
    std::vector<bool> special(size_t(n), false);
    for (const HfAddedToken& a : s_.added)
      if (a.special && a.id >= 0 && a.id < n) special[size_t(a.id)] = true;
    while (n > 0 && special[size_t(n - 1)]) --n;
    return n;
  }
  int32_t bos_id() const override { return s_.bos_id; }
  int32_t eos_id() const override { return s_.eos_id; }

  bool adds_bos() const override { return s_.adds_bos && s_.bos_id >= 0; }

  // The tokenizers library's order: added tokens matched in the raw text; each other part normalized on
  // its own, normalized added tokens matched in it; each remaining part pre-tokenized and run by BPE.
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    Cache cache;
    for (const auto& part : raw_added_->split(text)) {
      if (part.token) {
        out.push_back(part.token->id);
        continue;
      }
      const std::string norm = normalize(text.substr(part.begin, part.end - part.begin));
      if (norm_added_->empty()) {
        encode_segment(norm, part.begin == 0, cache, out);
        continue;
      }
      for (const auto& sub : norm_added_->split(norm)) {
        if (sub.token) out.push_back(sub.token->id);
        else encode_segment(std::string_view(norm).substr(sub.begin, sub.end - sub.begin),
                            part.begin == 0 && sub.begin == 0, cache, out);
      }
    }
    return out;
  }

  std::string token_bytes(int32_t id) const override { return bytes_[check(id)]; }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) out += bytes_[check(id)];
    if (s_.dummy_prefix && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

 private:
  using Cache = std::unordered_map<std::string, std::vector<int32_t>>;

  size_t check(int32_t id) const {
    if (id < 0 || size_t(id) >= bytes_.size())
      fail("tokenizer", s_.path, ": token id ", id, " is out of range [0, ", bytes_.size(), ")");
    return size_t(id);
  }

  std::string normalize(std::string_view seg) const {
    std::string text(seg);
    if (text.empty()) return text;
    for (const HfNormalizeStep& st : s_.normalizer) {
      if (st.kind == HfNormalizeStep::Prepend) {
        if (!text.empty()) text.insert(0, st.a);
      } else if (st.kind == HfNormalizeStep::Nfc) {
        text = nfc(text);
      } else {
        replace_all(text, st.a, st.b);
      }
    }
    return text;
  }

  // Pre-tokenizes normalized text (`at_start`: it begins the input, for Metaspace's "first") and
  // appends the BPE ids of its pieces.
  void encode_segment(std::string_view text, bool at_start, Cache& cache, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::string prefixed;
    if (s_.byte_level && s_.byte_level_prefix_space && text[0] != ' ') text = prefixed = " " + std::string(text);
    std::deque<std::string> store;  // pieces a step rewrote (Metaspace)
    std::vector<std::string_view> pieces{text}, finer;
    for (const HfPreTokStep& step : s_.pretok) {
      finer.clear();
      for (size_t k = 0; k < pieces.size(); ++k) {
        const std::string_view piece = pieces[k];
        if (step.kind == HfPreTokStep::Regex) {
          for (std::string_view sub : pretokenize(piece, step.pattern)) finer.push_back(sub);
          continue;
        }
        if (step.kind == HfPreTokStep::Literal) {
          for (std::string_view sub : split_literal(piece, step.literal, step.behavior)) finer.push_back(sub);
          continue;
        }
        std::string m(piece);  // Metaspace: ' ' -> "▁", a "▁" before the piece, split before each "▁"
        replace_all(m, " ", kMetaspace);
        const bool prepend =
            s_.metaspace_prepend == "always" || (s_.metaspace_prepend == "first" && at_start && k == 0);
        if (prepend && m.compare(0, 3, kMetaspace) != 0) m.insert(0, kMetaspace);
        store.push_back(std::move(m));
        if (!s_.metaspace_split) finer.push_back(store.back());
        else
          for (std::string_view sub : split_literal(store.back(), kMetaspace, SplitBehavior::MergedWithNext))
            finer.push_back(sub);
      }
      pieces.swap(finer);
    }
    const auto& table = byte_to_unicode_table();
    std::string key;
    for (std::string_view piece : pieces) {
      if (s_.byte_level) {
        key.clear();
        for (char c : piece) key += table[static_cast<unsigned char>(c)];
      } else {
        key.assign(piece);
      }
      auto it = cache.find(key);
      if (it == cache.end()) {
        if (cache.size() >= kWordCacheLimit) cache.clear();
        it = cache.emplace(key, word_ids(key)).first;
      }
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
  }

  int32_t vocab_id(std::string_view t) const {
    auto it = s_.token_to_id.find(std::string(t));
    return it == s_.token_to_id.end() ? -1 : it->second;
  }

  // BPE of one pre-token: characters -> ids (byte fallback / unk), then merges by rank.
  std::vector<int32_t> word_ids(std::string_view word) const {
    if (word.empty()) return {};
    if (s_.ignore_merges)
      if (int32_t id = vocab_id(word); id >= 0) return {id};
    std::vector<int32_t> ids;
    bool last_unk = false;
    for (size_t i = 0; i < word.size();) {
      int len = 1;
      decode_utf8(word, i, len);
      const std::string_view sym = word.substr(i, size_t(len));
      i += size_t(len);
      if (int32_t id = vocab_id(sym); id >= 0) {
        ids.push_back(id), last_unk = false;
        continue;
      }
      if (s_.byte_fallback &&
          std::all_of(sym.begin(), sym.end(), [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
        for (char c : sym) ids.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        last_unk = false;
        continue;
      }
      if (s_.unk_id < 0)
        fail("tokenizer", s_.path, ": '", std::string(sym), "' is not in the vocab and the model has no unk_token",
             s_.byte_fallback ? "" : " or byte_fallback");
      if (!(s_.fuse_unk && last_unk)) ids.push_back(s_.unk_id);
      last_unk = true;
    }
    auto lookup = [&](int32_t a, int32_t b) {
      MergeResult r;
      auto it = s_.merges.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
      if (it == s_.merges.end()) return r;
      r.ok = true;
      r.priority = -double(it->second.rank);
      r.merged = it->second.merged;
      return r;
    };
    return bpe_merge(std::move(ids), lookup);
  }

  HfBpeSpec s_;
  std::array<int32_t, 256> byte_ids_{};
  std::vector<std::string> bytes_;  // token_bytes per id
  std::unique_ptr<AddedTokenMatcher> raw_added_, norm_added_;  // normalized=false / true added tokens
};

}  // namespace

const std::array<std::string, 256>& byte_to_unicode_table() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      append_utf8(t[b], printable ? b : next++);
    }
    return t;
  }();
  return table;
}

std::unique_ptr<Tokenizer> make_hf_bpe_tokenizer(HfBpeSpec spec) { return std::make_unique<HfBpe>(std::move(spec)); }

}  // namespace mc::detail
