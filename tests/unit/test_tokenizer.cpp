// Tokenizers: llama2.c tokenizer.bin against an independent Python port of run.c encode() (run once,
// outputs pasted below) and against the plain reference merge loop; the byte-level pre-tokenizer splits
// against Python's `regex` module running the real patterns.
#include <random>

#include "../../libcompress/src/data/pretokenize.h"
#include "mcompress/datasets.h"
#include "mcompress/error.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/tokenizer.h"
#include "test_utils.h"

namespace {

using Ids = std::vector<int32_t>;

std::string joined_token_bytes(const mc::Tokenizer& t, const Ids& ids) {
  std::string s;
  for (int32_t id : ids) s += t.token_bytes(id);
  return s;
}

// A llama2.c vocab: <unk>, <s>, </s>, 256 byte tokens, then `extra` with their scores.
mc::Llama2cTokenizer small_vocab(const std::vector<std::pair<std::string, float>>& extra) {
  mc::Llama2cTokenizer t;
  t.vocab = {"<unk>", "\n<s>\n", "\n</s>\n"};
  t.scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    t.vocab.push_back(name);
    t.scores.push_back(0);
  }
  for (auto& [s, score] : extra) {
    t.vocab.push_back(s);
    t.scores.push_back(score);
    t.max_token_length = std::max<uint32_t>(t.max_token_length, uint32_t(s.size()));
  }
  return t;
}

}  // namespace

TEST_CASE("llama2c tokenizer matches run.c encode on stories260K tok512", "[tokenizer]") {
  MC_REQUIRE_SHARED(path, "stories260K/tok512.bin");
  auto tok = mc::load_tokenizer(path);
  CHECK(tok->kind() == "llama2c");
  CHECK(tok->vocab_size() == 512);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  // Expected ids: an independent Python port of karpathy/llama2.c run.c encode() (bos=0, eos=0),
  // run once with /usr/bin/python3 on tok512.bin.
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"Once upon a time, there was a little girl named Lily.",
       {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426}},
      {"Hello world!", {346, 306, 414, 263, 304, 341, 443}},
      {"", {}},
      {"The cat sat on the mat.\nIt was happy.", {291, 280, 294, 262, 294, 353, 265, 284, 294, 426, 13, 442, 413, 286, 393, 426}},
      {"café 🐶", {280, 412, 431, 485, 410, 243, 162, 147, 185}},  // 🐶 is not in the vocab: 4 byte tokens
      {"  two leading spaces", {410, 410, 259, 424, 414, 278, 411, 380, 299, 262, 427, 412, 331, 419}},
      {"a", {261}},
  };
  for (const auto& [text, want] : cases) {
    INFO(text);
    const Ids ids = tok->encode(text);
    CHECK(ids == want);
    CHECK(tok->decode(ids) == text);
    if (!text.empty()) CHECK(joined_token_bytes(*tok, ids) == " " + text);  // the dummy prefix is a byte
  }
  // Byte fallback: "<0xF0>" (id 0xF0 + 3) stands for the byte 0xF0.
  CHECK(tok->token_bytes(0xF0 + 3) == "\xF0");
  CHECK(tok->token_bytes(1).empty());
  CHECK(tok->token_bytes(410) == " ");
  // run.c decode drops the leading space after BOS, here also at the start.
  CHECK(tok->decode({1, 403}) == "Once");
  CHECK_THROWS_AS(tok->token_bytes(512), mc::InputError);
  CHECK_THROWS_AS(tok->decode({-1}), mc::InputError);
}

