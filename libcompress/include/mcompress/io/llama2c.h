#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {

struct Llama2cConfig {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;
};

// llama2.c checkpoints: the legacy headerless format (7 int32 + fp32 weights, negative vocab_size
// = separate classifier) and version 1 ("ak42" magic, 256-byte header). Tensors get the names of
// llama2.c's model.py state_dict (tok_embeddings.weight, layers.0.attention.wq.weight, ...,
// norm.weight, output.weight when not shared), one per layer; views into the mmap.
// Metadata holds the config (dim, hidden_dim, ...) and "llama2c.version".
std::unique_ptr<CheckpointReader> open_llama2c(const std::string& path);
Llama2cConfig llama2c_config(const CheckpointReader& r);  // from the metadata
// The RoPE tables a legacy file stores after norm.weight (freq_cis_real, freq_cis_imag: F32
// [seq_len, head_size/2] views); empty for version 1 files, legacy files without them and other
// readers. They are not parameters, so tensors() leaves them out. write_llama2c recomputes them as
// llama2.c's precompute_freqs_cis does (theta 10000); torch's cos/sin differ from ours by 1 ulp in a
// few percent of the entries, so to reproduce a legacy file byte for byte pass these two tensors
// along with the weights (write_llama2c accepts them by these names and ignores them for version 1).
std::vector<HostTensor> llama2c_freq_cis(const CheckpointReader& r);
// version 0 = legacy, 1 = ak42. Config comes from the metadata when present, else from the shapes
// (n_heads must then be in metadata: it cannot be inferred; nor can seq_len unless freq_cis_real is
// given). F16/BF16/F64 and ggml block inputs are converted to fp32.
void write_llama2c(const std::string& path, const std::vector<HostTensor>& tensors,
                   const std::map<std::string, std::string>& metadata, int version);

struct Llama2cTokenizer {
  uint32_t max_token_length = 0;
  std::vector<std::string> vocab;
  std::vector<float> scores;
};
Llama2cTokenizer read_llama2c_tokenizer(const std::string& path);
void write_llama2c_tokenizer(const std::string& path, const Llama2cTokenizer& tok);

}  // namespace mc

namespace mc {
// True when the first 28 bytes are a plausible legacy header whose implied size equals file_size.
bool looks_like_llama2c_legacy(const uint8_t* data, uint64_t file_size);
}  // namespace mc
