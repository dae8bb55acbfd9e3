// load_model / save_model: which model a path holds (llama2.c file, Hugging Face directory, mcompress
// checkpoint with its config in the metadata, classifier + architecture YAML), and the weights read
// from it (views into the mmap; packed-quantized checkpoints dequantized).
#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/error_where.h"
#include "mcompress/export/gguf.h"
#include "mcompress/export/hf.h"
#include "mcompress/io/hf_dir.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/models/classifier.h"
#include "mcompress/models/llama.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/packed_entries.h"
#include "mcompress/quant/rotate.h"
#include "mcompress/streamed_model.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

namespace fs = std::filesystem;

struct Weights {
  std::map<std::string, HostTensor> tensors;
  std::map<std::string, std::string> metadata;
  std::string format;
};

// Set by load_model_streamed on its thread: a packed checkpoint's entries are left unread (placeholders) and
// their reader is handed over here.
thread_local std::unique_ptr<PackedEntryReader>* unread_packed = nullptr;

Weights read_weights(const std::string& path) {
  auto reader = open_checkpoint(path);
  Weights w;
  w.metadata = reader->metadata();
  w.format = reader->format();
  if (is_packed_checkpoint(*reader) && unread_packed) {
    auto entries = std::make_unique<PackedEntryReader>(std::move(reader));
    for (auto& t : entries->parameters_unread()) w.tensors[t.name] = std::move(t);
    *unread_packed = std::move(entries);
  } else if (is_packed_checkpoint(*reader)) {
    for (auto& t : read_packed_checkpoint(*reader)) w.tensors[t.name] = std::move(t);
  } else {
    for (const auto& ti : reader->tensors()) w.tensors[ti.name] = reader->load(ti.name);
  }
  return w;
}

