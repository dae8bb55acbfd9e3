// Llama-family decoder (llama2.c, Llama, Mistral, Qwen2, Qwen3): RMSNorm, RoPE (interleaved pairs as llama2.c,
// or rotate-half as Hugging Face), grouped-query attention, SwiGLU MLP, tied or separate classifier,
// optional q/k/v biases, optional per-head q/k RMSNorm (Qwen3). Parameters keep the checkpoint's own names (llama2.c or Hugging Face).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/model.h"
#include "mcompress/tensor.h"

namespace mc {

enum class RopeLayout { Interleaved, RotateHalf };  // llama2.c pairs (x0,x1),(x2,x3)... / HF halves
enum class LlamaNames { Llama2c, HuggingFace };

struct LlamaConfig {
  int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t vocab_size = 0, max_seq_len = 0;
  double norm_eps = 1e-5, rope_theta = 10000.0;
  RopeLayout rope = RopeLayout::Interleaved;
  LlamaNames names = LlamaNames::Llama2c;
  bool tied = true;       // classifier shares the embedding
  bool qkv_bias = false;  // Qwen2; Llama with attention_bias
  bool o_bias = false;    // Llama with attention_bias
  bool qk_norm = false;   // Qwen3: RMSNorm (weight [head_dim]) on each head's q and k before RoPE
  int64_t sliding_window = 0;  // Mistral, Phi-3; 0 = none
  // Phi-3: q/k/v stored as one qkv_proj [q_dim + 2 kv_dim, dim] (role wqkv) and gate/up as one gate_up_proj
  // [2 hidden_dim, dim] (role w13, gate rows first); the forward splits their outputs.
  bool fused_qkv_gate_up = false;
  int64_t rotary_dim = 0;  // RoPE rotates the first rotary_dim dims of each head (Phi-4-mini: 0.75 head_dim); 0 = head_dim
  int64_t rope_dim() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
  // rope_scaling: "" (none), "linear" (positions / factor), "llama3" (Llama 3.1 frequency bands),
  // "factors" (each frequency divided by rope_freq_factors[i], head_dim/2 of them: llama.cpp's rope_freqs
  // tensor, as a GGUF file gives it) or "longrope" (Phi-3: inverse frequencies divided by short factors, or
  // long ones once a sequence exceeds rope_original_max_pos; cos/sin times rope_attention_factor).
  std::string rope_scaling;
  std::vector<double> rope_freq_factors;
  std::vector<double> rope_short_factor, rope_long_factor;  // longrope: rope_dim() / 2 each
  double rope_attention_factor = 1.0;                        // longrope
  double rope_factor = 1.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int64_t rope_original_max_pos = 8192;
  int64_t bos_id = -1, eos_id = -1;  // from a Hugging Face config; -1 when unknown

  // Gemma 2 / Gemma 3 (family "gemma2" / "gemma3"; "" for the others, and then none of these is set).
  // HF modeling_gemma2 / modeling_gemma3: RMSNorm weights applied as (1 + w) in float; embeddings times
  // embed_scale (sqrt(hidden_size)); sandwich norms (post_attention_layernorm after attention's o,
  // pre_feedforward_layernorm before the MLP, post_feedforward_layernorm after its down projection);
  // GELU-tanh gated MLP; attention scale 1/sqrt(query_pre_attn_scalar); softcap(x) = cap * tanh(x / cap) on
  // attention scores and final logits (0 = off); per-layer sliding windows and, on sliding layers, RoPE
  // base rope_local_theta without rope_scaling (Gemma 3).
  std::string family;
  bool norm_plus_one = false;
  double embed_scale = 0;  // 0: embeddings unscaled
  bool sandwich_norms = false;
  bool gelu_tanh = false;  // MLP activation gelu_pytorch_tanh instead of silu
  double query_pre_attn_scalar = 0;  // 0: head_dim
  double attn_softcap = 0, final_softcap = 0;
  std::vector<char> sliding_layers;  // per layer: 1 = sliding window `sliding_window`; empty: every layer alike
  double rope_local_theta = 0;       // sliding layers' RoPE base; 0: rope_theta (with rope_scaling)

  bool is_sliding(int64_t layer) const {
    return sliding_window > 0 && (sliding_layers.empty() || sliding_layers[static_cast<size_t>(layer)] != 0);
  }

