// Models that calibration, quantization, pruning, distillation and evaluation work on.
//
// A Model owns its parameters by checkpoint name (what save writes back) and computes its forward
// pass with ATen ops on them, so replacing a weight is replacing a tensor, and the same code runs on
// CPU and CUDA. Every weight-bearing layer goes through Model::apply_linear (or the embedding/conv
// equivalents), which calls the registered hooks: that is how a caller captures a layer's inputs and
// outputs. Layers are grouped in blocks (transformer blocks; for a classifier, one block per
// weight-bearing layer) and can be run block by block (embed -> run_block(0..n-1) -> head).
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/quant/act_quant.h"

namespace mc {

enum class LayerKind { Linear, Embedding, Conv2d, Norm };
const char* layer_kind_name(LayerKind k);

struct LayerInfo {
  std::string name;        // module name, e.g. "layers.0.attention.wq" or "fc1"
  std::string weight;      // checkpoint key of its weight
  std::string bias;        // checkpoint key of its bias, "" when none
  LayerKind kind = LayerKind::Linear;
  int block = -1;          // block index; -1 outside the blocks (llama: embedding, final norm, classifier;
                           // a classifier model's last linear layer is inside its own block)
  bool is_classifier = false;  // the output projection (tied or not)
  int64_t out_features = 0, in_features = 0;  // conv: out_channels, in_channels * kh * kw
  // Linear only: the input is quantized per token (dynamic, symmetric, this many bits) before the
  // matmul (SmoothQuant W8A8); 0 = float input. See Model::set_input_quant.
  int act_bits = 0;
  // Linear only, when act_bits > 0: the activation format (int, or fp8 / mxfp8 / mxfp4 / nvfp4 with
  // act_bits their element bits; quant/act_quant.h).
  ActFormat act_format = ActFormat::int_;
  ActQuant act_quant() const { return {act_format, act_bits}; }
  // Linear only: the input is rotated by the Hadamard matrix of size in_features (x -> x H, quant/hadamard.h)
  // before the matmul and before any input quantization (QuaRot's online R4 on down_proj; the weight holds
  // W H). See Model::set_input_hadamard.
  bool input_hadamard = false;
};

// Layers that read the output of one parameter, so a per-input-channel scale s can move between them
// without changing the function: `prev` (a norm weight [C], or a linear weight [C, in] with optional
// bias [C]) is divided by s along C, and the input columns of every layer in `layers` are multiplied
// by s (AWQ, SmoothQuant). Only listed when exact: what lies between prev and the layers commutes with
// a positive per-channel scale (RMSNorm's weight, ReLU, attention's weighted sum of values, SwiGLU's
// up projection).
struct ScaleGroup {
  std::string prev;                 // checkpoint key: norm weight (1-D) or linear weight (2-D)
  std::string prev_bias;            // bias of a linear prev ("" when none)
  bool prev_is_norm = false;
  std::vector<std::string> layers;  // layer names reading prev's output
  // The layers' input channels are prev's channels repeated: with grouped KV heads, o reads every
  // value head `repeat` times (channel (h, d) of o's input is channel (h / repeat, d) of v's output,
  // head_dim = `width`). 1: one to one (in_features == C).
  int64_t repeat = 1, width = 0;
  // A norm that applies (norm_offset + w) (Gemma's 1 + w): the fold is w' = (norm_offset + w) / s - norm_offset.
  double norm_offset = 0;
  // s [C] -> the scale of each of the layers' input channels.
  at::Tensor expand(const at::Tensor& s) const;
  // Statistics per layer input channel [C * repeat] -> per prev channel [C] (mean over the repeats).
  at::Tensor reduce(const at::Tensor& per_input) const;
};

// Called on every use of a layer with its input (as the matmul sees it: [..., in_features]) and output.
// Linear: x [..., in] -> y [..., out]. Conv2d: the unfolded patches [B, L, in_channels*kh*kw] -> [B, L, out].
// Embedding: the int64 ids -> [..., dim]. Norm (RMSNorm, batchnorm): its input -> its output.
using LayerHook = std::function<void(const LayerInfo& layer, const at::Tensor& input, const at::Tensor& output)>;

// Keys and values of the attention layers for generation: per block [B, n_kv_heads, capacity, head_dim],
// the first `length` positions filled. Start with an empty cache; the model allocates it.
struct KVCache {
  std::vector<at::Tensor> k, v;
  int64_t length = 0;
  int64_t capacity = 0;  // positions allocated; 0: the model's max_seq_len
};

class Model {
 public:
  virtual ~Model() = default;
  virtual std::string arch() const = 0;  // "llama", "classifier"
  virtual bool is_language_model() const = 0;

