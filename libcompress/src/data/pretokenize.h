// Pre-tokenization for byte-level BPE: the regex splits of GPT-2 and of Llama 3 / Qwen2, written out by
// hand as the leftmost-first alternation a regex engine runs, so no regex library is needed.
//
// The Unicode classes \p{L}, \p{N} and \s come from ICU (unicode_text.h). Invalid UTF-8 bytes count as
// one-byte letters (the reference takes only valid text).
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "unicode_text.h"  // (relative: the unit tests include this header by path)

namespace mc::detail {

enum class SplitPattern {
  Gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,   // the same with \p{N} (single digits)
};
// The regex string of a pattern as tokenizer.json spells it (for recognising Split pre-tokenizers).
std::string_view split_pattern_regex(SplitPattern p);

// The pieces of `text` (in order, covering it) as the pattern's findall gives them ("Isolated").
std::vector<std::string_view> pretokenize(std::string_view text, SplitPattern p);

// What a Split pre-tokenizer does with the matches of its pattern (the tokenizers library's
// SplitDelimiterBehavior): drop them, keep them as pieces, glue each to the piece before / after it
// (a match right after another match stays alone), or join runs of matches into one piece.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// The pieces of `text` split on every (non-overlapping, leftmost) occurrence of `pattern` (non-empty).
std::vector<std::string_view> split_literal(std::string_view text, std::string_view pattern, SplitBehavior b);

}  // namespace mc::detail
