// GGUF v3 export for llama.cpp: block encoders for the ggml quantized types, the exact mapping of our
// quantizer results onto them, a GGUF file writer, and the export of a llama model (and its loading back).
//
//   auto choices = export_gguf("out/model.safetensors", "model.gguf", {"q4_k_m", "tok512.bin", "stories"});
//
// Types (GgufExportOptions::type):
//   f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k   every 2-D weight in that type
//   q2_k, q3_k, iq4_nl, iq4_xs   the low-bit types: every 2-D weight in that type, but token_embd.weight and
//            output.weight (or the tied embedding) in Q6_K as llama.cpp's Q2_K/Q3_K/IQ4 mixes keep the output
//            (llama.cpp: "output.weight -> Q6_K" unless the type is already above it); fitted to our values with
//            each column's importance from an imatrix (GgufExportOptions::imatrix) as the weight of its squared
//            error, plain squared error without one (gguf_lowbit.cpp)
//   mxfp4    ggml MXFP4 (type 39; llama ftype 38): each block of 32 is quant/fp_formats.h's mxfp4 group (OCP MX
//            exponent floor(log2 amax) - 2 as the E8M0 byte, E2M1 codes rounded to nearest even, saturating)
//            with element j in the low nibble of byte j and element j + 16 in its high nibble; ggml's
//            kvalues_mxfp4 are the E2M1 values doubled and GGML_E8M0_TO_FP32_HALF halves the scale, so a block
//            decodes to exactly fp_quantize(mxfp4).dequantize() of its group
//   q4_k_m   llama.cpp's Q4_K_M mix, simplified from llama_tensor_get_type: Q4_K everywhere, but Q6_K for
//            output.weight (token_embd.weight when the classifier is tied: llama.cpp then treats it as the
//            output), and for attn_v / ffn_down of the layers where use_more_bits(i, n) holds
//            (i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2)
//   auto     each weight as our quantizer stored it: sym int4 g32 -> Q4_0, sym int8 g32 -> Q8_0, asym int4
//            g32 -> Q4_1, int5 g32 -> Q5_0 / Q5_1 (all exact; Q4_1/Q5_1 only where -zero*scale is a float16
//            value, see encode_from_quant), other grids -> Q4_K (2..4 bits), Q5_K (5), Q6_K (6), Q8_0 (7, 8)
//            fitted to our dequantized values; weights left dense -> F16
// Norms are always F32. A weight whose row length the type's block does not divide falls back as llama.cpp
// does: Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and to F16 when 32 does not
// divide it either (auto: to F16
// when that holds the values exactly, else F32, so the export stays lossless). GgufTensorChoice::note says so.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mcompress/dtype.h"
#include "mcompress/io/gguf.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/tensor.h"