std::string read_text(const std::string& path, const char* component) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<FileError>(component, path, ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// model.safetensors, or the shards listed by model.safetensors.index.json (io/hf_dir.h checks the index:
// a missing shard or a listed tensor its shard lacks is one line naming them).
Weights read_hf_weights(const fs::path& dir) {
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  if (!fs::exists(single) && !fs::exists(index))
    fail("llama", dir.string(), ": no model.safetensors or model.safetensors.index.json (pytorch_model.bin "
         "directories are not supported: convert the weights to safetensors first)");
  if (!fs::exists(index)) return read_weights(single.string());  // may be packed (dequantized here)
  auto reader = open_hf_dir(dir.string());
  Weights w;
  w.format = "safetensors";
  w.metadata = reader->metadata();
  for (const auto& ti : reader->tensors()) w.tensors[ti.name] = reader->load(ti.name);
  return w;
}

int64_t meta_int(const std::map<std::string, std::string>& m, const char* key, const std::string& path) {
  auto it = m.find(key);
  if (it == m.end()) fail("llama", path, ": llama2.c metadata lacks '", key, "'");
  try {
    return std::stoll(it->second);
  } catch (const std::exception&) {
    fail("llama", path, ": llama2.c metadata ", key, "='", it->second, "' is not an integer");
  }
}

LlamaConfig llama2c_model_config(const Weights& w, const std::string& path) {
  LlamaConfig c;  // llama2.c ModelArgs: norm_eps 1e-5, RoPE theta 10000, interleaved pairs
  c.dim = meta_int(w.metadata, "dim", path), c.hidden_dim = meta_int(w.metadata, "hidden_dim", path);
  c.n_layers = meta_int(w.metadata, "n_layers", path), c.n_heads = meta_int(w.metadata, "n_heads", path);
  c.n_kv_heads = meta_int(w.metadata, "n_kv_heads", path), c.vocab_size = meta_int(w.metadata, "vocab_size", path);
  c.max_seq_len = meta_int(w.metadata, "seq_len", path);
  c.tied = meta_int(w.metadata, "shared_classifier", path) != 0;
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  return c;
}

c10::Device parse_device(const std::string& d) {
  if (d == "cpu" || d.empty()) return c10::Device(c10::kCPU);
  if (d == "cuda" || d.rfind("cuda:", 0) == 0) {
    if (!at::hasCUDA()) fail("model", "CUDA requested but this LibTorch build has no CUDA");
    try {
      return c10::Device(d);
    } catch (const c10::Error&) {
      fail("model", "bad device '", d, "' (allowed: cpu, cuda, cuda:N)");
    }
  }
  fail("model", "unknown device '", d, "' (allowed: cpu, cuda)");
}

std::unique_ptr<Model> build_model(const std::string& path, const LoadOptions& opts) {
  if (fs::is_directory(path)) {
    const fs::path cfg = fs::path(path) / "config.json";
    const fs::path ours = fs::path(path) / "model.safetensors";
    // An mcompress output directory: model.safetensors carries its config in the metadata.
    if (!fs::exists(cfg) && fs::exists(ours)) return build_model(ours.string(), opts);
    if (!fs::exists(cfg))
      fail("model", path, ": a model directory needs a Hugging Face config.json");
    LlamaConfig c = LlamaConfig::from_hf_config(cfg.string());
    auto w = read_hf_weights(path).tensors;
    // A GPTQ-layout directory (ours from `mcompress export --format hf-gptq`, or AutoGPTQ's): its
    // int32-packed weights dequantized as AutoGPTQ computes them.
    if (int bits = hf_gptq_bits(cfg.string())) w = dequantize_hf_gptq(w, bits, path);
    try {
      return std::make_unique<LlamaModel>(c, w);
    } catch (const InputError& e) {  // missing / unexpected / wrong-shape tensors: name the directory
      throw InputError(with_where(e.what(), path));
    }
  }
  // GGUF llama files (llama.cpp's names and keys) have their own loader (export/gguf.h).
  if (opts.arch_file.empty() && detect_format(path) == "gguf") return load_gguf_llama(path);
  Weights w = read_weights(path);
  if (!opts.arch_file.empty())
    return std::make_unique<ClassifierModel>(read_text(opts.arch_file, "classifier"), w.tensors, opts.arch_file);
  auto arch_it = w.metadata.find("mcompress.arch");
  const std::string arch = arch_it == w.metadata.end() ? "" : arch_it->second;
  if (arch == "llama") {
    auto it = w.metadata.find("mcompress.llama.config");
    if (it == w.metadata.end()) fail("model", path, ": metadata says llama but has no 'mcompress.llama.config'");
    return std::make_unique<LlamaModel>(LlamaConfig::from_json(it->second, path), w.tensors);
  }
  if (arch == "classifier") {
    auto it = w.metadata.find("mcompress.arch_yaml");
    if (it == w.metadata.end()) fail("model", path, ": metadata says classifier but has no 'mcompress.arch_yaml'");
    return std::make_unique<ClassifierModel>(it->second, w.tensors, path + " (embedded architecture)");
  }
  if (!arch.empty()) fail("model", path, ": unknown mcompress.arch '", arch, "' (known: llama, classifier)");
  if (w.format == "llama2c") return std::make_unique<LlamaModel>(llama2c_model_config(w, path), w.tensors);
  const fs::path beside = fs::path(path).parent_path() / "config.json";
  if (w.format == "safetensors" && fs::exists(beside))
    return std::make_unique<LlamaModel>(LlamaConfig::from_hf_config(beside.string()), w.tensors);
  fail("model", path, ": cannot tell which model this ", w.format,
       " checkpoint holds: pass --arch ARCH.yaml for a classifier, or give a llama2.c checkpoint, a Hugging "
       "Face directory or a checkpoint saved by mcompress");
}

// Rotated checkpoints: the online Hadamards kRotationMetadataKey lists (quant/rotate.h).
// W8A8 checkpoints: kActivationMetadataKey lists the layers whose inputs are quantized; those whose
// packed weight is int8 symmetric per channel also get their codes for the int8 kernel.
void apply_activation_metadata(Model& model, const std::string& dir_or_file) {
  std::string path = dir_or_file;
  if (fs::is_directory(path)) {  // an mcompress output directory: its model.safetensors (as build_model reads it)
    const fs::path ours = fs::path(path) / "model.safetensors";
    if (fs::exists(fs::path(path) / "config.json") || !fs::exists(ours)) return;
    path = ours.string();
  }
  auto reader = open_checkpoint(path);
  const auto meta = reader->metadata();
  if (auto rot = meta.find(kRotationMetadataKey); rot != meta.end()) apply_rotation_metadata(model, rot->second, path);
  auto it = meta.find(kActivationMetadataKey);
  if (it == meta.end()) return;
  nlohmann::json j, packed;
  try {
    j = nlohmann::json::parse(it->second);
    auto pit = meta.find(kPackedMetadataKey);
    if (pit != meta.end()) packed = nlohmann::json::parse(pit->second).value("tensors", nlohmann::json::object());
    for (const auto& [name, desc] : j.at("layers").items()) {
      const LayerInfo& l = model.layer(name);
      if (desc.contains("format"))
        model.set_input_quant(name, parse_act_quant(desc.at("format").get<std::string>()));
      else
        model.set_input_quant(name, desc.at("bits").get<int>());
      if (!packed.contains(l.weight)) continue;
      const auto& d = packed.at(l.weight);
      if (d.value("bits", 0) == 8 && d.value("symmetric", false) && d.value("group_size", -2) == 0 &&
          reader->contains(l.weight + ".scales")) {
        at::Tensor scales = to_torch(reader->load(l.weight + ".scales")).to(at::kFloat);
        model.set_int8_weight(name, scales.reshape({-1}));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail("model", path, ": bad '", kActivationMetadataKey, "' metadata: ", e.what());
  }
}

// KV-cache quantization saved with the model (kKVCacheMetadataKey).
void apply_kv_cache_metadata(Model& model, const std::string& path) {
  if (fs::is_directory(path)) return;
  const auto meta = open_checkpoint(path)->metadata();
  auto it = meta.find(kKVCacheMetadataKey);
  if (it == meta.end()) return;
  try {
    const nlohmann::json j = nlohmann::json::parse(it->second);
    const std::string format = j.at("format").get<std::string>();
    const std::string rotation = j.value("rotation", "");
    if (!rotation.empty() && rotation != "hadamard")
      fail("model", path, ": KV-cache rotation '", rotation, "' is not known (expected hadamard)");
    model.set_kv_hadamard(rotation == "hadamard");
    for (const auto& [block, ks] : j.at("k_scale").items()) {
      const auto kv = ks.get<std::vector<float>>(), vv = j.at("v_scale").at(block).get<std::vector<float>>();
      model.set_kv_quant(std::stoi(block), at::tensor(kv), at::tensor(vv), format);
    }
  } catch (const nlohmann::json::exception& e) {
    fail("model", path, ": bad '", kKVCacheMetadataKey, "' metadata: ", e.what());
  } catch (const std::logic_error& e) {
    fail("model", path, ": bad '", kKVCacheMetadataKey, "' metadata: block '", e.what(), "'");
  }
}

}  // namespace

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& opts) {
  const c10::Device device = parse_device(opts.device);
  std::unique_ptr<Model> model;
  {
    KeepStoredDtype keep(opts.keep_dtype);
    model = build_model(path, opts);
  }
  apply_activation_metadata(*model, path);
  apply_kv_cache_metadata(*model, path);
  model->set_int8_kernel(opts.int8_kernel);
  if (!device.is_cpu()) model->to(device);
  return model;
}

StreamedModel load_model_streamed(const std::string& path) {
  StreamedModel s;
  struct Scope {  // the thread-local is set only while this load runs
    explicit Scope(std::unique_ptr<PackedEntryReader>* p) { unread_packed = p; }
    ~Scope() { unread_packed = nullptr; }
  } scope(&s.packed);
  KeepStoredDtype keep(true);
  s.model = build_model(path, LoadOptions{});
  apply_kv_cache_metadata(*s.model, path);
  return s;
}

void save_model(const Model& model, const std::string& path, const std::map<std::string, std::string>& extra_metadata) {
  std::vector<HostTensor> tensors;
  for (const auto& [key, t] : model.params()) tensors.push_back(from_torch(key, t));
  WriteOptions opts;
  opts.metadata = model.config_metadata();
  for (const auto& [k, v] : extra_metadata) opts.metadata[k] = v;
  write_checkpoint(path, tensors, opts);
}

}  // namespace mc
