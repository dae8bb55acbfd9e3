// Internal: llama.cpp's "phi3" architecture (convert_hf_to_gguf.py Phi3MiniModel, llama.cpp llm_build_phi3)
// for Phi3ForCausalLM models (LlamaConfig::fused_qkv_gate_up): the phi3.* key/values and the longrope
// factor tensors on export, and the model back from such a file (gguf_phi3.cpp).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mcompress/export/gguf.h"
#include "mcompress/models/llama.h"

namespace mc::gguf_detail {

// phi3.context_length, embedding_length, feed_forward_length, block_count, attention.head_count(_kv),
// attention.layer_norm_rms_epsilon, rope.dimension_count (the rotated dims: partial rotary), rope.freq_base,
// rope.scaling.original_context_length, attention.sliding_window (0: none), and for longrope
// rope.scaling.attn_factor.
std::vector<GgufKV> phi3_model_kv(const LlamaConfig& c);
// longrope: {"rope_factors_long.weight", long_factor}, {"rope_factors_short.weight", short_factor} (F32
// [rotary_dim / 2]); empty otherwise.
std::vector<std::pair<std::string, std::vector<double>>> phi3_rope_factor_tensors(const LlamaConfig& c);

}  // namespace mc::gguf_detail

namespace mc {
// A Phi-3 LlamaModel (Hugging Face names, rotate-half RoPE, fused tensors) from a GGUF file with
// general.architecture "phi3". InputError naming the file and key/tensor for anything missing or unknown.
std::unique_ptr<Model> load_gguf_phi3(const std::string& path);
}  // namespace mc