namespace mc {

class Model;
struct LlamaConfig;

// ---- block encoders -------------------------------------------------------------------------------
// Encodes n values (a multiple of the block size) of the ggml block type t into dtype_nbytes(t, n) bytes.
// Q8_0 and Q4_0: bit-exact with ggml's quantize_row_*_ref (quantize_blocks_ref). Q4_1, Q5_0, Q5_1: the
// algorithms of ggml's quantize_row_*_ref. Q4_K, Q5_K: ggml's reference (make_qkx2_quants per sub-block,
// 6-bit scales and mins), then a search over the super-block scales d/dmin keeping the one with the least
// squared error. Q6_K: ggml's reference (make_qx_quants per 16 values, int8 scales) with the same search
// over d. MXFP4: fp_quantize(mxfp4) per block (above; ggml's quantize_row_mxfp4_ref picks the same exponent). Throws InputError for other types or a bad n. Non-finite inputs are refused.
void encode_blocks(DType t, const float* x, int64_t n, uint8_t* dst);
// Sum of squared errors of encode_blocks's reconstruction (for tests and the export summary).
double block_encoding_sse(DType t, const float* x, int64_t n);

// ---- exact mapping of quantizer results ------------------------------------------------------------
// Whether q maps onto t exactly (codes copied, scales stored as they are):
//   Q4_0  2..4-bit symmetric, group 32     d = scale, q = code (+ 8 - our zero point when fewer bits)
//   Q8_0  2..8-bit symmetric, group 32     d = scale, q = code - our zero point
//   Q5_0  2..5-bit symmetric, group 32     d = scale, q = code (+ 16 - our zero point when fewer bits)
//   Q4_1  2..4-bit asymmetric, group 32    d = scale, m = -zero * scale
//   Q5_1  2..5-bit asymmetric, group 32    d = scale, m = -zero * scale
// and no g_idx, in_features a multiple of 32. For Q4_1/Q5_1 the value is exact only where -zero*scale is a
// float16 value (it is rounded to one otherwise): `inexact_blocks` (optional) counts the blocks where it was not.
bool maps_exactly(const QuantResult& q, DType t);
// Encodes q's weight [out, in] as t: the exact mapping above where maps_exactly holds, else encode_blocks of
// q.dequantize() row by row (K-quants: the super-block scales fitted to our dequantized values).
// `importance` (optional, float [in]): each column's weight in the fit of the types that take one (Q2_K, Q3_K,
// IQ4_NL, IQ4_XS); the exact mappings do not need it.
std::vector<uint8_t> encode_from_quant(const QuantResult& q, DType t, int64_t* inexact_blocks = nullptr,
                                       const float* importance = nullptr);
// Encodes a float32 matrix [rows, cols] (row-major, contiguous) as t (F32, F16 or a block type), rows in parallel.
// K-quants: `steps` (optional, [rows, cols / 32], 0 = unknown) is the grid step of each run of 32 values when
// they are known to be integer multiples of it (our quantizer's scale): each sub-block then also tries the
// exact fit on that grid (see gguf_kquant.cpp).
// `importance` (optional, [cols], >= 0): Q2_K, Q3_K, IQ4_NL and IQ4_XS minimise Σ importance[c] (w - ŵ)² per
// block instead of the plain squared error (llama.cpp's quant_weights from an imatrix); other types ignore it.
std::vector<uint8_t> encode_matrix(DType t, const float* w, int64_t rows, int64_t cols, const float* steps = nullptr,
                                   const float* importance = nullptr);
// Encodes n values as t with per-value weights qw (may be null): encode_blocks with importance.
void encode_blocks_weighted(DType t, const float* x, int64_t n, const float* qw, uint8_t* dst);

// ---- GGUF writer ------------------------------------------------------------------------------------
// Key/value constructors (GgufValue as the reader returns it).
GgufValue gguf_u32(uint32_t v);
GgufValue gguf_i32(int32_t v);
GgufValue gguf_u64(uint64_t v);
GgufValue gguf_f32(float v);
GgufValue gguf_bool(bool v);
GgufValue gguf_string(std::string v);
GgufValue gguf_scalar(GgufType t, double v);  // any numeric type or BOOL
GgufValue gguf_string_array(std::vector<std::string> v);
GgufValue gguf_f32_array(std::vector<double> v);
GgufValue gguf_int_array(GgufType elem, std::vector<int64_t> v);  // U8 .. I64, BOOL
using GgufKV = std::pair<std::string, GgufValue>;

// A tensor to write: name, type, row-major shape (GGUF stores it reversed: ne[0] = shape.back()), and the
// producer of its dtype_nbytes(dtype, numel) bytes, called once, in order, while the data section is
// written (so a model is encoded one tensor at a time).
struct GgufTensorSource {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::function<std::vector<uint8_t>()> bytes;
};
// Writes a GGUF v3 file atomically: header, key/values (general.alignment is added as u32 32 unless given),
// tensor infos, data, every tensor's data at a multiple of the alignment. Throws InputError for a duplicate
// key or tensor name, a type GGUF cannot hold, a row length the block does not divide, or a producer
// returning the wrong number of bytes.
void write_gguf(const std::string& path, const std::vector<GgufKV>& kv, const std::vector<GgufTensorSource>& tensors);
void write_gguf(const std::string& path, const std::vector<GgufKV>& kv, const std::vector<HostTensor>& tensors);
// ggml's type id of a DType (F32 0, F16 1, Q4_0 2, ...); InputError for BOOL/U8.
uint32_t ggml_type_id(DType t);

// ---- llama export -----------------------------------------------------------------------------------
struct GgufExportOptions {
  std::string type = "auto";  // see the top of this file
  std::string tokenizer;      // tokenizer.bin (llama2.c) or tokenizer.json; empty: looked for beside the model
  std::string name;           // general.name; empty: the model file's stem
  std::string imatrix;        // llama.cpp imatrix file (GGUF or legacy .dat): importance for the low-bit types
};
struct GgufTensorChoice {
  std::string name;   // GGUF tensor name (blk.0.attn_q.weight)
  std::string type;   // ggml type written (Q4_0, F32, ...)
  std::string note;   // "exact from int4 sym g32", "fallback Q4_K -> Q5_0: row 64 not a multiple of 256", ...
  int64_t params = 0;
  uint64_t bytes = 0;
};
// Exports the llama-family model at model_path (anything load_model reads; packed checkpoints give their
// quantizer results) to a GGUF file llama.cpp runs, with llama.cpp's architecture, <arch>.* keys and tensors:
//   llama  Llama 2/3.x, Mistral, TinyLlama, SmolLM (q/k rows permuted to interleaved RoPE as llama.cpp's
//          converter does; optional attn_{q,k,v,output}.bias; llama3 rope scaling as rope_freqs.weight,
//          F32 [head_dim/2], llama3_rope_freq_factors)
//   qwen2  q/k/v biases without an output bias (Qwen2/2.5), rows as stored (NEOX RoPE)
//   qwen3  attn_q_norm / attn_k_norm [head_dim] (Qwen3), rows as stored (NEOX RoPE)
// key_length/value_length when head_dim != dim / heads; a sliding window caps context_length (llama.cpp
// attends to the whole context, which equals the window up to its length). Tokenizer: see gguf_vocab.h
// (pre-tokenizer, tokenizer_config.json's special ids, add_bos/add_eos, chat template).
// InputError "[gguf] ..." for a model that is not llama-family, what none of those archs can express (q/k
// norms with biases, llama3 rope scaling with qwen2/qwen3), a type name not listed above, a missing tokenizer.
std::vector<GgufTensorChoice> export_gguf(const std::string& model_path, const std::string& out_path,
                                          const GgufExportOptions& opts);
// Type names accepted by export_gguf, for help texts: "f32|f16|q8_0|...|auto".
const char* gguf_export_types();
// llama.cpp's name of each parameter export_gguf writes from a llama-family config (roles as
// llama_param_name takes them; block -1 outside the blocks), in file order. rope_freqs / rope factor
// tensors, which are made here and not read from the model, are not listed.
struct GgufWeightName {
  std::string gguf, role;
  int64_t block = -1;
};
std::vector<GgufWeightName> gguf_llama_tensor_names(const LlamaConfig& c);

// ---- llama import (used by load_model) ------------------------------------------------------------
// True when the file at path is GGUF with general.architecture llama, qwen2 or qwen3.
bool is_gguf_llama(const std::string& path);
// A LlamaModel from a GGUF llama/qwen2/qwen3 file (config from the <arch>.* keys, blk.N.* names, interleaved
// RoPE for llama and rotate-half for qwen2/qwen3, biases, q/k norms, rope_freqs.weight as rope_scaling
// "factors"; block types dequantized to float32). InputError naming the file and key for anything missing.
std::unique_ptr<Model> load_gguf_llama(const std::string& path);

}  // namespace mc
