// The model an export reads, the Hugging Face config.json it writes, fp16 conversion, and the
// directory written atomically.
#include "hf_input.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "mcompress/atomic_file.h"
#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/torch_bridge.h"

namespace mc::hfx {

namespace fs = std::filesystem;

ExportInput read_export_input(const std::string& path) {
  if (!fs::exists(path)) fail("export", path, ": no such file or directory");
  ExportInput in(path);
  if (!in.src.is_llama()) fail("export", path, ": a ", in.src.arch(), " model; only llama models can be exported");
  in.cfg = in.src.config();
  if (in.cfg.qk_norm && in.cfg.family.empty())  // the writers know Llama/Mistral/Qwen2 tensors and config.json only
    fail("export", path, ": per-head q/k norms (Qwen3) are not supported by the hf-gptq, compressed-tensors and "
         "llama2c-q8 exporters yet");
  for (const std::string& key : in.src.entry_keys()) {
    const PackedEntryInfo& e = *in.src.entry_info(key);
    if (!e.spec) continue;  // sparse float16 values: a float weight
    if (!e.weight_shape.empty()) fail("export", path, ": ", key, ": a non-matrix weight cannot be exported");
    in.quantized.insert(key);
  }
  return in;
}

std::optional<QuantResult> quant_of(const ExportInput& in, const std::string& key) {
  if (!in.quantized.count(key)) return std::nullopt;
  PackedEntryParts parts = in.src.entry(key);
  QuantResult q = std::move(*parts.quant);
  if (parts.mask.defined()) {  // pruned places hold code 0: give them the zero point (value 0)
    at::Tensor g = q.g_idx.defined() ? q.g_idx.to(at::kLong)
                   : q.spec.group_size > 0 ? at::floor_divide(at::arange(q.codes.size(1), at::kLong), q.spec.group_size)
                                           : at::zeros({q.codes.size(1)}, at::kLong);
    at::Tensor zero_codes = q.zeros.index_select(1, g).to(at::kByte);
    q.codes = at::where(parts.mask, q.codes, zero_codes);
  }
  return q;
}

std::string key_of(const ExportInput& in, const std::string& role, int64_t block) {
  if (role == "output" && in.cfg.tied) return llama_param_name(in.cfg.names, "embed");
  return llama_param_name(in.cfg, role, block);
}

at::Tensor param_of(const ExportInput& in, const std::string& role, int64_t block) {
  return in.src.value(key_of(in, role, block));
}

std::string hf_name(const std::string& role, int64_t block) {
  return llama_param_name(LlamaNames::HuggingFace, role, block);
}

namespace {

// Phi3ForCausalLM's own keys (configuration_phi3): the fused tensors need the architecture to load.
void add_phi3_keys(nlohmann::ordered_json& j, const LlamaConfig& c) {
  j["architectures"] = {"Phi3ForCausalLM"};
  j["model_type"] = "phi3";
  j.erase("attention_bias"), j.erase("mlp_bias");
  j["original_max_position_embeddings"] = c.rope_original_max_pos;
  if (c.rotary_dim > 0) j["partial_rotary_factor"] = double(c.rotary_dim) / double(c.head_dim);
  if (c.rope_scaling == "longrope") {
    j["rope_scaling"] = {{"type", "longrope"}, {"rope_type", "longrope"}, {"short_factor", c.rope_short_factor},
                         {"long_factor", c.rope_long_factor}, {"attention_factor", c.rope_attention_factor}};
  }
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::ordered_json(c.sliding_window) : nlohmann::ordered_json(nullptr);
}

}  // namespace

std::string hf_config_json(const LlamaConfig& c, int64_t intermediate_size, const std::string& qcfg) {
  if (!c.family.empty()) return gemma_hf_config_json(c, intermediate_size, qcfg);
  nlohmann::ordered_json j;
  std::string arch = "LlamaForCausalLM", type = "llama";
  if (c.qkv_bias && !c.o_bias) arch = "Qwen2ForCausalLM", type = "qwen2";
  else if (c.sliding_window > 0) arch = "MistralForCausalLM", type = "mistral";
  j["architectures"] = {arch};
  j["model_type"] = type;
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = intermediate_size;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["num_hidden_layers"] = c.n_layers;
  if (c.head_dim * c.n_heads != c.dim) j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"type", "linear"}, {"factor", c.rope_factor}};
  } else if (c.rope_scaling == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", c.rope_factor}, {"low_freq_factor", c.rope_low_freq_factor},
                         {"high_freq_factor", c.rope_high_freq_factor},
                         {"original_max_position_embeddings", c.rope_original_max_pos}};
  } else if (c.rope_scaling == "factors") {
    fail("hf-export", "per-frequency rope factors (a GGUF rope_freqs tensor) have no Hugging Face config form");
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (type == "llama") j["attention_bias"] = c.qkv_bias && c.o_bias;
  if (type == "llama") j["mlp_bias"] = false;
  if (c.sliding_window > 0) {
    j["sliding_window"] = c.sliding_window;
    if (type == "qwen2") j["use_sliding_window"] = true;
  }
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len;
  j["tie_word_embeddings"] = c.tied;
  j["torch_dtype"] = "float16";
  const bool l2c = c.names == LlamaNames::Llama2c;  // llama2.c sentencepiece ids: <s> 1, </s> 2
  const int64_t bos = c.bos_id >= 0 ? c.bos_id : (l2c ? 1 : -1), eos = c.eos_id >= 0 ? c.eos_id : (l2c ? 2 : -1);
  if (bos >= 0) j["bos_token_id"] = bos;
  if (eos >= 0) j["eos_token_id"] = eos;
  j["use_cache"] = true;
  if (c.fused_qkv_gate_up) add_phi3_keys(j, c);
  j["quantization_config"] = nlohmann::ordered_json::parse(qcfg);
  return j.dump(2) + "\n";
}

