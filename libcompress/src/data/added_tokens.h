// Finding added tokens in text the way the tokenizers library's AddedVocabulary does: leftmost-longest
// non-overlapping matches of the token contents (a byte trie), single_word matches dropped where a word
// character (\w) touches them, lstrip / rstrip widening a match over the whitespace beside it.
#pragma once
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "data/hf_bpe.h"

namespace mc::detail {

class AddedTokenMatcher {
 public:
  // `patterns[i]` is what token `tokens[i]` matches (its content, or its normalized content).
  AddedTokenMatcher(std::vector<const HfAddedToken*> tokens, const std::vector<std::string>& patterns);
  bool empty() const { return tokens_.empty(); }

  struct Split {
    size_t begin, end;
    const HfAddedToken* token;  // nullptr: text to tokenize
  };
  // Splits covering `text` in order; text splits are non-empty.
  std::vector<Split> split(std::string_view text) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int32_t token = -1;  // index into tokens_ of the pattern ending here
  };
  // The longest pattern starting at text[i]: (token index, length), or (-1, 0).
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t i) const;

  std::vector<const HfAddedToken*> tokens_;
  std::vector<Node> nodes_;
};

}  // namespace mc::detail