  // Every weight-bearing layer in execution order: Linear, Conv2d, Embedding and Norm (RMSNorm, batchnorm)
  // layers; passes that rewrite matmul weights select kind Linear/Conv2d (and usually skip is_classifier).
  const std::vector<LayerInfo>& layers() const { return layers_; }
  const LayerInfo& layer(const std::string& name) const;  // throws InputError
  int num_blocks() const { return num_blocks_; }

  const std::map<std::string, at::Tensor>& params() const { return params_; }
  const at::Tensor& param(const std::string& key) const;  // throws InputError
  // Replaces a parameter (same shape; converted to the model's dtype/device). Tied parameters
  // (a shared classifier) stay tied.
  void set_param(const std::string& key, const at::Tensor& value);

  // Frees a parameter the caller will not use again (a quantized block already written out): the
  // model can no longer run what reads it, and params() holds an undefined tensor under its key.
  void release_param(const std::string& key);
  // Low memory (quantizing models larger than RAM): a parameter replaced by set_param or released has
  // its pages handed back to the kernel (madvise MADV_PAGEOUT: pages mapped from the checkpoint stop
  // counting against the process; nothing is lost, they are read again if touched).
  void set_low_memory(bool on) { low_memory_ = on; }
  // Hands back the pages of block k's parameters (MADV_PAGEOUT, as above, whatever low memory says):
  // streamed evaluation calls it when a block is done, so a model mapped from its checkpoint in its stored
  // dtype (LoadOptions::keep_dtype) is never resident whole.
  void page_out_block(int k);
  void page_out_param(const std::string& key);
  // A narrow parameter widened once and kept while pinned (the classifier over a pass's windows).
  void pin_float(const std::string& key);
  void unpin_floats() { pinned_.clear(); }
  // bf16 compute: linear layers multiply bf16 inputs by bf16 weights (oneDNN's AVX512-BF16 kernels on CPU,
  // ~2x float32 here) and hand float32 outputs on; norms, attention and softmax stay float32. Not exact:
  // each input and output is rounded to bf16 (relative error ~2^-9 per element); off by default.
  void set_compute_bf16(bool on) { compute_bf16_ = on; }
  bool compute_bf16() const { return compute_bf16_; }

  // Scale groups whose prev and layers all lie in block k (empty for models without any).
  virtual std::vector<ScaleGroup> scale_groups(int block) const { (void)block; return {}; }
  // Divides prev by s and multiplies the layers' input columns by s (s > 0, float [C]); the model
  // computes the same function up to float rounding.
  void apply_scale_group(const ScaleGroup& g, const at::Tensor& s);

  // W8A8: quantize the input of linear `layer` per token (dynamic, symmetric, `bits` bits: scale
  // max|x_t| / (2^(bits-1) - 1)) before its matmul; 0 turns it off. With bits 8, a CPU model, and
  // int8 weights registered by set_int8_weight, the matmul is a real int8 x int8 -> int32 product;
  // otherwise it is simulated in float (quantize, dequantize, float matmul).
  void set_input_quant(const std::string& layer, int bits);
  // Any activation format (quant/act_quant.h): int as above, or fp8 / mxfp8 / mxfp4 / nvfp4 (always
  // simulated in float). a.bits == 0 turns it off.
  void set_input_quant(const std::string& layer, const ActQuant& a);
  // Online Hadamard: linear `layer` multiplies its input by H (size in_features) before the matmul, the
  // hooks and any input quantization; its weight must already be W H for the same function (quant/rotate.h).
  void set_input_hadamard(const std::string& layer, bool on);
  // Registers the weight of `layer` as int8 codes q [out, in] (-128..127) with per-output-channel
  // scales [out]: the current float weight must equal q * scale exactly (throws InputError naming the
  // layer otherwise). Dropped when the weight is replaced by set_param.
  void set_int8_weight(const std::string& layer, const at::Tensor& scale);
  bool has_int8_weight(const std::string& layer) const { return int8_weights_.count(layer) > 0; }
  // How a layer with quantized inputs computes its matmul on this model: "int8 kernel (NAME)" when the
  // real int8 x int8 -> int32 product runs, else "simulated in float: REASON"; "" for a float layer.
  std::string input_quant_runtime(const std::string& layer) const;
  // Use the int8 kernel where registered (default true); false simulates every quantized input.
  void set_int8_kernel(bool on) { int8_kernel_ = on; }

