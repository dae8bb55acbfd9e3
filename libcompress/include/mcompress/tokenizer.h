// Tokenizers: llama2.c tokenizer.bin (score-ordered BPE with byte fallback) and Hugging Face
// tokenizer.json (byte-level BPE as GPT-2/Qwen use; SentencePiece-style BPE as Llama uses).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mc {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;  // "llama2c", "hf-bpe-bytelevel", "hf-bpe-sentencepiece"
  // Token ids of text, without BOS/EOS (SentencePiece-style tokenizers add their dummy prefix space).
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // The bytes a token stands for in running text (byte-fallback tokens give their byte, '▁' gives ' ',
  // byte-level BPE symbols are mapped back to bytes; special tokens give "").
  // The dummy prefix is NOT removed here: the token bytes of encode(text) are " " + text for llama2.c and
  // SentencePiece-style tokenizers that prepend "▁", and exactly text for byte-level ones (without add_prefix_space), so bits per
  // byte over the text itself counts (sum of token_bytes) - 1 for ids starting at the text's start.
  // stories260K: the README's 0.8132 bpb and 1.2362 nats/token imply 0.4560 tokens per byte; a window of 128
  // positions per story (BOS t0 .. t126, scoring the 127 tokens t0 .. t126) with bytes = their token bytes
  // less the dummy space (= decode(ids).size()) gives 12684 / 27820 = 0.45593; scoring 128 tokens (0.45616)
  // or keeping the space (0.4543) does not match. Throws InputError for an id outside [0, vocab_size).
  virtual std::string token_bytes(int32_t id) const = 0;
  // Text of a sequence of ids (what a user reads; drops the SentencePiece dummy prefix space, i.e. one
  // leading space of the first token; llama2.c: also of a token right after BOS, as run.c does).
  // Special tokens give nothing; byte tokens give their raw byte (no UTF-8 repair).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  // One past the largest id a model needs an embedding row for: every id but special added tokens that
  // lie beyond the rest (Gemma 3's tokenizer.json has <image_soft_token> at 262144, one past the 1B text
  // model's 262144 rows). A tokenizer whose text_vocab_size() exceeds the model's vocabulary is refused;
  // such a special token in a text fails when the ids reach the model.
  virtual int32_t text_vocab_size() const { return vocab_size(); }
  virtual int32_t bos_id() const = 0;  // -1 when the tokenizer has none
  virtual int32_t eos_id() const = 0;
  // Whether the tokenizer's own pipeline puts bos_id() before a text (tokenizer.json: its post-processor
  // template starts with a special token; llama2.c: yes). Qwen's files name no BOS in their template,
  // so they add none although bos_id() may name one.
  virtual bool adds_bos() const { return bos_id() >= 0; }
};

// Chooses by content: tokenizer.json (JSON: first non-space byte '{') or llama2.c tokenizer.bin.
// Throws InputError "[tokenizer] <path>: ...".
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// llama2.c tokenizers (see src/data/llama2c_bpe.cpp). encode() follows run.c encode(): a dummy
// prefix " " token before non-empty text, UTF-8 codepoints looked up in the vocab, byte fallback
// id = byte + 3, then merges of the adjacent pair whose concatenation has the highest score (ties: the
// leftmost). BOS = 1, EOS = 2; ids 0..2 are special (token_bytes ""). token_bytes keeps the leading
// space of a token (so the first token of encode(text) accounts for the dummy prefix: the token bytes of
// encode(text) are " " + text); decode() drops the space of the first token and of a token after BOS.
struct Llama2cTokenizer;
std::unique_ptr<Tokenizer> make_llama2c_tokenizer(Llama2cTokenizer tok);
// The plain O(n^2) merge loop of run.c, the reference the fast encoder is tested against.
std::vector<int32_t> llama2c_encode_ref(const Llama2cTokenizer& tok, std::string_view text);

}  // namespace mc