namespace {

at::Tensor checked_f16(const std::string& name, const at::Tensor& t, const std::string& path) {
  at::Tensor h = t.to(at::kHalf).contiguous();
  if (!at::isfinite(h).all().item<bool>())
    fail("export", path, ": ", name, ": values beyond the float16 range (|x| > 65504) cannot be stored as float16");
  return h;
}

}  // namespace

HostTensor to_f16(const std::string& name, const at::Tensor& t, const std::string& path) {
  return from_torch(name, checked_f16(name, t, path));
}

HostTensor param_f16(const ExportInput& in, const std::string& name, const std::string& key, const at::Tensor& order) {
  const Shape shape = in.src.shape(key);
  const uint64_t row_bytes = uint64_t(shape.size() == 2 ? shape[1] : shape_numel(shape)) * 2;
  std::vector<uint8_t> bytes(size_t(shape_numel(shape)) * 2);
  in.src.for_row_blocks(key, order, [&](const at::Tensor& rows, int64_t first) {
    const at::Tensor h = checked_f16(name, rows, in.path);
    std::memcpy(bytes.data() + uint64_t(first) * row_bytes, h.data_ptr(), h.nbytes());
  });
  return HostTensor::owned(name, DType::F16, shape, std::move(bytes));
}

namespace {

// Files an export may have written: a directory holding only these can be replaced.
bool export_owned(const fs::path& p) {
  static const std::set<std::string> names = {
      "config.json", "model.safetensors", "quantize_config.json", "tokenizer.json", "tokenizer_config.json",
      "special_tokens_map.json", "tokenizer.model", "generation_config.json", "model.safetensors.index.json",
      "report.json", "report.md", "report.html", "preprocessor_config.json", "processor_config.json",
      "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "normalizer.json"};
  if (!fs::is_regular_file(p)) return false;
  const std::string n = p.filename().string();
  // shards: model-00001-of-00003.safetensors
  static const std::regex shard("model-[0-9]+-of-[0-9]+\\.safetensors");
  return names.count(n) > 0 || std::regex_match(n, shard);
}

}  // namespace

AtomicDir::AtomicDir(std::string out) : out_(std::move(out)) {
  while (out_.size() > 1 && out_.back() == '/') out_.pop_back();
  if (out_.empty()) fail("export", "empty output directory name");
  std::error_code ec;
  if (fs::exists(out_, ec)) {
    if (!fs::is_directory(out_)) fail("export", out_, ": exists and is not a directory");
    for (const auto& e : fs::directory_iterator(out_))
      if (!export_owned(e.path()))
        fail("export", out_, ": exists and holds '", e.path().filename().string(),
             "', which an export does not write; remove it or choose another output directory");
  }
  tmp_ = out_ + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp_, ec);
  if (!fs::create_directories(tmp_, ec) && ec) fail("export", out_, ": cannot create ", tmp_, ": ", ec.message());
}

AtomicDir::~AtomicDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

std::string AtomicDir::file(const std::string& name) const { return (fs::path(tmp_) / name).string(); }

void AtomicDir::write_text(const std::string& name, const std::string& text) {
  AtomicFile f(file(name), "export");
  f.write(text.data(), text.size());
  f.commit();
}

void AtomicDir::copy_file(const std::string& from, const std::string& name) {
  std::error_code ec;
  fs::copy_file(from, file(name), fs::copy_options::overwrite_existing, ec);
  if (ec) fail("export", from, ": cannot copy to ", file(name), ": ", ec.message());
}

