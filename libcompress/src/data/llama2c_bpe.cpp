// llama2.c tokenizer.bin as a Tokenizer: encode() is karpathy/llama2.c run.c encode() (without BOS/EOS),
// with the merge loop done by the heap merge of bpe_merge.h; llama2c_encode_ref() is run.c's plain
// loop, kept as the reference. Differences from run.c, all outside what run.c can meet or defines:
//   - text is a string_view: a NUL byte is encoded (run.c stops at it);
//   - the vocab is a hash map; with duplicate token strings the lowest id wins (run.c's bsearch picks
//     one of them arbitrarily);
//   - a vocab without a " " token gets no dummy prefix (run.c would emit id -1);
//   - byte tokens are recognised only in the exact form "<0xAB>" (run.c's sscanf is looser).
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "data/bpe_merge.h"
#include "data/tokenizer_impl.h"
#include "mcompress/error.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/tokenizer.h"

namespace mc {

namespace {

constexpr int32_t kBos = 1;
constexpr int32_t kEos = 2;
constexpr int32_t kFirstByteToken = 3;  // run.c: "the first 3 vocab elements are <unk>, <s>, </s>"
// run.c starts its search for the best pair at best_score = -1e10 and merges only pairs scoring above it.
constexpr float kMinMergeScore = -1e10f;

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte of a "<0xAB>" token, or -1.
int byte_token_value(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  const int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

using VocabIndex = std::unordered_map<std::string_view, int32_t>;

VocabIndex index_vocab(const std::vector<std::string>& vocab) {
  VocabIndex index;
  index.reserve(vocab.size() * 2);
  for (size_t i = 0; i < vocab.size(); ++i) index.emplace(vocab[i], int32_t(i));  // first id wins
  return index;
}

int32_t find(const VocabIndex& index, std::string_view s) {
  auto it = index.find(s);
  return it == index.end() ? -1 : it->second;
}

// run.c's first phase: dummy prefix, then one token per UTF-8 codepoint (at most 4 bytes gathered; a
// byte that is not a continuation byte starts a new one), byte fallback for codepoints not in the vocab.
std::vector<int32_t> initial_tokens(const VocabIndex& index, size_t vocab_size, std::string_view text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 1);
  if (text.empty()) return ids;
  const int32_t dummy = find(index, " ");
  if (dummy >= 0) ids.push_back(dummy);
  auto is_cont = [](unsigned char c) { return (c & 0xC0) == 0x80; };
  size_t start = 0, len = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (!is_cont(c) || len == 0) start = i, len = 0;
    ++len;
    const bool next_cont = i + 1 < text.size() && is_cont(static_cast<unsigned char>(text[i + 1]));
    if (next_cont && len < 4) continue;
    const std::string_view cp = text.substr(start, len);
    const int32_t id = find(index, cp);
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (char b : cp) {
        const int32_t bid = int32_t(static_cast<unsigned char>(b)) + kFirstByteToken;
        if (size_t(bid) >= vocab_size)
          fail("tokenizer", "byte fallback for byte ", bid - kFirstByteToken, " needs token ", bid,
               " but the vocab has ", vocab_size, " tokens");
        ids.push_back(bid);
      }
    }
    len = 0;
  }
  return ids;
}

class Llama2cBpe final : public Tokenizer {
 public:
  explicit Llama2cBpe(Llama2cTokenizer tok) : tok_(std::move(tok)) {
    if (tok_.vocab.size() != tok_.scores.size())
      fail("tokenizer", tok_.vocab.size(), " tokens but ", tok_.scores.size(), " scores");
    if (tok_.vocab.size() <= size_t(kEos))
      fail("tokenizer", "a llama2.c vocab needs at least <unk>, <s>, </s>; got ", tok_.vocab.size(), " tokens");
    if (tok_.vocab.size() > size_t(INT32_MAX)) fail("tokenizer", "vocab too large: ", tok_.vocab.size());
    index_ = index_vocab(tok_.vocab);
    for (const std::string& s : tok_.vocab) longest_ = std::max(longest_, s.size());
    has_dummy_prefix_ = find(index_, " ") >= 0;
    bytes_.resize(tok_.vocab.size());
    for (size_t i = kFirstByteToken; i < tok_.vocab.size(); ++i) {
      const int b = byte_token_value(tok_.vocab[i]);
      bytes_[i] = b >= 0 ? std::string(1, char(b)) : tok_.vocab[i];
    }
  }