  void validate() const;  // throws InputError
  void validate_phi3_fields() const;  // part of validate(): fused tensors, rotary_dim, longrope
  std::string json() const;                       // for checkpoint metadata
  static LlamaConfig from_json(const std::string& text, const std::string& where);
  static LlamaConfig from_hf_config(const std::string& config_json_path);
};

// Checkpoint key of a parameter: role is one of embed, final_norm, output, attn_norm, ffn_norm, wq, wk, wv,
// wo, w1 (gate), w2 (down), w3 (up), bq, bk, bv, bo, q_norm, k_norm, wqkv and w13 (Phi-3's fused qkv_proj and
// gate_up_proj); block is the layer index (ignored for the global ones). Gemma's sandwich norms add the roles
// post_attn_norm, pre_ffn_norm and post_ffn_norm.
std::string llama_param_name(LlamaNames names, const std::string& role, int64_t block = -1);
// The same for a config: with sandwich norms (Gemma) "ffn_norm" is the norm before the MLP,
// pre_feedforward_layernorm (Hugging Face's post_attention_layernorm is Gemma's post_attn_norm).
std::string llama_param_name(const LlamaConfig& cfg, const std::string& role, int64_t block = -1);

// config.json for a Gemma config (the keys Transformers reads), with `quantization_config_json` ("" for none).
std::string gemma_hf_config_json(const LlamaConfig& cfg, int64_t intermediate_size,
                                 const std::string& quantization_config_json);

// llama.cpp's rope_freqs.weight for Llama 3.1 rope scaling (convert_hf_to_gguf.py): for each of the head_dim/2
// frequencies f_i = theta^(-2i/head_dim) with wavelength w = 2 pi / f_i, the divisor 1 (w < orig/high_freq_factor),
// factor (w > orig/low_freq_factor), else 1 / ((1 - s) / factor + s) with s = (orig / w - low) / (high - low);
// f_i / divisor is Hugging Face's _compute_llama3_parameters. Computed in double. InputError unless
// c.rope_scaling == "llama3".
std::vector<double> llama3_rope_freq_factors(const LlamaConfig& c);

// Random initial weights for `cfg` by checkpoint name (GPT-2 style: N(0, 0.02), the residual projections
// wo and w2 N(0, 0.02 / sqrt(2 * n_layers)), norms 1, biases 0), drawn in a fixed order from `seed`.
std::map<std::string, at::Tensor> init_llama_weights(const LlamaConfig& cfg, uint64_t seed);

class LlamaModel : public Model {
 public:
  // `weights` by checkpoint name (zero-copy views where possible). Checks names and shapes against the
  // config: missing/unexpected keys and wrong shapes throw InputError naming them.
  LlamaModel(const LlamaConfig& cfg, const std::map<std::string, HostTensor>& weights);

  const LlamaConfig& config() const { return cfg_; }
  std::string arch() const override { return "llama"; }
  bool is_language_model() const override { return true; }
  bool has_attention() const override { return true; }
  int64_t vocab_size() const override { return cfg_.vocab_size; }
  int64_t max_seq_len() const override { return cfg_.max_seq_len; }

  at::Tensor forward(const at::Tensor& tokens) override;
  at::Tensor embed(const at::Tensor& tokens) override;
  at::Tensor run_block(int k, const at::Tensor& hidden) override;
  at::Tensor head(const at::Tensor& hidden) override;
  at::Tensor forward_cached(const at::Tensor& tokens, KVCache& cache) override;
  std::map<std::string, std::string> config_metadata() const override;
  void to(c10::Device device) override;
  // attention_norm -> wq, wk, wv; wv -> wo (each value head repeated for its query heads); ffn_norm -> w1,
  // w3; w3 -> w2.
  std::vector<ScaleGroup> scale_groups(int block) const override;
  // A tied classifier gets its own weight (a copy of the embedding, under the config's output name) and the
  // config says untied from then on; no-op when already untied. For passes that must change the two apart
  // (a rotation folding the final norm into the classifier, quant/rotate.h).
  void untie_classifier();

 private:
  at::Tensor block(int k, const at::Tensor& x, KVCache* cache, int64_t pos0);
  at::Tensor attention(int k, const at::Tensor& x, KVCache* cache, int64_t pos0);
  at::Tensor rms_norm(const LayerInfo& layer, const at::Tensor& x);
  size_t slot(int k, int role) const;  // index into layers_ of a BlockSlot of block k
  at::Tensor rope(const at::Tensor& x, int64_t pos0, bool local = false);  // x [B, H, T, head_dim]
  void ensure_rope_tables(int64_t length);
  at::Tensor gemma_block(int k, const at::Tensor& x, KVCache* cache, int64_t pos0);  // sandwich norms
  at::Tensor gated(at::Tensor& g, const at::Tensor& u, bool gelu);  // the MLP's act(g) * u

  LlamaConfig cfg_;
  std::vector<std::vector<size_t>> block_layers_;  // per block: indices into layers_ (attn_norm, wq, wk, wv, [q_norm, k_norm,] wo, ffn_norm, w1, w3, w2)
  size_t embed_layer_ = 0, norm_layer_ = 0, output_layer_ = 0;
  at::Tensor cos_, sin_;  // [n, rope_dim/2] float32 on the model's device
  bool rope_long_ = false;  // longrope: the tables hold the long factors
  at::Tensor cos_local_, sin_local_;  // sliding layers' tables when rope_local_theta is set (Gemma 3)
  std::vector<size_t> slot_pos_;  // BlockSlot -> position in block_layers_[k]
};

}  // namespace mc
