// Pre-tokenization for byte-level BPE: the regex splits of GPT-2 and of Llama 3 / Qwen2, written out by
// hand as the leftmost-first alternation a regex engine runs, so no regex library is needed.
//
// Approximation: the Unicode classes \p{L}, \p{N} and \s come from a small table (char_class in
// pretokenize.cpp): ASCII exactly; Unicode White_Space exactly; non-ASCII digits, punctuation and symbols
// of the common blocks (Latin-1, general punctuation, currency, arrows, math, box drawing, dingbats,
// CJK punctuation, fullwidth forms, emoji, combining diacritics); every other codepoint >= 0x80 counts
// as a letter. Scripts whose marks or digits are not in the table (e.g. Devanagari vowel signs) split
// differently from the reference regex. Invalid UTF-8 bytes count as one-byte letters.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace mc::detail {

enum class CharClass : uint8_t { Letter, Number, Space, Other };
CharClass char_class(uint32_t cp);

// Decodes the codepoint at s[i]; sets `len` (1..4). Invalid or truncated sequences give the byte
// itself (as a codepoint 0x80..0xFF) with len 1.
uint32_t decode_utf8(std::string_view s, size_t i, int& len);

enum class SplitPattern {
  Gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,   // the same with \p{N} (single digits)
};
// The regex string of a pattern as tokenizer.json spells it (for recognising Split pre-tokenizers).
std::string_view split_pattern_regex(SplitPattern p);

// The pieces of `text` (in order, covering it) as the pattern's findall gives them ("Isolated").
std::vector<std::string_view> pretokenize(std::string_view text, SplitPattern p);

}  // namespace mc::detail
