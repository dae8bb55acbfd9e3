// Merging a PEFT LoRA adapter into a loaded model (lora.h).
#include "mcompress/lora.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace fs = std::filesystem;

int64_t apply_lora_adapter(Model& model, const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  const std::string st_path = (fs::path(dir) / "adapter_model.safetensors").string();
  std::ifstream cf(cfg_path);
  if (!cf) fail("lora", cfg_path, ": cannot read the adapter's config (expected PEFT's adapter_config.json)");
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(cf);
  } catch (const std::exception& e) {
    fail("lora", cfg_path, ": not JSON (", e.what(), ")");
  }
  if (cfg.value("peft_type", std::string("LORA")) != "LORA")
    fail("lora", cfg_path, ": peft_type '", cfg.value("peft_type", std::string()), "', expected LORA");
  for (const char* k : {"use_dora", "use_rslora"})
    if (cfg.contains(k) && cfg[k].is_boolean() && cfg[k].get<bool>())
      fail("lora", cfg_path, ": ", k, " adapters are not supported (plain LoRA only)");
  if (cfg.value("bias", std::string("none")) != "none")
    fail("lora", cfg_path, ": bias '", cfg.value("bias", std::string()), "' is not supported (expected none)");
  if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<int64_t>() < 1)
    fail("lora", cfg_path, ": 'r' must be a positive integer");
  const double r = cfg["r"].get<double>();
  const double alpha = cfg.contains("lora_alpha") && cfg["lora_alpha"].is_number() ? cfg["lora_alpha"].get<double>() : r;
  const double scaling = alpha / r;

  if (!fs::exists(st_path)) fail("lora", st_path, ": missing (expected the adapter's tensors)");
  const auto reader = open_safetensors(st_path);
  const std::string prefix = "base_model.model.";
  std::map<std::string, std::pair<std::string, std::string>> pairs;  // layer -> (A name, B name)
  for (const auto& t : reader->tensors()) {
    std::string n = t.name;
    if (n.rfind(prefix, 0) == 0) n = n.substr(prefix.size());
    for (const char* part : {".lora_A.weight", ".lora_B.weight"}) {
      const std::string p = part;
      if (n.size() > p.size() && n.compare(n.size() - p.size(), p.size(), p) == 0) {
        auto& slot = pairs[n.substr(0, n.size() - p.size())];
        (p[6] == 'A' ? slot.first : slot.second) = t.name;
      }
    }
  }
  if (pairs.empty()) fail("lora", st_path, ": no lora_A / lora_B tensors");
  int64_t n = 0;
  for (const auto& [layer, names] : pairs) {
    if (names.first.empty() || names.second.empty())
      fail("lora", st_path, ": layer ", layer, " has ", names.first.empty() ? "lora_B without lora_A" : "lora_A without lora_B");
    const auto& layers = model.layers();
    const auto it = std::find_if(layers.begin(), layers.end(), [&](const LayerInfo& x) { return x.name == layer; });
    if (it == layers.end()) fail("lora", st_path, ": tensor ", names.first, ": the model has no layer '", layer, "'");
    const LayerInfo* l = &*it;
    const at::Tensor A = to_torch(reader->load(names.first)).to(at::kFloat);
    const at::Tensor B = to_torch(reader->load(names.second)).to(at::kFloat);
    const at::Tensor w = model.param(l->weight).to(at::kFloat);
    const int64_t out = w.size(0), in = w.numel() / std::max<int64_t>(1, out);
    if (A.dim() != 2 || B.dim() != 2 || A.size(1) != in || B.size(0) != out || B.size(1) != A.size(0))
      fail("lora", st_path, ": layer ", layer, ": lora_A ", A.sizes(), " and lora_B ", B.sizes(), " do not fit its weight [",
           out, ", ", in, "] (expected [r, ", in, "] and [", out, ", r])");
    at::Tensor delta = B.mm(A);
    if (scaling != 1.0) delta.mul_(scaling);
    model.set_param(l->weight, (w.reshape({out, in}) + delta.to(w.device())).reshape(w.sizes()));
    ++n;
  }
  return n;
}

}  // namespace mc
