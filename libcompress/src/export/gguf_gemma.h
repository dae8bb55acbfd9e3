// Internal: Gemma 2 / Gemma 3 as llama.cpp's gemma2 / gemma3 GGUF archs (gguf_gemma.cpp).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/export/gguf.h"
#include "mcompress/models/llama.h"

namespace mc::gguf_detail {

// The model keys of arch gemma2 / gemma3 for `c` (read from model_path); fails in one line where llama.cpp's
// fixed choices (sliding pattern, local RoPE base, attention and embedding scales, tied classifier) differ.
std::vector<GgufKV> gemma_model_kv(const LlamaConfig& c, const std::string& model_path);
// Per block, in file order: (GGUF tensor name without "blk.N." and ".weight", llama_param_name role).
// Norm weights are stored as 1 + w (llama.cpp multiplies by the stored weight).
std::vector<std::pair<std::string, std::string>> gemma_block_tensors(const LlamaConfig& c);
// True for general.architecture gemma2 / gemma3; load_gguf_gemma reads such a file back as a LlamaModel.
bool is_gemma_arch(const std::string& arch);
std::unique_ptr<Model> load_gguf_gemma(const std::string& path);

}  // namespace mc::gguf_detail
