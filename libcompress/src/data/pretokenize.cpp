#include "data/pretokenize.h"

#include <algorithm>
#include <iterator>

namespace mc::detail {

namespace {

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

std::vector<std::string_view> split_literal(std::string_view text, std::string_view pattern, SplitBehavior b) {
  struct Span {
    size_t begin, end;
    bool match;
  };
  std::vector<Span> spans;  // covers the text: matches and the non-empty text between them
  size_t pos = 0;
  for (size_t hit; !pattern.empty() && (hit = text.find(pattern, pos)) != std::string_view::npos;
       pos = hit + pattern.size()) {
    if (hit > pos) spans.push_back({pos, hit, false});
    spans.push_back({hit, hit + pattern.size(), true});
  }
  if (pos < text.size()) spans.push_back({pos, text.size(), false});
  std::vector<Span> out;
  bool prev_match = false;
  switch (b) {
    case SplitBehavior::Removed:
      for (const Span& s : spans)
        if (!s.match) out.push_back(s);
      break;
    case SplitBehavior::Isolated:
      out = spans;
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Span& s : spans) {
        if (s.match && !prev_match && !out.empty()) out.back().end = s.end;
        else out.push_back(s);
        prev_match = s.match;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (size_t i = spans.size(); i-- > 0;) {
        const Span& s = spans[i];
        if (s.match && !prev_match && !out.empty()) out.back().begin = s.begin;
        else out.push_back(s);
        prev_match = s.match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case SplitBehavior::Contiguous:
      for (const Span& s : spans) {
        if (s.match && prev_match) out.back().end = s.end;
        else out.push_back(s);
        prev_match = s.match;
      }
      break;
  }
  std::vector<std::string_view> pieces;
  pieces.reserve(out.size());
  for (const Span& s : out) pieces.push_back(text.substr(s.begin, s.end - s.begin));
  return pieces;
}

}  // namespace mc::detail
