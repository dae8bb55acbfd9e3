// Internal: Gemma 2 / Gemma 3 as llama.cpp's gemma2 / gemma3 GGUF archs (gguf_gemma.cpp).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/export/gguf.h"
#include "mcompress/models/llama.h"
#include "mcompress/quant/rtn.h"

namespace mc::gguf_detail {

// Writes `m` (a Gemma LlamaModel read from model_path) as arch gemma2 / gemma3. `type`: f32, f16, q8_0, q4_0,
// q4_1, q5_0, q5_1, q4_k, q5_k, q6_k or auto (quantized weights: the smallest legacy type their grid maps onto
// exactly, else Q8_0; dense: F16). `quant`: the packed checkpoint's quantizer results by key.
std::vector<GgufTensorChoice> export_gguf_gemma(const LlamaModel& m, const std::map<std::string, QuantResult>& quant,
                                                const std::string& model_path, const std::string& out_path,
                                                const std::string& type, const std::string& tokenizer_path,
                                                const std::string& name);
// True for general.architecture gemma2 / gemma3; load_gguf_gemma reads such a file back as a LlamaModel.
bool is_gemma_arch(const std::string& arch);
std::unique_ptr<Model> load_gguf_gemma(const std::string& path);

}  // namespace mc::gguf_detail
