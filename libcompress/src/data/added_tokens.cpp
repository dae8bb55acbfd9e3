#include "data/added_tokens.h"

#include "data/unicode_text.h"

namespace mc::detail {

namespace {

// The codepoint ending just before text[end] (end > 0).
uint32_t last_codepoint(std::string_view text, size_t end) {
  size_t b = end - 1;
  while (b > 0 && end - b < 4 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
  int len = 1;
  const uint32_t cp = decode_utf8(text, b, len);
  return b + size_t(len) == end ? cp : static_cast<unsigned char>(text[end - 1]);
}

bool is_space_at(std::string_view text, size_t i, int& len) {
  return char_class(decode_utf8(text, i, len)) == CharClass::Space;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<const HfAddedToken*> tokens, const std::vector<std::string>& patterns)
    : tokens_(std::move(tokens)), nodes_(1) {
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;
    int32_t n = 0;
    for (char ch : p) {
      const auto c = static_cast<unsigned char>(ch);
      int32_t child = -1;
      for (const auto& [k, v] : nodes_[size_t(n)].next)
        if (k == c) child = v;
      if (child < 0) {
        child = int32_t(nodes_.size());
        nodes_[size_t(n)].next.emplace_back(c, child);
        nodes_.emplace_back();
      }
      n = child;
    }
    if (nodes_[size_t(n)].token < 0) nodes_[size_t(n)].token = int32_t(t);  // the first of equal contents wins
  }
}

std::pair<int32_t, size_t> AddedTokenMatcher::longest_at(std::string_view text, size_t i) const {
  std::pair<int32_t, size_t> best{-1, 0};
  int32_t n = 0;
  for (size_t j = i; j < text.size(); ++j) {
    const auto c = static_cast<unsigned char>(text[j]);
    int32_t child = -1;
    for (const auto& [k, v] : nodes_[size_t(n)].next)
      if (k == c) {
        child = v;
        break;
      }
    if (child < 0) break;
    n = child;
    if (nodes_[size_t(n)].token >= 0) best = {nodes_[size_t(n)].token, j + 1 - i};
  }
  return best;
}

std::vector<AddedTokenMatcher::Split> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<Split> out;
  size_t done = 0;  // text before this is in `out`
  for (size_t i = 0; i < text.size();) {
    const auto [t, len] = longest_at(text, i);
    if (t < 0) {
      ++i;
      continue;
    }
    const HfAddedToken& tok = *tokens_[size_t(t)];
    size_t start = i, stop = i + len;
    i = stop;  // the search goes on after this match, kept or not
    if (tok.single_word) {
      int l = 1;
      const bool word_before = start > 0 && is_word_char(last_codepoint(text, start));
      const bool word_after = stop < text.size() && is_word_char(decode_utf8(text, stop, l));
      if (word_before || word_after) continue;
    }
    if (tok.lstrip) {  // the whitespace run ending at the match, not before what is already split off
      size_t run = done;  // just after the last non-space before the match
      for (size_t k = done; k < start;) {
        int l = 1;
        if (!is_space_at(text, k, l)) run = k + size_t(l);
        k += size_t(l);
      }
      start = run;
    }
    if (tok.rstrip) {
      int l = 1;
      while (stop < text.size() && is_space_at(text, stop, l)) stop += size_t(l);
      i = stop;
    }
    if (done < start) out.push_back({done, start, nullptr});
    out.push_back({start, stop, &tok});
    done = stop;
  }
  if (done < text.size()) out.push_back({done, text.size(), nullptr});
  return out;
}

}  // namespace mc::detail
