// Internals shared by the Hugging Face and llama2.c exports: the model to export (config, float
// parameters and the quantized entries of a packed checkpoint, read one at a time) and writing a
// directory atomically.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "export/export_source.h"
#include "mcompress/export/hf.h"
#include "mcompress/models/llama.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/tensor.h"

namespace mc {
class SafetensorsStreamWriter;
}

namespace mc::hfx {

struct ExportInput {
  explicit ExportInput(const std::string& p) : path(p), src(p) {}
  std::string path;
  LlamaConfig cfg;
  ExportSource src;               // the parameters, read one at a time
  std::set<std::string> quantized;  // checkpoint names of the packed entries with codes (file inputs)
};

// Opens a llama model (load_model_streamed: nothing is widened or dequantized yet) and lists a packed
// checkpoint's quantized entries. InputError naming the file for anything that is not a llama model.
ExportInput read_export_input(const std::string& path);

// The float32 parameter of a role (the embedding for a tied classifier), read now; src.release(key_of(...))
// hands its pages back.
at::Tensor param_of(const ExportInput& in, const std::string& role, int64_t block = -1);
std::string key_of(const ExportInput& in, const std::string& role, int64_t block = -1);
// The quantized entry of a checkpoint name, read now (codes at pruned places of sparse entries set to their
// zero point, so dequantize() equals the parameter exactly); nullopt when it is not one.
std::optional<QuantResult> quant_of(const ExportInput& in, const std::string& key);

// Hugging Face name of a role (llama_param_name with HF names).
std::string hf_name(const std::string& role, int64_t block = -1);

// config.json of a LlamaForCausalLM (Qwen2/Mistral where the config says so) for `cfg` with
// `intermediate_size` (may be padded); tie_word_embeddings, torch_dtype float16. bos/eos: the config's,
// else llama2.c's 1 / 2 when the model uses llama2.c names.
std::string hf_config_json(const LlamaConfig& cfg, int64_t intermediate_size, const std::string& quantization_config_json);

// The quantization_config of a compressed-tensors "pack-quantized" directory: one config group with
// targets ["Linear"] and the weights' grid (strategy group or channel; per-tensor grids are written as
// channel with every row the same scale), `ignore` as given (module names left in float).
nlohmann::ordered_json compressed_tensors_qconfig(const QuantSpec& s, bool act_order, const std::vector<std::string>& ignore);
// The quantization_config around one config group (targets Linear) with these `weights` args and `format`.
nlohmann::ordered_json ct_qconfig(const nlohmann::ordered_json& weights, const std::string& format,
                                  const std::vector<std::string>& ignore);

// fp16 copy of a float tensor; InputError naming the tensor when a value does not fit float16.
HostTensor to_f16(const std::string& name, const at::Tensor& t, const std::string& path);
// The same of the parameter `key`, stored as `name`, converted a block of rows at a time (rows in `order` when
// defined, see ExportSource::for_row_blocks): memory is the float16 copy, not the float32 one too.
HostTensor param_f16(const ExportInput& in, const std::string& name, const std::string& key, const at::Tensor& order);

// A directory written atomically: files go into <out>.tmp-<pid>/ and commit() renames it to <out>.
// <out> may exist only as an empty directory or one holding nothing but files an export (or a model-free
// quantization: shards, index, reports, tokenizer/processor files) writes (it is then replaced); anything else is refused before any work. Destructor removes an uncommitted
// temp directory.
class AtomicDir {
 public:
  explicit AtomicDir(std::string out);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  std::string file(const std::string& name) const;  // path inside the temp directory
  const std::string& path() const { return tmp_; }  // the temp directory
  void write_text(const std::string& name, const std::string& text);
  void copy_file(const std::string& from, const std::string& name);
  ExportSummary commit(std::vector<std::string> notes);

 private:
  std::string out_, tmp_;
  bool committed_ = false;
};

// Tokenizer files of a Hugging Face model beside the input (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, tokenizer.model) copied into dir; a note says what was (not) written.
void copy_tokenizer(const std::string& model_path, AtomicDir& dir, std::vector<std::string>& notes);

// The linear roles of a block as the exports write them (Phi-3's fused ones under their own names).
std::vector<const char*> linear_roles(const LlamaConfig& c);
// Whether a role's rows are permuted from interleaved (llama2.c/Meta) to rotate-half RoPE, and the permutation.
bool permutes(const LlamaConfig& c, const std::string& role);
at::Tensor rope_perm(const LlamaConfig& c, const std::string& role);
// A float parameter in HF row order as float16, read now.
HostTensor weight_f16(const ExportInput& in, const std::string& name, const std::string& role, int64_t block);
// Embedding, norms, lm_head (untied) and biases as float16 under their HF names; a note says so.
void add_dense(const ExportInput& in, SafetensorsStreamWriter& out, std::vector<std::string>& notes);
// The notes every export of `in` carries (the RoPE row permutation).
void add_common_notes(const ExportInput& in, std::vector<std::string>& notes);

}  // namespace mc::hfx
