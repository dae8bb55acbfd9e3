#include "data/unicode_text.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include <array>
#include <memory>

#include "mcompress/error.h"

namespace mc::detail {

namespace {

CharClass icu_class(uint32_t cp) {
  const auto c = UChar32(cp);
  if (u_hasBinaryProperty(c, UCHAR_WHITE_SPACE)) return CharClass::Space;
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER: case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return CharClass::Letter;
    case U_DECIMAL_DIGIT_NUMBER: case U_LETTER_NUMBER: case U_OTHER_NUMBER:
      return CharClass::Number;
    default:
      return CharClass::Other;
  }
}

// The BMP's classes, looked up once: the hot loop of pre-tokenization then costs one array read.
const std::array<CharClass, 0x10000>& bmp_classes() {
  static const auto table = [] {
    auto t = std::make_unique<std::array<CharClass, 0x10000>>();
    for (uint32_t cp = 0; cp < 0x10000; ++cp) (*t)[cp] = icu_class(cp);
    return t;
  }();
  return *table;
}

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 0x10000) return bmp_classes()[cp];
  if (cp > 0x10FFFF) return CharClass::Other;
  return icu_class(cp);
}

bool is_word_char(uint32_t cp) {
  if (cp > 0x10FFFF) return false;
  const auto c = UChar32(cp);
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL)) return true;
  switch (u_charType(c)) {
    case U_NON_SPACING_MARK: case U_ENCLOSING_MARK: case U_COMBINING_SPACING_MARK: case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

uint32_t decode_utf8(std::string_view s, size_t i, int& len, bool* valid) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  len = 1;
  if (valid) *valid = true;
  if (b0 < 0x80) return b0;
  int n = 0;
  uint32_t cp = 0;
  if ((b0 & 0xE0) == 0xC0) n = 2, cp = b0 & 0x1F;
  else if ((b0 & 0xF0) == 0xE0) n = 3, cp = b0 & 0x0F;
  else if ((b0 & 0xF8) == 0xF0) n = 4, cp = b0 & 0x07;
  if (n == 0 || i + size_t(n) > s.size()) {
    if (valid) *valid = false;
    return b0;
  }
  for (int j = 1; j < n; ++j) {
    const auto b = static_cast<unsigned char>(s[i + size_t(j)]);
    if ((b & 0xC0) != 0x80) {
      if (valid) *valid = false;
      return b0;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  len = n;
  return cp;
}

std::string nfc(std::string_view text) {
  bool ascii = true;
  for (char c : text) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(text);
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) fail("tokenizer", "ICU has no NFC data: ", u_errorName(status));
  std::string out;
  out.reserve(text.size());
  auto normalize_run = [&](std::string_view run) {
    if (run.empty()) return;
    icu::StringByteSink<std::string> sink(&out);
    UErrorCode st = U_ZERO_ERROR;
    norm->normalizeUTF8(0, icu::StringPiece(run.data(), int32_t(run.size())), sink, nullptr, st);
    if (U_FAILURE(st)) fail("tokenizer", "NFC normalization failed: ", u_errorName(st));
  };
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    int len = 1;
    bool valid = true;
    decode_utf8(text, i, len, &valid);
    if (!valid) {
      normalize_run(text.substr(start, i - start));
      out += text[i];
      start = i + 1;
    }
    i += size_t(len);
  }
  normalize_run(text.substr(start));
  return out;
}

}  // namespace mc::detail
