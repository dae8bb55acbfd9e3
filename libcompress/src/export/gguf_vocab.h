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
// Byte-level: tokenizer.ggml.pre is llama.cpp's name of the split regex ("llama-bpe" for Llama 3, "qwen2"
// for Qwen2/2.5/3, else "default"). With a tokenizer_config.json beside a tokenizer.json: bos/eos/pad/unk
// ids, add_bos/add_eos and tokenizer.chat_template from it (read_tokenizer_config); a null bos/eos there
// falls back on model_bos/model_eos (config.json's ids), as llama.cpp's converter does.
// model_name: general.name. llama.cpp takes a model whose name contains "phi3" or "phi-3" for Phi-3 and
// looks up <unk>, <s>, </s> and <|endoftext|> by text while loading the vocabulary (it throws
// "_Map_base::at" when one is missing), so such a name with a tokenizer lacking one of them is an InputError.
std::vector<GgufKV> tokenizer_kv(const std::string& path, int64_t vocab_size, int64_t model_bos = -1,
                                 int64_t model_eos = -1, const std::string& model_name = "");

}  // namespace mc::gguf_detail