  int add_hook(LayerHook hook);
  void remove_hook(int id);

  // Training: makes `value` the parameter itself (no copy, no detach; it may carry an autograd graph,
  // e.g. a fake-quantized view of a latent weight), keeping tied parameters tied. Same shape required.
  void bind_param(const std::string& key, const at::Tensor& value);
  // Attention maps (distillation): when set, models with attention call it from every block with the
  // attention probabilities [B, heads, T_query, T_key] (after the causal mask and softmax), as part of
  // the autograd graph. Empty function: off.
  using AttentionObserver = std::function<void(int block, const at::Tensor& probs)>;
  void set_attention_observer(AttentionObserver f) { attention_observer_ = std::move(f); }
  virtual bool has_attention() const { return false; }
  // KV-cache quantization (quant/kv_cache.h): block k's attention rounds its keys (after RoPE) and values
  // per kv head to `format`'s grid with these scales ([n_kv_heads] each) before reading them, in every
  // forward (whole sequences and the generation cache alike). Blocks without scales stay float.
  void set_kv_quant(int block, const at::Tensor& k_scale, const at::Tensor& v_scale, const std::string& format);
  struct KVScales {
    at::Tensor k, v;
  };
  const std::map<int, KVScales>& kv_quant() const { return kv_quant_; }
  const std::string& kv_format() const { return kv_format_; }
  // KV-cache rotation (QuaRot's online Hadamard on keys and values): each head's keys and values are
  // multiplied by the orthogonal H of size head_dim (quant/hadamard.h) before rounding, and by Hᵀ after,
  // which is what a cache that stores them rotated (queries rotated alike, the attention output rotated
  // back) computes. The scales set by set_kv_quant are then those of the rotated values, and the KV
  // observer sees the rotated values. A float cache is unchanged by it (H is orthogonal).
  void set_kv_hadamard(bool on) { kv_hadamard_ = on; }
  bool kv_hadamard() const { return kv_hadamard_; }
  // Calibration: when set, models with attention call it from every block with that block's keys and values
  // [B, n_kv_heads, T, head_dim] as they go into the cache (before any KV quantization). Empty: off.
  using KVObserver = std::function<void(int block, const at::Tensor& k, const at::Tensor& v)>;
  void set_kv_observer(KVObserver f) { kv_observer_ = std::move(f); }

  // LM: int64 tokens [B, T] -> logits [B, T, vocab]. Classifier: inputs [B, ...] -> logits [B, classes].
  virtual at::Tensor forward(const at::Tensor& input) = 0;
  // Block-wise execution: forward(x) == head(run_block(n-1, ... run_block(0, embed(x)))).
  virtual at::Tensor embed(const at::Tensor& input) = 0;
  virtual at::Tensor run_block(int k, const at::Tensor& hidden) = 0;
  virtual at::Tensor head(const at::Tensor& hidden) = 0;

  // Language models: vocabulary size and the longest sequence the model was trained for (0 for classifiers).
  virtual int64_t vocab_size() const { return 0; }
  virtual int64_t max_seq_len() const { return 0; }
  // Incremental decoding (language models): logits [B, T, vocab] of `tokens` [B, T] placed after the
  // cache's positions, whose keys/values are appended to the cache. Equals the matching slice of
  // forward() over the whole sequence. Throws InputError for models without one.
  virtual at::Tensor forward_cached(const at::Tensor& tokens, KVCache& cache);

  // Config as string metadata (saved beside the weights so the file loads as this model again).
  virtual std::map<std::string, std::string> config_metadata() const = 0;
  virtual void to(c10::Device device);
  c10::Device device() const { return device_; }

