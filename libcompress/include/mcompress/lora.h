// LoRA adapters in PEFT's layout (adapter_model.safetensors + adapter_config.json), as `quantize --eora`
// writes them and PEFT / vLLM read them: y = W x + (lora_alpha / r) B (A x), lora_A [r, in], lora_B [out, r],
// tensors named "base_model.model.<layer>.lora_A.weight".
#pragma once
#include <cstdint>
#include <string>

namespace mc {

class Model;

// Adds (lora_alpha / r) B A to the weight of every layer the adapter in `dir` names (the model then
// computes with the adapter merged, in float32). Returns the number of layers changed. InputError naming
// the file and tensor for: a missing file, a layer the model does not have, an A without its B, shapes
// that do not fit the layer, or options this merge does not implement (use_dora, use_rslora, bias).
int64_t apply_lora_adapter(Model& model, const std::string& dir);

}  // namespace mc
