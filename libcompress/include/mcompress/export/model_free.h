// Model-free quantization: RTN on the weight tensors of any safetensors checkpoint, read one tensor at a
// time from the memory-mapped file(s), without a model implementation (ViT, BERT, Whisper, MoE experts
// ...). The runtime's architectures are not needed: a tensor is selected by its name, shape and dtype.
//
// Input: one .safetensors file, or a Hugging Face directory (config.json beside model.safetensors, or
// shards listed by model.safetensors.index.json: io/hf_dir.h).
// Selection (model_free_plan):
//   candidates  2-D floating-point (F64/F32/F16/BF16) tensors whose name ends in ".weight"
//   --targets   given: the candidates one of the patterns matches; else every candidate but the default
//               exclusions (model_free_default_exclusions: embeddings, norms, lm_head, MoE routers)
//   --ignore    removed from that
// A pattern is a glob (fnmatch, "*" crosses dots; a plain name matches itself) or "re:REGEX" (the whole
// name), matched against the tensor name ("a.b.weight") and its module name ("a.b"), as llm-compressor's
// targets/ignore match module names. Every --targets pattern must match a candidate.
// Output (format "compressed-tensors"): a directory in compressed-tensors' "pack-quantized" format as vLLM
// loads it. For a selected tensor M.weight: M.weight_packed int32 [out, ceil(in / (32/bits))]
// (pack_int32_words: unsigned codes = signed + 2^(bits-1)), M.weight_scale float16 [out, groups],
// M.weight_zero_point int32 [ceil(out / (32/bits)), groups] (asymmetric only, packed along the output
// dimension), M.weight_shape int64 [2]; every other tensor unchanged (same dtype, same bytes). One
// output shard per input shard with the same file name (model.safetensors for a single file) and, for a
// sharded input, model.safetensors.index.json. config.json is the input's with quantization_config
// added (compressed_tensors_qconfig: targets Linear, ignore = lm_head and the module of every 2-D
// float .weight tensor left unquantized). Format "mcompress": one model.safetensors in our packed
// layout (quant/packed.h), config.json copied unchanged.
// The grid is rtn_quantize's (quant/rtn.h): compressed-tensors' convention (symmetric scale =
// 2 max|w| / (2^bits - 1), codes -2^(bits-1) .. 2^(bits-1)-1; asymmetric scale = (max - min) / (2^bits - 1)
// over a range holding 0, zero point round(-min / scale)), with scales rounded up to float16 values.
// Memory: one tensor's bytes (mapped pages are released after each tensor), its float32 copy, its codes
// and packing; output tensors are spooled to disk (SafetensorsStreamWriter).
// Atomic: everything is written into <out>.tmp-<pid>/ and renamed to <out> at the end; a failure leaves
// no output directory. Errors: InputError "[model-free] <file>: <tensor>: <what was expected>".
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/quant/fp_formats.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/tensor.h"

namespace mc {

class CheckpointReader;

struct ModelFreeOptions {
  QuantSpec spec;
  std::vector<std::string> targets, ignore;  // empty targets: the default rule
  bool embeddings = false;  // lift the default exclusion of embeddings
  bool classifier = false;  // ... and of lm_head
  std::string format = "compressed-tensors";  // or "mcompress"
  // A floating-point format instead of `spec` (quant/fp_formats.h), written as compressed-tensors
  // float-quantized / mxfp4-pack-quantized / nvfp4-pack-quantized (export/fp_ct.h); compressed-tensors only.
  std::optional<FpScheme> fp;
};

// The default exclusions as patterns (what --help states): embeddings, lm_head, norms, MoE routers.
std::vector<std::string> model_free_default_exclusions(bool embeddings, bool classifier);

struct ModelFreeTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t nbytes = 0;
  bool quantize = false;
  bool candidate = false;  // a 2-D floating-point .weight (quantized, or left in float by the selection)
  std::string why;  // "2-D float .weight", "excluded: embedding", "ignored: re:...", "1-D", "I64"
};

// The tensors of the checkpoint in file order and what happens to each. InputError for a --targets
// pattern that matches no candidate, an invalid regular expression, or an empty selection.
std::vector<ModelFreeTensor> model_free_plan(const CheckpointReader& reader, const ModelFreeOptions& o);

// One quantized tensor's figures.
struct ModelFreeRow {
  std::string name;
  Shape shape;
  DType dtype = DType::F32;  // the input's
  uint64_t bytes_in = 0, bytes_out = 0;  // the tensor as stored before; its parts after
  double rel_error = 0;      // ||W - Q(W)||_F / ||W||_F (0 for an all-zero W)
  double max_abs_error = 0;  // max |W - Q(W)|
  double seconds = 0;
};

struct ModelFreeResult {
  std::vector<ModelFreeRow> rows;  // quantized tensors, in file order
  int64_t copied = 0;              // tensors copied unchanged
  uint64_t copied_bytes = 0;
  uint64_t size_in = 0, size_out = 0;  // bytes of the input's / output's safetensors files
  std::vector<std::string> notes;      // what was written and what a loader should know
  std::vector<std::string> warnings;
  std::vector<std::string> files;      // the output's files (after the rename)
};

struct ModelFreeCallbacks {
  // After each tensor (quantized: row set; copied: row null) with its index from 1 and the count.
  // seconds: the time the tensor took (read, quantize, write).
  std::function<void(const ModelFreeTensor& t, const ModelFreeRow* row, int64_t i, int64_t n, double seconds)> progress;
  // Before the rename, with the temp directory: a report written there is committed with the rest.
  std::function<void(const std::string& tmp_dir, const ModelFreeResult& r)> before_commit;
};

// Checks the input and options (InputError before anything is written), then writes `out`.
ModelFreeResult quantize_model_free(const std::string& input, const std::string& out, const ModelFreeOptions& o,
                                    const ModelFreeCallbacks& cb = {});

// Opens a model-free input: a .safetensors file or a Hugging Face directory (InputError naming the
// path and what was expected otherwise).
std::unique_ptr<CheckpointReader> open_model_free_input(const std::string& input);

}  // namespace mc
