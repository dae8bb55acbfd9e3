// Exports of a quantized llama model for other runtimes:
//   hf-gptq             a Hugging Face directory in the AutoGPTQ / Transformers GPTQ layout
//                       (checkpoint_format "gptq": qweight, qzeros holding zero - 1, scales, g_idx)
//   compressed-tensors  a Hugging Face directory in compressed-tensors' "pack-quantized" format
//                       (vLLM / llm-compressor: weight_packed, weight_scale, weight_zero_point, weight_shape)
//   llama2c-q8          a llama2.c version-2 file (export.py version2_export, read by runq.c)
// The layouts, and the sources they were checked against, are in docs/hf-export.md.
//
// Input: a model written by `mcompress quantize` (packed safetensors; the codes and grids are carried
// over exactly), or for llama2c-q8 also any float llama model load_model reads. The Hugging Face
// formats refuse a float model (quantize it first) and every grid they cannot hold exactly.
// Outputs are written atomically: a directory is built beside the target and renamed into place.
// Errors: InputError "[export] <file>: <tensor>: <what was expected>".
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mcompress/quant/fp_formats.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/tensor.h"

namespace mc {

struct ExportSummary {
  std::vector<std::string> notes;  // what the export changed or could not carry (one line each)
  std::vector<std::string> files;  // the files written (paths)
  uint64_t bytes = 0;              // their total size
};

ExportSummary export_hf_gptq(const std::string& model_path, const std::string& out_dir);
ExportSummary export_compressed_tensors(const std::string& model_path, const std::string& out_dir);
ExportSummary export_llama2c_q8(const std::string& model_path, const std::string& out_file);
// A float llama model as a compressed-tensors directory with the blocks' linear layers whose checkpoint name
// `selected` accepts in a floating-point format (export/fp_ct.h: float-quantized fp8, mxfp4-pack-quantized,
// nvfp4-pack-quantized; mxfp8 is refused), the rest float16. Widths checked before anything is written.
ExportSummary export_compressed_tensors_fp(const std::string& model_path, const std::string& out_dir, FpScheme s,
                                           const std::function<bool(const std::string&)>& selected);

// Reading a GPTQ export back (for load_model on a Hugging Face directory whose config.json has
// quantization_config.quant_method "gptq", checkpoint_format "gptq" or absent): every
// <module>.qweight / .qzeros / .scales / .g_idx group of `tensors` becomes <module>.weight, float32
// [out, in] = (q - (z + 1)) * scale[g_idx[c]] as AutoGPTQ computes it (in float32, so an export of ours
// gives back exactly our dequantized matrix); every other tensor is kept. bits: 2, 3, 4 or 8.
// InputError naming `where` and the module for missing parts or inconsistent shapes.
std::map<std::string, HostTensor> dequantize_hf_gptq(const std::map<std::string, HostTensor>& tensors, int bits,
                                                     const std::string& where);
// The "bits" of a config.json's GPTQ quantization_config; 0 when it has none (InputError for another
// quant_method or checkpoint_format than this module reads).
int hf_gptq_bits(const std::string& config_json_path);

// ---- layout pieces (pure functions, tested alone) -------------------------------------------------

// Packs uint8 codes [rows, cols] (values < 2^bits, bits 1..8) into int32 [rows, ceil(cols*bits/32)]:
// each row is one little-endian bit stream, code k at bits [k*bits, (k+1)*bits), words in order, the
// last word zero-padded. For bits 2/4/8 this is 32/bits codes per word, the first in the lowest bits
// (AutoGPTQ, compressed-tensors pack_to_int32); for 3 bits 32 codes fill 3 words, codes 10 and 21
// straddling words (AutoGPTQ's 3-bit packing). unpack_int32_rows is the inverse (uint8 [rows, cols]).
at::Tensor pack_int32_rows(const at::Tensor& codes, int bits);
at::Tensor unpack_int32_rows(const at::Tensor& packed, int64_t cols, int bits);
// compressed-tensors' pack_to_int32 for any width 1..8: each int32 word holds 32/bits whole codes (the
// first in the lowest bits), so for 3, 5, 6 and 7 bits the top 32 % bits bits of every word stay zero and
// no code straddles two words; int32 [rows, ceil(cols / (32/bits))]. For 1, 2, 4 and 8 bits it is
// pack_int32_rows (the same bits). unpack_int32_words is the inverse (uint8 [rows, cols]).
at::Tensor pack_int32_words(const at::Tensor& codes, int bits);
at::Tensor unpack_int32_words(const at::Tensor& packed, int64_t cols, int bits);

// Rows of q/k projections between RoPE layouts: out[r] = in[perm[r]] (int64 [n_heads * head_dim]).
// to_hf: Meta/llama2.c interleaved pairs -> Hugging Face rotate-half, the permutation of
// convert_llama_weights_to_hf.py (w.view(n_heads, head_dim/2, 2, in).transpose(1, 2).reshape);
// !to_hf: its inverse.
at::Tensor rope_row_permutation(int64_t n_heads, int64_t head_dim, bool to_hf);
// The same output-row permutation applied to a quantized matrix: codes, scales and zeros rows move
// together (g_idx is per input column and stays), so dequantize() is permuted exactly.
QuantResult permute_quant_rows(const QuantResult& q, const at::Tensor& perm);

// A quantized matrix grown to [out_to, in_to] (>= its shape) without changing what it computes on the
// original part: new rows and columns hold the zero-point code (dequantize to exactly 0); new groups
// (when in_to needs more) get scale 1 and the symmetric zero point; new columns take group c / group
// size (or the last group per channel). Used to pad Hugging Face intermediate sizes to multiples of 32.
QuantResult pad_quant(const QuantResult& q, int64_t out_to, int64_t in_to);

// llama2.c Q8_0 group size: 64 halved until it divides both dim and hidden_dim (runq.c's matmul and
// activation quantization need whole groups in every row). stories260K (64, 172): 4.
int64_t llama2c_q8_group_size(int64_t dim, int64_t hidden_dim);

// export.py quantize_q80 on w (float [numel], numel a multiple of group_size): per group
// scale = max|w| / 127 (float32), q = round(w / scale) half to even (0 where scale is 0).
// Returns int8 q [numel] and float32 scales [numel / group_size].
std::pair<at::Tensor, at::Tensor> quantize_q80(const at::Tensor& w, int64_t group_size);

}  // namespace mc
