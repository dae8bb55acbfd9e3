// Gemma 2 / Gemma 3 configs: Hugging Face config.json in and out, and the Gemma fields of our checkpoint
// metadata (LlamaConfig::json). Internal to libcompress.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "mcompress/models/llama.h"

namespace mc {

// A Gemma2ForCausalLM / Gemma3ForCausalLM config.json's text (read from `path`) as a validated LlamaConfig;
// nullopt for other architectures. Gemma3ForConditionalGeneration (vision) and bad keys: InputError naming
// `path` and the key.
std::optional<LlamaConfig> gemma_config_from_hf_text(const std::string& config_json, const std::string& path);
// The Gemma fields of `c` under j["gemma"] (nothing for other families), and back.
void gemma_fields_to_json(const LlamaConfig& c, nlohmann::ordered_json& j);
void gemma_fields_from_json(const nlohmann::json& j, LlamaConfig& c);

}  // namespace mc