TEST_CASE("llama2c fast merge equals run.c's loop on TinyStories; decode inverts encode", "[tokenizer]") {
  MC_REQUIRE_SHARED(tok_path, "stories260K/tok512.bin");
  MC_REQUIRE_SHARED(text_path, "tinystories/validation_100.txt");
  const mc::Llama2cTokenizer raw = mc::read_llama2c_tokenizer(tok_path);
  auto tok = mc::load_tokenizer(tok_path);
  const std::vector<std::string> docs = mc::read_documents(text_path);
  REQUIRE(docs.size() >= 20);
  for (size_t i = 0; i < 20; ++i) {
    INFO("story " << i);
    const Ids ids = tok->encode(docs[i]);
    CHECK(ids == mc::llama2c_encode_ref(raw, docs[i]));
    CHECK(tok->decode(ids) == docs[i]);
    CHECK(joined_token_bytes(*tok, ids) == " " + docs[i]);
  }
  // The byte count behind the README's stories260K figures (0.8132 bpb, 1.2362 nats/token: 0.4560 tokens
  // per byte): 128-position windows BOS t0..t126 score 127 tokens per story; bytes exclude the dummy
  // space. Counts from the Python port of run.c: 12684 tokens, 27820 bytes (ratio 0.45593).
  size_t scored = 0, bytes = 0;
  for (const std::string& d : docs) {
    Ids ids = tok->encode(d);
    ids.resize(std::min<size_t>(ids.size(), 127));
    scored += ids.size();
    bytes += tok->decode(ids).size();
  }
  CHECK(docs.size() == 100);
  CHECK(scored == 12684);
  CHECK(bytes == 27820);
  // All 100 stories concatenated (about 100 KB, one merge run): still a round trip.
  std::string all;
  for (const std::string& d : docs) all += d + "\n\n";
  CHECK(tok->decode(tok->encode(all)) == all);
}

TEST_CASE("llama2c merge order: highest score first, leftmost on ties, random vocabularies", "[tokenizer]") {
  // "ab" and "ba" score the same: in "aba" the leftmost pair merges first.
  auto tie = small_vocab({{" ", -1}, {"a", -1}, {"b", -1}, {"ab", -5}, {"ba", -5}});
  auto t = mc::make_llama2c_tokenizer(tie);
  const int32_t sp = 259, a = 260, ab = 262, ba = 263;
  CHECK(t->encode("aba") == Ids{sp, ab, a});
  CHECK(mc::llama2c_encode_ref(tie, "aba") == Ids{sp, ab, a});
  // A higher score wins over position: "ba" scoring better merges first.
  auto pri = small_vocab({{" ", -1}, {"a", -1}, {"b", -1}, {"ab", -5}, {"ba", -2}});
  CHECK(mc::make_llama2c_tokenizer(pri)->encode("aba") == Ids{sp, a, ba});

  // Random vocabularies over {a, b, c, ' '} with few distinct scores (many ties) and random texts: the heap
  // merge must give exactly the reference loop's ids.
  std::mt19937 rng(12345);
  const std::string alphabet = "abc ";
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::pair<std::string, float>> extra;
    for (char c : alphabet) extra.push_back({std::string(1, c), -1});
    std::uniform_int_distribution<int> score(-4, -2), len(2, 5), pick(0, 3), coin(0, 2);
    for (int k = 0; k < 40; ++k) {
      std::string s;
      for (int n = len(rng); n > 0; --n) s += alphabet[size_t(pick(rng))];
      if (coin(rng)) extra.push_back({s, float(score(rng))});
    }
    const mc::Llama2cTokenizer v = small_vocab(extra);
    auto fast = mc::make_llama2c_tokenizer(v);
    for (int k = 0; k < 30; ++k) {
      std::string text;
      for (int n = std::uniform_int_distribution<int>(0, 60)(rng); n > 0; --n) text += alphabet[size_t(pick(rng))];
      INFO("trial " << trial << " text '" << text << "'");
      CHECK(fast->encode(text) == mc::llama2c_encode_ref(v, text));
    }
  }
}

