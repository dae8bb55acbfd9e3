// Unicode properties and normalization the tokenizers need, from ICU (libicu-dev): the general
// categories behind the regex classes \p{L}, \p{N}, \s, \w of the pre-tokenizer patterns, and NFC
// (Qwen2/3's normalizer). No hand-made tables.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace mc::detail {

enum class CharClass : uint8_t { Letter, Number, Space, Other };
// \p{L} (Lu Ll Lt Lm Lo) -> Letter, \p{N} (Nd Nl No) -> Number, Unicode White_Space (what \s matches in
// the Rust/Oniguruma regexes of the tokenizers library) -> Space, everything else (marks, punctuation,
// symbols, controls, unassigned) -> Other. Codepoints above U+10FFFF -> Other.
CharClass char_class(uint32_t cp);
// \w of the Rust regex crate: Alphabetic, marks, decimal numbers, connector punctuation, Join_Control.
bool is_word_char(uint32_t cp);

// Decodes the codepoint at s[i]; sets `len` (1..4). Invalid or truncated sequences give the byte
// itself (as a codepoint 0x80..0xFF) with len 1 (and `valid` false when given).
uint32_t decode_utf8(std::string_view s, size_t i, int& len, bool* valid = nullptr);

// Unicode NFC of UTF-8 text. Bytes that are not valid UTF-8 are kept as they are, and the valid runs
// between them are normalized each on its own. ASCII text comes back unchanged without calling ICU.
std::string nfc(std::string_view text);

}  // namespace mc::detail
