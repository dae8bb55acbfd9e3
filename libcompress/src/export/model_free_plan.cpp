// Model-free quantization: which tensors of a checkpoint are quantized (export/model_free.h), and
// opening the input.
#include <filesystem>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/export/model_free.h"
#include "mcompress/io/hf_dir.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/ptq.h"

namespace mc {

namespace {

namespace fs = std::filesystem;
constexpr const char* kComp = "model-free";
constexpr const char* kSuffix = ".weight";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string module_of(const std::string& name) { return name.substr(0, name.size() - std::string(kSuffix).size()); }

// A pattern matches a tensor when it matches its name or its module's name (llm-compressor matches modules).
bool hits(const std::vector<std::string>& patterns, const std::string& name) {
  return matches_any(patterns, name) || (ends_with(name, kSuffix) && matches_any(patterns, module_of(name)));
}

struct Exclusion {
  const char* pattern;
  const char* what;
};

// Module-name patterns of the tensors the default rule leaves in float (what --help states).
const Exclusion kEmbeddings[] = {{"re:.*embed.*", "embedding"}, {"re:(.*\\.)?(wte|wpe)", "embedding"}};
const Exclusion kClassifier[] = {{"re:(.*\\.)?lm_head", "lm_head"}};
// Norms are 1-D in every model we know; the pattern guards the odd 2-D one. MoE routers (Mixtral's
// block_sparse_moe.gate, Qwen-MoE's mlp.gate and shared_expert_gate) are small, and vLLM builds them
// unquantized whatever the config says.
const Exclusion kAlways[] = {{"re:.*[Nn]orm.*", "norm"}, {"re:.*[._]gate", "MoE router"}};

std::vector<Exclusion> exclusions(bool embeddings, bool classifier) {
  std::vector<Exclusion> v;
  if (!embeddings) v.insert(v.end(), std::begin(kEmbeddings), std::end(kEmbeddings));
  if (!classifier) v.insert(v.end(), std::begin(kClassifier), std::end(kClassifier));
  v.insert(v.end(), std::begin(kAlways), std::end(kAlways));
  return v;
}

// Why a tensor is not a candidate ("" when it is one).
std::string not_candidate(const TensorInfo& ti) {
  if (!ends_with(ti.name, kSuffix)) return "not a .weight";
  if (!is_float(ti.dtype)) return str(dtype_name(ti.dtype), ", not floating point");
  if (ti.shape.size() != 2) return str(ti.shape.size(), "-D");
  if (ti.shape[0] == 0 || ti.shape[1] == 0) return "empty";
  return "";
}

}  // namespace

std::vector<std::string> model_free_default_exclusions(bool embeddings, bool classifier) {
  std::vector<std::string> v;
  for (const Exclusion& e : exclusions(embeddings, classifier)) v.push_back(e.pattern);
  return v;
}

std::vector<ModelFreeTensor> model_free_plan(const CheckpointReader& reader, const ModelFreeOptions& o) {
  const std::vector<Exclusion> excl = exclusions(o.embeddings, o.classifier);
  std::vector<int64_t> target_hits(o.targets.size(), 0);
  std::vector<ModelFreeTensor> plan;
  std::string first_candidate;
  int64_t candidates = 0, selected = 0;
  for (const TensorInfo& ti : reader.tensors()) {
    ModelFreeTensor t{ti.name, ti.dtype, ti.shape, ti.nbytes, false, false, not_candidate(ti)};
    t.candidate = t.why.empty();
    if (t.candidate) {
      ++candidates;
      if (first_candidate.empty()) first_candidate = ti.name;
      if (!o.targets.empty()) {
        for (size_t k = 0; k < o.targets.size(); ++k)
          if (hits({o.targets[k]}, ti.name)) ++target_hits[k], t.quantize = true;
        if (!t.quantize) t.why = "not in --targets";
      } else {
        t.quantize = true;
        for (const Exclusion& e : excl)
          if (hits({e.pattern}, ti.name)) {
            t.quantize = false, t.why = str("default exclusion: ", e.what);
            break;
          }
      }
      if (t.quantize && hits(o.ignore, ti.name)) t.quantize = false, t.why = "--ignore";
      if (t.quantize) t.why = "", ++selected;
    }
    plan.push_back(std::move(t));
  }
  for (size_t k = 0; k < o.targets.size(); ++k)
    if (target_hits[k] == 0)
      fail(kComp, reader.path(), ": --targets pattern '", o.targets[k], "' matches no 2-D floating-point .weight tensor (",
           candidates, " candidates", candidates ? str(", e.g. '", first_candidate, "'") : std::string(), ")");
  if (selected == 0)
    fail(kComp, reader.path(), ": no tensor to quantize (", candidates,
         " 2-D floating-point .weight tensors, all excluded or ignored; --targets selects explicitly)");
  return plan;
}

std::unique_ptr<CheckpointReader> open_model_free_input(const std::string& input) {
  std::error_code ec;
  if (!fs::exists(input, ec)) fail<FileError>(kComp, input, ": no such file or directory");
  if (fs::is_directory(input, ec)) {
    if (!is_hf_dir(input))
      fail(kComp, input, ": expected a Hugging Face directory holding model.safetensors or "
           "model.safetensors.index.json (with its shards)");
    return open_hf_dir(input);
  }
  const std::string fmt = detect_format(input);
  // A damaged .safetensors (a header length beyond the file): the reader's own message says what is wrong.
  if (fmt.empty() && fs::path(input).extension() == ".safetensors") return open_safetensors(input);
  if (fmt != "safetensors")
    fail(kComp, input, ": expected a safetensors file (8-byte little-endian header length, then a JSON header)",
         fmt.empty() ? std::string(", found no known format") : str(", found ", fmt));
  return open_safetensors(input);
}

}  // namespace mc
