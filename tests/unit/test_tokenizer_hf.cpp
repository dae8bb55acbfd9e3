// Hugging Face tokenizer.json BPE on small files written here; the expected ids are worked out by hand
// from the merge ranks (comments show the merge order).
#include <nlohmann/json.hpp>

#include "mcompress/error.h"
#include "mcompress/tokenizer.h"
#include "test_utils.h"

namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

std::unique_ptr<mc::Tokenizer> load_json(const mctest::TempDir& dir, const json& j, const std::string& name = "t.json") {
  const std::string p = dir.file(name);
  const std::string text = j.dump(2);
  mctest::write_bytes(p, std::vector<uint8_t>(text.begin(), text.end()));
  return mc::load_tokenizer(p);
}

std::string load_error(const mctest::TempDir& dir, const json& j) {
  try {
    load_json(dir, j, "bad.json");
  } catch (const mc::InputError& e) {
    return e.what();
  }
  return "(no error)";
}

// GPT-2 style: ByteLevel pre-tokenizer, "Ġ" = space, "Ċ" = newline, "Ã" "©" = the bytes of "é".
json byte_level_json() {
  const std::vector<std::string> vocab = {"<|endoftext|>", "h", "e", "l", "o", "Ġ", "w", "r", "d", "!", "'", "s",
                                          "i", "t", "c", "a", "f", "Ã", "©", "Ċ", "he", "ll", "hell", "hello",
                                          "Ġw", "or", "Ġwor", "ld", "'s", "it", "Ã©"};
  json v = json::object();
  for (size_t i = 0; i < vocab.size(); ++i) v[vocab[i]] = i;
  // Both spellings of merges: "a b" strings and [a, b] pairs.
  json merges = {"h e", "l l", "he ll", "hell o", "Ġ w"};
  for (auto [a, b] : std::vector<std::pair<const char*, const char*>>{
           {"o", "r"}, {"Ġw", "or"}, {"l", "d"}, {"'", "s"}, {"i", "t"}, {"Ã", "©"}})
    merges.push_back({a, b});
  return {{"version", "1.0"},
          {"added_tokens", {{{"id", 0}, {"content", "<|endoftext|>"}, {"special", true}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"post_processor", {{"type", "ByteLevel"}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", v}, {"merges", merges}}}};
}

// Llama style: Prepend "▁" + Replace " " -> "▁", byte fallback, BOS from the post-processor template.
json sentencepiece_json() {
  json v = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v[name] = 3 + b;
  }
  const std::vector<std::string> rest = {"▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "▁hell", "▁hello",
                                         "w", "r", "d", "▁w", "or", "▁wor", "ld", "▁world"};
  for (size_t i = 0; i < rest.size(); ++i) v[rest[i]] = 259 + i;
  json merges = {"▁ h", "l l", "▁h e", "▁he ll", "▁hell o", "▁ w", "o r", "▁w or", "l d", "▁wor ld"};
  json added = json::array();
  for (auto [id, s] : std::vector<std::pair<int, const char*>>{{0, "<unk>"}, {1, "<s>"}, {2, "</s>"}})
    added.push_back({{"id", id}, {"content", s}, {"special", true}});
  return {{"added_tokens", added},
          {"normalizer",
           {{"type", "Sequence"},
            {"normalizers",
             {{{"type", "Prepend"}, {"prepend", "▁"}},
              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}}},
          {"pre_tokenizer", nullptr},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
          {"model",
           {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", true},
            {"vocab", v}, {"merges", merges}}}};
}

}  // namespace

TEST_CASE("HF byte-level BPE: GPT-2 split, byte characters, merge ranks, added tokens", "[tokenizer]") {
  mctest::TempDir dir;
  auto t = load_json(dir, byte_level_json());
  CHECK(t->kind() == "hf-bpe-bytelevel");
  CHECK(t->vocab_size() == 31);
  CHECK(t->eos_id() == 0);  // <|endoftext|>
  CHECK(t->bos_id() == -1);
  // "hello world!" -> pieces "hello" | " world" | "!".
  // "hello": h e l l o -> he (rank 0) -> ll (1) -> hell (2) -> hello (3).
  // "Ġworld": Ġw (4) beats or (5) and ld (7); then or (5); Ġwor (6); ld (7) -> Ġwor ld.
  const Ids hw = {23, 26, 27, 9};
  CHECK(t->encode("hello world!") == hw);
  CHECK(t->decode(hw) == "hello world!");
  CHECK(t->encode("it's") == Ids{29, 28});             // "it" | "'s"
  CHECK(t->encode("café") == Ids{14, 15, 16, 30});     // c a f + "Ã©" (the bytes C3 A9)
  CHECK(t->encode("hello\n") == Ids{23, 19});          // "\n" -> "Ċ"
  CHECK(t->encode("hello<|endoftext|>hello") == Ids{23, 0, 23});
  CHECK(t->encode("").empty());
  CHECK(t->token_bytes(26) == " wor");
  CHECK(t->token_bytes(30) == "é");
  CHECK(t->token_bytes(0).empty());  // special
  CHECK(t->decode({23, 0, 23}) == "hellohello");
  CHECK_THROWS_AS(t->encode("hello z"), mc::InputError);  // 'z' has no token and there is no unk
  CHECK_THROWS_AS(t->token_bytes(31), mc::InputError);

  // The same vocab behind Qwen2's Split regex + ByteLevel(use_regex false).
  json q = byte_level_json();
  q["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"},
                           {"pattern", {{"Regex", R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  q["normalizer"] = {{"type", "NFC"}};
  auto tq = load_json(dir, q, "qwen.json");
  CHECK(tq->kind() == "hf-bpe-bytelevel");
  CHECK(tq->encode("hello world!") == hw);
  CHECK(tq->encode("it's") == Ids{29, 28});
}

TEST_CASE("HF SentencePiece-style BPE: dummy prefix, byte fallback, unk fusing, Metaspace", "[tokenizer]") {
  mctest::TempDir dir;
  auto t = load_json(dir, sentencepiece_json());
  CHECK(t->kind() == "hf-bpe-sentencepiece");
  CHECK(t->vocab_size() == 277);
  CHECK(t->bos_id() == 1);  // from the TemplateProcessing post-processor
  CHECK(t->eos_id() == 2);  // by name
  // "▁hello▁world": ▁h (0), ll (1), ▁he (2), ▁hell (3), ▁hello (4), ▁w (5), or (6), ▁wor (7), ld (8), ▁world (9).
  CHECK(t->encode("hello world") == Ids{268, 276});
  // "é" is not in the vocab: its bytes C3 A9 become <0xC3> (3 + 0xC3) and <0xA9> (3 + 0xA9).
  const Ids he = {268, 259, 198, 172};
  CHECK(t->encode("hello é") == he);
  CHECK(t->decode(he) == "hello é");  // the dummy prefix space is dropped
  CHECK(t->token_bytes(268) == " hello");
  CHECK(t->token_bytes(198) == "\xC3");
  CHECK(t->token_bytes(1).empty());
  // Special tokens split the text; each other segment gets its own "▁" (as the tokenizers library's
  // Prepend normalizer does).
  CHECK(t->encode("world</s>") == Ids{276, 2});
  CHECK(t->encode("</s>hello") == Ids{2, 268});

  // Without byte fallback unknown characters become <unk>, consecutive ones fused.
  json nb = sentencepiece_json();
  nb["model"]["byte_fallback"] = false;
  CHECK(load_json(dir, nb, "nb.json")->encode("hello éé") == Ids{268, 259, 0});

  // Older Llama files: no normalizer, a Metaspace pre-tokenizer (split on "▁", prefix added).
  json ms = sentencepiece_json();
  ms["normalizer"] = nullptr;
  ms["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"add_prefix_space", true}};
  auto tm = load_json(dir, ms, "ms.json");
  CHECK(tm->encode("hello world") == Ids{268, 276});
  CHECK(tm->encode("hello é") == he);
  CHECK(tm->decode(he) == "hello é");
}

TEST_CASE("HF tokenizer.json: unsupported or malformed files are refused by name", "[tokenizer]") {
  mctest::TempDir dir;
  json wp = sentencepiece_json();
  wp["model"]["type"] = "WordPiece";
  CHECK_THAT(load_error(dir, wp), Catch::Contains("model type 'WordPiece' is not supported"));
  json uni = sentencepiece_json();
  uni["model"] = {{"type", "Unigram"}, {"vocab", json::array()}};
  CHECK_THAT(load_error(dir, uni), Catch::Contains("'Unigram'"));
  json bad_merge = sentencepiece_json();
  bad_merge["model"]["merges"].push_back("x y");
  CHECK_THAT(load_error(dir, bad_merge), Catch::Contains("'x' is not in the vocab"));
  json norm = sentencepiece_json();
  norm["normalizer"] = {{"type", "Lowercase"}};
  CHECK_THAT(load_error(dir, norm), Catch::Contains("normalizer 'Lowercase'"));
  json re = byte_level_json();
  re["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}}, {"behavior", "Isolated"}};
  CHECK_THAT(load_error(dir, re), Catch::Contains("regex is not one of"));
  CHECK_THAT(load_error(dir, {{"model", 3}}), Catch::StartsWith("[tokenizer] " + dir.file("bad.json")));
}

TEST_CASE("HF added tokens: lstrip, rstrip, single_word, normalized; NFC; BOS only where the template adds it",
          "[tokenizer]") {
  mctest::TempDir dir;
  json j = byte_level_json();
  j["normalizer"] = {{"type", "NFC"}};
  auto add = [&](int id, const char* content, bool special, bool normalized, const char* flag) {
    json a = {{"id", id}, {"content", content}, {"special", special}, {"normalized", normalized},
              {"lstrip", false}, {"rstrip", false}, {"single_word", false}};
    if (flag) a[flag] = true;
    j["added_tokens"].push_back(a);
  };
  add(31, "<m>", true, false, "lstrip");
  add(32, "<r>", false, false, "rstrip");
  add(33, "wor", false, false, "single_word");
  add(34, "\u00e9", false, true, nullptr);  // "é" composed, matched in the NFC text
  auto t = load_json(dir, j);
  CHECK_FALSE(t->adds_bos());  // no TemplateProcessing
  // lstrip: the two spaces before <m> go into it; the rest is "hello" | <m> | "hello".
  CHECK(t->encode("hello  <m>hello") == Ids{23, 31, 23});
  // rstrip: the spaces after <r> go into it; "world" without its space: w, o r (rank 5), l d (rank 7).
  CHECK(t->encode("hello<r>  world") == Ids{23, 32, 6, 25, 27});
  CHECK(t->decode({32}) == "<r>");  // not special: decodes to its content
  // single_word: "wor" between a space and "!" is a word; inside "world" it is not.
  CHECK(t->encode("hello wor!") == Ids{23, 5, 33, 9});
  CHECK(t->encode("hello world") == Ids{23, 26, 27});
  // normalized: "e" + U+0301 becomes "é" under NFC, and then matches the added token.
  CHECK(t->encode("cafe\u0301") == Ids{14, 15, 16, 34});
  CHECK(t->encode("caf\u00e9") == Ids{14, 15, 16, 34});

  // NFC itself on the plain vocab: the decomposed text tokenizes as the composed one ("Ã©" = C3 A9);
  // without NFC, U+0301 (CC 81) has no token and encode() would throw.
  json q = byte_level_json();
  q["normalizer"] = {{"type", "NFC"}};
  CHECK(load_json(dir, q, "nfc.json")->encode("cafe\u0301") == Ids{14, 15, 16, 30});
  CHECK_THROWS_AS(load_json(dir, byte_level_json(), "raw.json")->encode("cafe\u0301"), mc::InputError);

  CHECK(load_json(dir, sentencepiece_json(), "sp.json")->adds_bos());
}

TEST_CASE("HF SentencePiece-style BPE: byte fallback of a 4-byte character, Gemma's Split on a string",
          "[tokenizer]") {
  mctest::TempDir dir;
  json j = sentencepiece_json();
  // Gemma 3: no Prepend, Replace " " -> "▁", then Split on " " MergedWithPrevious (a no-op after the
  // Replace, as in the real file).
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}};
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "MergedWithPrevious"},
                        {"invert", false}};
  auto t = load_json(dir, j);
  // "hello" without a dummy prefix: h e l l o -> ll (rank 1) only; "▁world" merges fully.
  // U+1F600 is F0 9F 98 80: four byte tokens 3 + byte.
  const Ids ids = {260, 261, 265, 263, 276, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80};
  CHECK(t->encode("hello world\U0001F600") == ids);
  CHECK(t->decode(ids) == "hello world\U0001F600");
  // A string Split that does cut: on "l", MergedWithPrevious gives "hel" | "l" | "o" (the second "l"
  // follows a match, so it stays alone); no merge applies inside "hel" (only "▁h e", not "h e") and
  // "l l" no longer meets: h e l | l | o.
  json k = j;
  k["normalizer"] = nullptr;
  k["pre_tokenizer"]["pattern"] = {{"String", "l"}};
  CHECK(load_json(dir, k, "l.json")->encode("hello") == Ids{260, 261, 262, 262, 263});
}
