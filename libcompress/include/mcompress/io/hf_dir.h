// A Hugging Face model directory read as one checkpoint: config.json beside model.safetensors, or the
// shards model-0000i-of-0000n.safetensors listed by model.safetensors.index.json. Each shard is an
// ordinary safetensors reader (mmap, views); this reader lists their tensors shard by shard (shards
// in name order, tensors in file order) and loads a tensor from the shard holding it.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {

struct HfShard {
  std::string file;     // file name inside the directory
  uint64_t file_bytes;  // size on disk (header included)
  uint64_t tensor_bytes;
  size_t tensors;
};

// The fields of config.json a reader of the directory wants to see first. Absent keys stay unset
// (0 / empty / -1); `head_dim_derived` says head_dim was computed as hidden_size / num_attention_heads.
// Multimodal configs (Gemma 3) keep the language model's fields under "text_config": those are read.
struct HfConfigSummary {
  std::string architecture, model_type, torch_dtype, rope_scaling_type;
  int64_t hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t intermediate_size = 0, vocab_size = 0, max_position_embeddings = 0;
  int tie_word_embeddings = -1;  // -1 absent, 0 false, 1 true
  double rope_theta = 0;
  bool head_dim_derived = false, kv_heads_derived = false;
};

class HfDirReader final : public CheckpointReader {
 public:
  std::string format() const override { return "hf-safetensors"; }
  HostTensor load(const std::string& name) const override;

  const std::vector<HfShard>& shards() const { return shards_; }
  const std::string& shard_of(const std::string& name) const;  // file name of the shard holding it
  bool sharded() const { return sharded_; }
  // config.json parsed (null when the directory has none), and its summary.
  const nlohmann::json& config() const { return config_; }
  const HfConfigSummary& config_summary() const { return summary_; }
  // Tensors a shard holds that index.json does not list (loaders differ on them: kept, reported).
  const std::vector<std::string>& unlisted() const { return unlisted_; }

 private:
  friend std::unique_ptr<HfDirReader> open_hf_dir(const std::string& dir);
  explicit HfDirReader(std::string dir) : CheckpointReader(std::move(dir)) {}
  std::vector<HfShard> shards_;
  std::vector<std::unique_ptr<CheckpointReader>> readers_;  // one per shard
  std::vector<size_t> shard_index_;                         // per tensor (infos_ order)
  nlohmann::json config_;
  HfConfigSummary summary_;
  std::vector<std::string> unlisted_;
  bool sharded_ = false;
};

// True when `path` is a directory holding model.safetensors or model.safetensors.index.json.
bool is_hf_dir(const std::string& path);
// Opens the directory. InputError (one line naming the file) for: no weights file, index.json that is not
// a {"weight_map": {tensor: shard}} object, a shard outside the directory or missing, a listed tensor its
// shard does not hold, a tensor in two shards, config.json that is not a JSON object or whose summary
// fields have the wrong type.
std::unique_ptr<HfDirReader> open_hf_dir(const std::string& dir);
// The summary of a parsed config.json (`path` names it in errors).
HfConfigSummary summarize_hf_config(const nlohmann::json& config, const std::string& path);

}  // namespace mc