 protected:
  // y = x W^T (+ b), calling the hooks.
  at::Tensor apply_linear(const LayerInfo& layer, const at::Tensor& x);
  // A parameter as float32 for computing: the tensor itself, or a widened temporary when it is kept in a
  // narrower stored dtype (bf16/f16, LoadOptions::keep_dtype).
  at::Tensor float_param(const std::string& key) const;
  void run_hooks(const LayerInfo& layer, const at::Tensor& input, const at::Tensor& output);
  void add_layer(LayerInfo info);

  std::vector<LayerInfo> layers_;
  std::map<std::string, size_t> layer_index_;
  int num_blocks_ = 0;
  std::map<std::string, at::Tensor> params_;
  std::map<std::string, std::string> tied_;  // key -> key it is tied to
  std::map<int, LayerHook> hooks_;
  int next_hook_ = 0;
  struct Int8Weight { at::Tensor q, scale; };
  std::map<std::string, Int8Weight> int8_weights_;  // by layer name
  bool int8_kernel_ = true;
  bool low_memory_ = false;
  bool compute_bf16_ = false;
  std::map<std::string, at::Tensor> pinned_;  // key -> float32 copy (pin_float)
  AttentionObserver attention_observer_;
  std::map<int, KVScales> kv_quant_;
  std::string kv_format_;
  bool kv_hadamard_ = false;
  KVObserver kv_observer_;
  // Keys and values of block k as its cache holds them: observed (calibration), then rounded when set.
  void kv_to_cache(int k, at::Tensor& keys, at::Tensor& values);
  c10::Device device_ = c10::Device(c10::kCPU);
};

// Parameters counted once per distinct tensor (a tied classifier once); undefined entries skipped.
int64_t count_distinct_parameters(const std::map<std::string, at::Tensor>& params);

struct LoadOptions {
  std::string arch_file;           // classifier architecture YAML (when the checkpoint has none inside)
  std::string device = "cpu";      // "cpu" or "cuda" (when the LibTorch build has it)
  bool int8_kernel = true;         // W8A8 layers: real int8 matmul on CPU (false: simulate in float)
  // Llama models: keep bf16/f16 weights in their stored dtype (zero-copy views of the mapped checkpoint),
  // widened to float32 only while a layer computes. Memory stays at the checkpoint's size, not twice it;
  // results are identical (the widening is exact). For evaluation and generation: parameters stay narrow.
  bool keep_dtype = false;
};

// While alive, llama models built on this thread keep bf16/f16 weights in their stored dtype (load_model
// sets it from LoadOptions::keep_dtype).
class KeepStoredDtype {
 public:
  explicit KeepStoredDtype(bool on);
  ~KeepStoredDtype();
  KeepStoredDtype(const KeepStoredDtype&) = delete;
  KeepStoredDtype& operator=(const KeepStoredDtype&) = delete;
  static bool active();

 private:
  bool prev_;
};

// Metadata key of W8A8 checkpoints: {"layers": {"<layer>": {"bits": 8, "granularity": "per-token",
// "symmetric": true, "dynamic": true}}}; load_model restores the input quantization from it.
inline constexpr const char* kActivationMetadataKey = "mcompress.activations";
// Metadata key of rotated checkpoints (quant/rotate.h): {"rotation": "hadamard", "online_hadamard": ["<layer>", ...],
// ...}; load_model turns on the online Hadamard of the layers listed.
inline constexpr const char* kRotationMetadataKey = "mcompress.rotation";
// KV-cache quantization of a saved model: {"format": "int8"|"fp8", "k_scale": {"<block>": [per kv head]},
// "v_scale": {...}} (Model::set_kv_quant); applied on load.
inline constexpr const char* kKVCacheMetadataKey = "mcompress.kv_cache";

// Loads a llama2.c checkpoint, a Hugging Face directory (config.json + model.safetensors or a sharded
// index), a checkpoint saved by mcompress (config in its metadata, possibly packed-quantized), or a
// classifier (architecture YAML + weights in any format). Mismatches (missing/unexpected keys,
// shapes that don't match the config) throw InputError listing them.
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& opts = {});

// Writes the model's parameters (and config metadata) to a checkpoint in any writable format.
void save_model(const Model& model, const std::string& path, const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace mc
