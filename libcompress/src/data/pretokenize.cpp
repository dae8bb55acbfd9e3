#include "data/pretokenize.h"

#include <algorithm>
#include <iterator>

namespace mc::detail {

namespace {

struct ClassRange {
  uint32_t lo, hi;
  CharClass cls;
};

// Non-ASCII codepoints that are not letters, sorted by `lo`. Everything else >= 0x80 is a letter.
// Spaces: Unicode White_Space (what \s matches). Numbers/Other: see pretokenize.h.
constexpr ClassRange kRanges[] = {
    {0x0085, 0x0085, CharClass::Space},  {0x00A0, 0x00A0, CharClass::Space},
    {0x00A1, 0x00A9, CharClass::Other},  {0x00AB, 0x00B1, CharClass::Other},  // AA ª is a letter
    {0x00B2, 0x00B3, CharClass::Number}, {0x00B4, 0x00B4, CharClass::Other},  // B5 µ is a letter
    {0x00B6, 0x00B8, CharClass::Other},  {0x00B9, 0x00B9, CharClass::Number},
    {0x00BB, 0x00BB, CharClass::Other},  {0x00BC, 0x00BE, CharClass::Number},  // BA º is a letter
    {0x00BF, 0x00BF, CharClass::Other},  {0x00D7, 0x00D7, CharClass::Other},
    {0x00F7, 0x00F7, CharClass::Other},  {0x02C2, 0x02C5, CharClass::Other},
    {0x02D2, 0x02DF, CharClass::Other},  {0x0300, 0x036F, CharClass::Other},  // combining diacritics
    {0x0660, 0x0669, CharClass::Number}, {0x06F0, 0x06F9, CharClass::Number},
    {0x0966, 0x096F, CharClass::Number}, {0x1680, 0x1680, CharClass::Space},
    {0x2000, 0x200A, CharClass::Space},  {0x200B, 0x2027, CharClass::Other},  // zero-width, dashes, quotes, …
    {0x2028, 0x2029, CharClass::Space},  {0x202A, 0x202E, CharClass::Other},
    {0x202F, 0x202F, CharClass::Space},  {0x2030, 0x205E, CharClass::Other},
    {0x205F, 0x205F, CharClass::Space},  {0x2060, 0x206F, CharClass::Other},
    {0x2070, 0x2070, CharClass::Number}, {0x2074, 0x2079, CharClass::Number},
    {0x207A, 0x207E, CharClass::Other},  {0x2080, 0x2089, CharClass::Number},
    {0x208A, 0x208E, CharClass::Other},  {0x20A0, 0x20CF, CharClass::Other},  // currency
    {0x20D0, 0x20FF, CharClass::Other},  {0x2150, 0x2182, CharClass::Number},  // number forms
    {0x2190, 0x245F, CharClass::Other},  {0x2460, 0x249B, CharClass::Number},  // arrows .. circled numbers
    {0x249C, 0x24E9, CharClass::Other},  {0x24EA, 0x24FF, CharClass::Number},
    {0x2500, 0x2775, CharClass::Other},  {0x2776, 0x2793, CharClass::Number},  // box drawing .. dingbats
    {0x2794, 0x2BFF, CharClass::Other},  {0x2E00, 0x2E7F, CharClass::Other},
    {0x3000, 0x3000, CharClass::Space},  {0x3001, 0x3004, CharClass::Other},
    {0x3007, 0x3007, CharClass::Number}, {0x3008, 0x3020, CharClass::Other},
    {0x3021, 0x3029, CharClass::Number}, {0xE000, 0xF8FF, CharClass::Other},  // private use
    {0xFE00, 0xFE0F, CharClass::Other},  {0xFE30, 0xFE6F, CharClass::Other},
    {0xFEFF, 0xFEFF, CharClass::Other},  {0xFF01, 0xFF0F, CharClass::Other},
    {0xFF10, 0xFF19, CharClass::Number}, {0xFF1A, 0xFF20, CharClass::Other},
    {0xFF3B, 0xFF40, CharClass::Other},  {0xFF5B, 0xFF65, CharClass::Other},
    {0xFFE0, 0xFFFF, CharClass::Other},  {0x1F000, 0x1FAFF, CharClass::Other},  // emoji and symbols
    {0xE0000, 0xE007F, CharClass::Other},
};

constexpr bool ranges_sorted_and_disjoint() {
  for (size_t i = 0; i < std::size(kRanges); ++i)
    if (kRanges[i].lo > kRanges[i].hi || (i > 0 && kRanges[i - 1].hi >= kRanges[i].lo)) return false;
  return true;
}
static_assert(ranges_sorted_and_disjoint(), "char_class's binary search needs sorted, disjoint ranges");

bool is_cr_lf(uint32_t cp) { return cp == '\r' || cp == '\n'; }

struct Cp {
  uint32_t cp;
  CharClass cls;
  size_t offset;  // byte offset in the text
};

// One pattern matcher over the decoded text; each match_* returns the end index of the match at k
// (in codepoints) or k when the alternative does not match.
class Splitter {
 public:
  Splitter(const std::vector<Cp>& c, SplitPattern p) : c_(c), p_(p) {}