ExportSummary AtomicDir::commit(std::vector<std::string> notes) {
  ExportSummary s;
  s.notes = std::move(notes);
  std::error_code ec;
  if (fs::exists(out_)) {  // checked in the constructor: only files an export writes
    for (const auto& e : fs::directory_iterator(out_)) fs::remove(e.path(), ec);
    fs::remove(out_, ec);
    if (ec) fail("export", out_, ": cannot replace: ", ec.message());
  }
  fs::rename(tmp_, out_, ec);
  if (ec) fail("export", out_, ": cannot rename ", tmp_, " into place: ", ec.message());
  committed_ = true;
  for (const auto& e : fs::directory_iterator(out_)) {
    s.files.push_back(e.path().string());
    s.bytes += fs::file_size(e.path());
  }
  std::sort(s.files.begin(), s.files.end());
  return s;
}

void copy_tokenizer(const std::string& model_path, AtomicDir& dir, std::vector<std::string>& notes) {
  const fs::path base = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
  const fs::path from = base.empty() ? fs::path(".") : base;
  std::vector<std::string> copied;
  for (const char* n : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"}) {
    if (fs::is_regular_file(from / n)) {
      dir.copy_file((from / n).string(), n);
      copied.push_back(n);
    }
  }
  if (!copied.empty()) {
    std::string s = "tokenizer: copied";
    for (const auto& c : copied) s += " " + c;
    notes.push_back(s);
    return;
  }
  std::string l2c;
  if (fs::is_directory(from))
    for (const auto& e : fs::directory_iterator(from)) {
      const std::string n = e.path().filename().string();
      if (n == "tokenizer.bin" || (n.rfind("tok", 0) == 0 && e.path().extension() == ".bin")) l2c = e.path().string();
    }
  notes.push_back(l2c.empty() ? "tokenizer: none found beside the model; no tokenizer written"
                              : "tokenizer: " + l2c + " is a llama2.c tokenizer; no Hugging Face tokenizer written "
                                                      "(convert it separately)");
}

// ---- the llama layout shared by the Hugging Face exports (hf_input.h) ----

const char* kLinearRoles[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
const char* kFusedLinearRoles[] = {"wqkv", "wo", "w13", "w2"};  // Phi-3: exported under their own names

std::vector<const char*> linear_roles(const LlamaConfig& c) {
  if (c.fused_qkv_gate_up) return {std::begin(kFusedLinearRoles), std::end(kFusedLinearRoles)};
  return {std::begin(kLinearRoles), std::end(kLinearRoles)};
}

bool permutes(const LlamaConfig& c, const std::string& role) {
  return c.rope == RopeLayout::Interleaved && (role == "wq" || role == "wk" || role == "bq" || role == "bk");
}

at::Tensor rope_perm(const LlamaConfig& c, const std::string& role) {
  const bool q = role == "wq" || role == "bq";
  return rope_row_permutation(q ? c.n_heads : c.n_kv_heads, c.head_dim, true);
}

// A float parameter in HF row order as float16, read now.
HostTensor weight_f16(const ExportInput& in, const std::string& name, const std::string& role, int64_t block) {
  const at::Tensor order = permutes(in.cfg, role) ? rope_perm(in.cfg, role) : at::Tensor();
  return param_f16(in, name, key_of(in, role, block), order);
}

void add_dense(const ExportInput& in, SafetensorsStreamWriter& out, std::vector<std::string>& notes) {
  const LlamaConfig& c = in.cfg;
  auto add = [&](const std::string& role, int64_t block) {
    const std::string hf = hf_name(role, block), key = key_of(in, role, block);
    if (in.quantized.count(key))
      notes.push_back(hf + ": quantized in the input; stored as its dequantized values rounded to float16");
    out.add(weight_f16(in, hf, role, block));
  };
  add("embed", -1);
  add("final_norm", -1);
  if (!c.tied) add("output", -1);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (c.sandwich_norms)  // Gemma: HF names of their own (post_attention_layernorm is not the MLP's norm)
      add("attn_norm", l), add("post_attn_norm", l), add("pre_ffn_norm", l), add("post_ffn_norm", l);
    else
      add("attn_norm", l), add("ffn_norm", l);
    if (c.qk_norm) add("q_norm", l), add("k_norm", l);
    if (c.qkv_bias) add("bq", l), add("bk", l), add("bv", l);
    if (c.o_bias) add("bo", l);
  }
  notes.push_back("embeddings, norms" + std::string(c.tied ? "" : ", lm_head") +
                  (c.qkv_bias ? ", biases" : "") + " stored as float16 (torch_dtype float16)");
}

void add_common_notes(const ExportInput& in, std::vector<std::string>& notes) {
  if (in.cfg.rope == RopeLayout::Interleaved)
    notes.push_back("q_proj/k_proj rows permuted from interleaved (llama2.c/Meta) to rotate-half RoPE "
                    "(codes, scales and zeros move with their rows; exact)");
}

}  // namespace mc::hfx
