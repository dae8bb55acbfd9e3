// Hugging Face tokenizer.json BPE: the parts of the file the encoder uses (filled by hf_bpe_load.cpp)
// and the tokenizer built from them (hf_bpe.cpp).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/pretokenize.h"
#include "mcompress/tokenizer.h"

namespace mc::detail {

// An added token (tokenizer.json "added_tokens"), found in the text before the model runs. Tokens with
// normalized=false are matched in the raw text, the others in the normalized text of what is left;
// lstrip / rstrip take the whitespace before / after a match into it; single_word matches only where no
// word character (\w) touches the match.
struct HfAddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool normalized = false;
  bool lstrip = false, rstrip = false, single_word = false;
};

// One pre-tokenizer step, applied in order to every piece the steps before it made.
struct HfPreTokStep {
  enum Kind { Regex, Literal, Metaspace } kind = Regex;
  SplitPattern pattern = SplitPattern::Gpt2;         // Regex (behavior Isolated)
  std::string literal;                              // Literal: the string split on
  SplitBehavior behavior = SplitBehavior::Isolated;  // Literal
};

// A normalizer step of the supported subset: Prepend, Replace (string pattern), NFC (ICU).
struct HfNormalizeStep {
  enum Kind { Prepend, Replace, Nfc } kind = Prepend;
  std::string a, b;  // Prepend: a = prefix; Replace: a -> b
};

struct HfBpeSpec {
  std::string path;
  bool byte_level = false;  // else SentencePiece-style (characters as symbols, optional byte fallback)

  std::vector<std::string> id_to_token;  // model vocab strings by id ("" where an id has none)
  std::unordered_map<std::string, int32_t> token_to_id;
  struct Merge {
    int32_t rank, merged;
  };
  std::unordered_map<uint64_t, Merge> merges;  // (left id << 32 | right id) -> rank, merged id
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;

  std::vector<HfNormalizeStep> normalizer;
  // Pre-tokenization: the steps in order; byte-level tokenizers then map each piece's bytes to GPT-2's
  // byte characters.
  std::vector<HfPreTokStep> pretok;
  bool byte_level_prefix_space = false;  // ByteLevel add_prefix_space
  bool metaspace = false;                // a Metaspace step: ' ' -> "▁", optional prefix, split
  bool metaspace_split = true;
  std::string metaspace_prepend = "always";  // "always", "first", "never"
  // The encoder puts a "▁" before the text: decode() then drops the first space.
  bool dummy_prefix = false;

  std::vector<HfAddedToken> added;
  int32_t bos_id = -1, eos_id = -1;
  bool adds_bos = false;  // the post-processor puts bos_id before the text
};

std::unique_ptr<Tokenizer> make_hf_bpe_tokenizer(HfBpeSpec spec);

// GPT-2's bytes_to_unicode(): the UTF-8 text of the character standing for each byte.
const std::array<std::string, 256>& byte_to_unicode_table();

}  // namespace mc::detail