  size_t match(size_t k) const {
    size_t e;
    if ((e = contraction(k)) > k) return e;
    if (p_ == SplitPattern::Gpt2) {
      if ((e = spaced_run(k, CharClass::Letter)) > k) return e;
      if ((e = spaced_run(k, CharClass::Number)) > k) return e;
      if ((e = spaced_run(k, CharClass::Other)) > k) return e;
    } else {
      // [^\r\n\p{L}\p{N}]?\p{L}+
      if (k + 1 < c_.size() && !is_cr_lf(c_[k].cp) && !is_l_or_n(k) && is(k + 1, CharClass::Letter))
        return run(k + 1, CharClass::Letter, SIZE_MAX);
      if (is(k, CharClass::Letter)) return run(k, CharClass::Letter, SIZE_MAX);
      // \p{N}{1,3} or \p{N}
      if (is(k, CharClass::Number)) return run(k, CharClass::Number, p_ == SplitPattern::Llama3 ? 3 : 1);
      // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
      if ((e = spaced_run(k, CharClass::Other)) > k) {
        while (e < c_.size() && is_cr_lf(c_[e].cp)) ++e;
        return e;
      }
      // \s*[\r\n]+ : the whitespace run up to and including its last \r or \n
      if (is(k, CharClass::Space)) {
        const size_t end = run(k, CharClass::Space, SIZE_MAX);
        for (size_t j = end; j > k; --j)
          if (is_cr_lf(c_[j - 1].cp)) return j;
      }
    }
    if (is(k, CharClass::Space)) {
      // \s+(?!\S): the whole run at the end of the text, else the run less its last character; \s+
      const size_t end = run(k, CharClass::Space, SIZE_MAX);
      if (end == c_.size() || end - k == 1) return end;
      return end - 1;
    }
    return k;
  }

 private:
  bool is(size_t i, CharClass cls) const { return i < c_.size() && c_[i].cls == cls; }
  bool is_l_or_n(size_t i) const { return is(i, CharClass::Letter) || is(i, CharClass::Number); }

  size_t run(size_t k, CharClass cls, size_t max_len) const {
    size_t e = k;
    while (e < c_.size() && e - k < max_len && c_[e].cls == cls) ++e;
    return e;
  }

  // ` ?X+`: a space then a run of X, else a run of X.
  size_t spaced_run(size_t k, CharClass cls) const {
    if (k < c_.size() && c_[k].cp == ' ' && is(k + 1, cls)) return run(k + 1, cls, SIZE_MAX);
    return is(k, cls) ? run(k, cls, SIZE_MAX) : k;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, ASCII case-insensitive for Llama3/Qwen2.
  size_t contraction(size_t k) const {
    if (k + 1 >= c_.size() || c_[k].cp != '\'') return k;
    auto lower = [&](size_t i) -> uint32_t {
      if (i >= c_.size()) return 0;
      const uint32_t cp = c_[i].cp;
      return p_ != SplitPattern::Gpt2 && cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    };
    const uint32_t a = lower(k + 1), b = lower(k + 2);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return k + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return k + 3;
    return k;
  }

  const std::vector<Cp>& c_;
  SplitPattern p_;
};

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::Space;
    return CharClass::Other;
  }
  auto it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                             [](uint32_t v, const ClassRange& r) { return v < r.lo; });
  if (it != std::begin(kRanges) && cp <= std::prev(it)->hi) return std::prev(it)->cls;
  return CharClass::Letter;
}

uint32_t decode_utf8(std::string_view s, size_t i, int& len) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  len = 1;
  if (b0 < 0x80) return b0;
  int n = 0;
  uint32_t cp = 0;
  if ((b0 & 0xE0) == 0xC0) n = 2, cp = b0 & 0x1F;
  else if ((b0 & 0xF0) == 0xE0) n = 3, cp = b0 & 0x0F;
  else if ((b0 & 0xF8) == 0xF0) n = 4, cp = b0 & 0x07;
  else return b0;
  if (i + size_t(n) > s.size()) return b0;
  for (int j = 1; j < n; ++j) {
    const auto b = static_cast<unsigned char>(s[i + size_t(j)]);
    if ((b & 0xC0) != 0x80) return b0;
    cp = (cp << 6) | (b & 0x3F);
  }
  len = n;
  return cp;
}

std::string_view split_pattern_regex(SplitPattern p) {
  switch (p) {
    case SplitPattern::Gpt2:
      return R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)re";
    case SplitPattern::Llama3:
      return R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
    case SplitPattern::Qwen2:
      return R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
  }
  return {};
}

std::vector<std::string_view> pretokenize(std::string_view text, SplitPattern p) {
  std::vector<Cp> cps;
  cps.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    int len = 1;
    const uint32_t cp = decode_utf8(text, i, len);
    // An invalid byte (len 1, >= 0x80) counts as a letter.
    const CharClass cls = (len == 1 && cp >= 0x80) ? CharClass::Letter : char_class(cp);
    cps.push_back(Cp{cp, cls, i});
    i += size_t(len);
  }
  auto offset = [&](size_t k) { return k < cps.size() ? cps[k].offset : text.size(); };
  const Splitter splitter(cps, p);
  std::vector<std::string_view> pieces;
  for (size_t k = 0; k < cps.size();) {
    size_t e = splitter.match(k);
    if (e <= k) e = k + 1;  // unreachable with these patterns (every class has an alternative)
    pieces.push_back(text.substr(offset(k), offset(e) - offset(k)));
    k = e;
  }
  return pieces;
}

}  // namespace mc::detail
