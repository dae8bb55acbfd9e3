// Internal: the tokenizer.ggml.* key/values of a GGUF llama file (gguf_vocab.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mcompress/export/gguf.h"

namespace mc::gguf_detail {

// From a llama2.c tokenizer.bin (model "llama": SentencePiece-style, ' ' written as U+2581 as llama.cpp's
// convert-llama2c-to-ggml does; ids 0/1/2 = <unk>/<s>/</s>, "<0xNN>" byte tokens) or a Hugging Face
// tokenizer.json (byte-level BPE -> model "gpt2" with merges; SentencePiece-style BPE -> model "llama",
// scores = -(rank of the merge that makes the token), 0 for tokens no merge makes). The vocabulary is padded
// to vocab_size with unused "[PAD<id>]" tokens; InputError when the tokenizer has more tokens than that.
std::vector<GgufKV> tokenizer_kv(const std::string& path, int64_t vocab_size);

}  // namespace mc::gguf_detail