TEST_CASE("load_tokenizer refuses bad files with [tokenizer] and the path", "[tokenizer]") {
  mctest::TempDir dir;
  auto expect_error = [](const std::string& p, const std::string& fragment) {
    try {
      mc::load_tokenizer(p);
      FAIL("no error for " << p);
    } catch (const mc::InputError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.rfind("[tokenizer] " + p, 0) == 0);
      CHECK(msg.find(fragment) != std::string::npos);
    }
  };
  expect_error(dir.file("missing.bin"), "cannot open");
  mctest::write_bytes(dir.file("empty.bin"), {});
  expect_error(dir.file("empty.bin"), "empty file");
  mctest::write_bytes(dir.file("trunc.bin"), {16, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 'a'});
  expect_error(dir.file("trunc.bin"), "truncated");
  // A token longer than max_token_length: not a tokenizer.bin (llama2.c sizes its buffers by it).
  mctest::write_bytes(dir.file("long.bin"), {1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 'a', 'b', 'c'});
  expect_error(dir.file("long.bin"), "max_token_length");
  mctest::write_bytes(dir.file("bad.json"), {' ', '{', '"', 'm'});
  expect_error(dir.file("bad.json"), "malformed");
}

TEST_CASE("byte-level pre-tokenizer splits as the GPT-2, Llama 3 and Qwen2 regexes", "[tokenizer]") {
  using mc::detail::SplitPattern;
  using V = std::vector<std::string>;
  auto split = [](const std::string& s, SplitPattern p) {
    V out;
    for (auto piece : mc::detail::pretokenize(s, p)) out.emplace_back(piece);
    return out;
  };
  // Expected pieces: Python's `regex` module, regex.findall(pattern, text), run once.
  const std::string t1 = "Hello world! It's 2024, they'll say: \"don't\".";
  const std::string t2 = "a  b   c\n\n  d\t\te  ";
  const std::string t3 = "I'M HERE'S 12345 x1y22z...hello ...  \r\n\r\n  end";
  const std::string t4 = "café naïve — “quoted” ’tis 🐶 dog\u00a0nbsp 3½ µm";
  CHECK(split(t1, SplitPattern::Gpt2) == V{"Hello", " world", "!", " It", "'s", " 2024", ",", " they", "'ll", " say",
                                           ":", " \"", "don", "'t", "\"."});
  CHECK(split(t2, SplitPattern::Gpt2) == V{"a", " ", " b", "  ", " c", "\n\n ", " d", "\t", "\t", "e", "  "});
  CHECK(split(t3, SplitPattern::Gpt2) == V{"I", "'", "M", " HERE", "'", "S", " 12345", " x", "1", "y", "22", "z",
                                           "...", "hello", " ...", "  \r\n\r\n ", " end"});
  CHECK(split(t4, SplitPattern::Gpt2) == V{"café", " naïve", " —", " “", "quoted", "”", " ’", "tis", " 🐶", " dog",
                                           "\u00a0", "nbsp", " 3½", " µm"});
  CHECK(split(t1, SplitPattern::Llama3) == V{"Hello", " world", "!", " It", "'s", " ", "202", "4", ",", " they", "'ll",
                                             " say", ":", " \"", "don", "'t", "\"."});
  CHECK(split(t2, SplitPattern::Llama3) == V{"a", " ", " b", "  ", " c", "\n\n", " ", " d", "\t", "\te", "  "});
  CHECK(split(t3, SplitPattern::Llama3) == V{"I", "'M", " HERE", "'S", " ", "123", "45", " x", "1", "y", "22", "z",
                                             "...", "hello", " ...", "  \r\n\r\n", " ", " end"});
  CHECK(split(t4, SplitPattern::Llama3) == V{"café", " naïve", " —", " “", "quoted", "”", " ’", "tis", " 🐶", " dog",
                                             "\u00a0nbsp", " ", "3½", " µm"});
  CHECK(split(t3, SplitPattern::Qwen2) == V{"I", "'M", " HERE", "'S", " ", "1", "2", "3", "4", "5", " x", "1", "y",
                                            "2", "2", "z", "...", "hello", " ...", "  \r\n\r\n", " ", " end"});
  CHECK(split(t4, SplitPattern::Qwen2) == V{"café", " naïve", " —", " “", "quoted", "”", " ’", "tis", " 🐶", " dog",
                                            "\u00a0nbsp", " ", "3", "½", " µm"});
  CHECK(split("", SplitPattern::Gpt2).empty());
}
