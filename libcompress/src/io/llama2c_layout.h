// Internal: the tensor order of llama2.c checkpoints, shared by the reader and the writer.
// Verified against karpathy/llama2.c export.py (legacy_export, version1_export) and run.c
// (memory_map_weights):
//   legacy (v0): 7 x int32 header (vocab_size < 0: separate classifier), then fp32
//     tok_embeddings, attention_norm[L], wq[L], wk[L], wv[L], wo[L], ffn_norm[L], w1[L], w2[L], w3[L],
//     norm, freq_cis_real [seq_len, head_size/2], freq_cis_imag [same], output (if not shared)
//   v1: u32 magic "ak42", i32 version 1, 7 x int32, u8 shared_classifier, zeros to 256 bytes, then fp32
//     attention_norm[L], ffn_norm[L], norm, tok_embeddings, wq[L], wk[L], wv[L], wo[L], w1[L], w2[L],
//     w3[L], output (if not shared)
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "mcompress/io/llama2c.h"

namespace mc::llama2c_detail {

constexpr uint32_t kMagic = 0x616b3432;  // "ak42" as a little-endian uint32
constexpr uint64_t kLegacyHeaderBytes = 28;
constexpr uint64_t kV1HeaderBytes = 256;
constexpr const char* kRopeReal = "freq_cis_real";
constexpr const char* kRopeImag = "freq_cis_imag";

struct Entry {
  std::string name;
  Shape shape;
  bool rope = false;  // a RoPE table (legacy only): stored but not a model parameter
};

// "" when the config is plausible (positive sizes, n_heads divides dim, n_kv_heads divides n_heads),
// else the reason.
std::string implausible(const Llama2cConfig& c);
// Exact file size for the config, or nullopt when it overflows 64 bits. Needs a plausible config.
std::optional<uint64_t> file_bytes(const Llama2cConfig& c, int version, bool with_rope);
// Tensors in file order. Only call once file_bytes() has bounded the sizes (it allocates 9 per layer).
std::vector<Entry> layout(const Llama2cConfig& c, int version, bool with_rope);
std::string config_str(const Llama2cConfig& c);  // "dim=64, hidden_dim=172, ..."

}  // namespace mc::llama2c_detail