  std::string kind() const override { return "llama2c"; }
  int32_t vocab_size() const override { return int32_t(tok_.vocab.size()); }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::string pair;
    auto lookup = [&](int32_t a, int32_t b) {
      detail::MergeResult r;
      const std::string& sa = tok_.vocab[size_t(a)];
      const std::string& sb = tok_.vocab[size_t(b)];
      if (sa.size() + sb.size() > longest_) return r;
      pair.assign(sa).append(sb);
      const int32_t id = find(index_, pair);
      if (id < 0 || !(tok_.scores[size_t(id)] > kMinMergeScore)) return r;
      r.ok = true;
      r.priority = tok_.scores[size_t(id)];
      r.merged = id;
      return r;
    };
    return detail::bpe_merge(initial_tokens(index_, tok_.vocab.size(), text), lookup);
  }

  std::string token_bytes(int32_t id) const override { return bytes_[check(id)]; }

  // run.c decode(): after BOS (and at the start, which stands for the BOS before it) a leading space
  // of the piece is dropped; byte tokens give their raw byte. Special tokens give nothing.
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    int32_t prev = has_dummy_prefix_ ? kBos : -1;
    for (int32_t id : ids) {
      const std::string& piece = bytes_[check(id)];
      const bool is_byte_token = byte_token_value(tok_.vocab[size_t(id)]) >= 0;
      if (prev == kBos && !is_byte_token && !piece.empty() && piece[0] == ' ')
        out.append(piece, 1, std::string::npos);
      else
        out += piece;
      prev = id;
    }
    return out;
  }

 private:
  size_t check(int32_t id) const {
    if (id < 0 || size_t(id) >= tok_.vocab.size())
      fail("tokenizer", "token id ", id, " is out of range [0, ", tok_.vocab.size(), ")");
    return size_t(id);
  }

  Llama2cTokenizer tok_;
  VocabIndex index_;
  size_t longest_ = 0;
  bool has_dummy_prefix_ = false;
  std::vector<std::string> bytes_;  // token_bytes per id ("" for ids 0..2)
};

}  // namespace

std::unique_ptr<Tokenizer> make_llama2c_tokenizer(Llama2cTokenizer tok) {
  return std::make_unique<Llama2cBpe>(std::move(tok));
}

std::vector<int32_t> llama2c_encode_ref(const Llama2cTokenizer& tok, std::string_view text) {
  const VocabIndex index = index_vocab(tok.vocab);
  std::vector<int32_t> tokens = initial_tokens(index, tok.vocab.size(), text);
  while (true) {
    float best_score = kMinMergeScore;
    int32_t best_id = -1;
    size_t best_idx = 0;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      const std::string merged = tok.vocab[size_t(tokens[i])] + tok.vocab[size_t(tokens[i + 1])];
      const int32_t id = find(index, merged);
      if (id >= 0 && tok.scores[size_t(id)] > best_score) {
        best_score = tok.scores[size_t(id)];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_id < 0) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + std::ptrdiff_t(best_idx) + 1);
  }
  return tokens;
}

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path) {
  Llama2cTokenizer tok;
  try {
    tok = read_llama2c_tokenizer(path);
  } catch (const InputError& e) {
    fail("tokenizer", strip_component(e.what()), " (read as a llama2.c tokenizer.bin)");
  }
  size_t longest = 0;
  for (const std::string& s : tok.vocab) longest = std::max(longest, s.size());
  if (longest > tok.max_token_length)
    fail("tokenizer", path, ": not a llama2.c tokenizer.bin: a token of ", longest,
         " bytes is longer than the header's max_token_length ", tok.max_token_length);
  try {
    return make_llama2c_tokenizer(std::move(tok));
  } catch (const InputError& e) {
    fail("tokenizer", path, ": ", strip_component(e.what()));
  }
}

}  // namespace mc
