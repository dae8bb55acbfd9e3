// The Unicode pieces of the tokenizers (ICU behind them): NFC, the regex classes, string splits with
// each behavior. Expected values worked out by hand from the Unicode data (code charts, UCD).
#include "../../libcompress/src/data/pretokenize.h"
#include "test_utils.h"

namespace {

using mc::detail::CharClass;
using mc::detail::char_class;
using mc::detail::nfc;
using V = std::vector<std::string>;

V split(const std::string& s, const std::string& pat, mc::detail::SplitBehavior b) {
  V out;
  for (auto piece : mc::detail::split_literal(s, pat, b)) out.emplace_back(piece);
  return out;
}

}  // namespace

TEST_CASE("NFC composes, reorders and keeps invalid bytes", "[tokenizer][unicode]") {
  CHECK(nfc("plain ascii") == "plain ascii");
  CHECK(nfc("cafe\u0301") == "caf\xC3\xA9");                 // e + COMBINING ACUTE -> U+00E9 (C3 A9)
  CHECK(nfc("A\u030Angstro\u0308m") == "\u00C5ngstr\u00F6m");  // ring above, diaeresis
  CHECK(nfc("\u212B") == "\u00C5");                            // ANGSTROM SIGN: singleton -> U+00C5
  CHECK(nfc("\u1112\u1161\u11AB") == "\xED\x95\x9C");         // Hangul jamo H A N -> U+D55C 한
  // Canonical order: dot below (ccc 220) before acute (ccc 230), then q has no precomposed form.
  CHECK(nfc("q\u0301\u0323") == "q\u0323\u0301");
  CHECK(nfc("\u00E9") == "\u00E9");                            // already NFC
  CHECK(nfc("a\xFF" "e\u0301") == "a\xFF\xC3\xA9");           // the invalid byte stays; the rest composes
}

TEST_CASE("char classes are the Unicode general categories", "[tokenizer][unicode]") {
  CHECK(char_class('a') == CharClass::Letter);
  CHECK(char_class('7') == CharClass::Number);
  CHECK(char_class('\t') == CharClass::Space);
  CHECK(char_class('_') == CharClass::Other);
  CHECK(char_class(0x0915) == CharClass::Letter);  // DEVANAGARI LETTER KA (Lo)
  CHECK(char_class(0x093F) == CharClass::Other);   // DEVANAGARI VOWEL SIGN I (Mc): not \p{L}
  CHECK(char_class(0x0E31) == CharClass::Other);   // THAI MAI HAN-AKAT (Mn)
  CHECK(char_class(0x0650) == CharClass::Other);   // ARABIC KASRA (Mn)
  CHECK(char_class(0x0966) == CharClass::Number);  // DEVANAGARI DIGIT ZERO (Nd)
  CHECK(char_class(0x00B2) == CharClass::Number);  // SUPERSCRIPT TWO (No)
  CHECK(char_class(0x2163) == CharClass::Number);  // ROMAN NUMERAL FOUR (Nl)
  CHECK(char_class(0x3000) == CharClass::Space);   // IDEOGRAPHIC SPACE
  CHECK(char_class(0x0085) == CharClass::Space);   // NEXT LINE: White_Space
  CHECK(char_class(0x200B) == CharClass::Other);   // ZERO WIDTH SPACE: Cf, not White_Space
  CHECK(char_class(0x1F600) == CharClass::Other);  // emoji (So)
  CHECK(char_class(0x20000) == CharClass::Letter); // CJK extension B (Lo)
  CHECK(char_class(0x110000) == CharClass::Other);
  CHECK(mc::detail::is_word_char(0x093F));         // marks are \w
  CHECK_FALSE(mc::detail::is_word_char('-'));
}

TEST_CASE("split_literal: each SplitDelimiterBehavior", "[tokenizer][unicode]") {
  using B = mc::detail::SplitBehavior;
  // "a  b " on " ": a | ' ' | ' ' | b | ' '.
  const std::string s = "a  b ";
  CHECK(split(s, " ", B::Removed) == V{"a", "b"});
  CHECK(split(s, " ", B::Isolated) == V{"a", " ", " ", "b", " "});
  CHECK(split(s, " ", B::MergedWithPrevious) == V{"a ", " ", "b "});
  CHECK(split(s, " ", B::MergedWithNext) == V{"a", " ", " b", " "});
  CHECK(split(s, " ", B::Contiguous) == V{"a", "  ", "b", " "});
  CHECK(split("", " ", B::Isolated).empty());
  CHECK(split("\u2581x\u2581\u2581y", "\u2581", B::MergedWithNext) == V{"\u2581x", "\u2581", "\u2581y"});
}
