// llama.cpp's importance matrix ("imatrix") files, read and written, and computed from calibration data.
//
// GGUF format (llama-imatrix's default since 2025): general.type = "imatrix", imatrix.datasets (string array),
// imatrix.chunk_count and imatrix.chunk_size (u32); per weight W (llama.cpp tensor name, blk.0.attn_q.weight)
// two F32 tensors: "W.in_sum2" ne [in_features, n_mat] = Σ x_j² over the input rows seen, and "W.counts"
// ne [1, n_mat] = the number of rows. n_mat > 1 only for MoE expert stacks (refused here).
// Legacy .dat: int32 n_entries; per entry int32 name length, the name, int32 ncall, int32 nval, float
// values[nval] (the mean square times ncall); then int32 last_call and int32 length + the dataset's name.
// Importance of column j = in_sum2[j] / counts (legacy: values[j] / ncall), as llama-quantize takes it.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mc {

class Model;

struct ImatrixEntry {
  std::vector<float> sum_sq;  // Σ x² per input column
  float count = 0;            // input rows (tokens) seen
  std::vector<float> importance() const;  // sum_sq / count (sum_sq itself when count is 0)
};

struct ImatrixData {
  std::map<std::string, ImatrixEntry> entries;  // by llama.cpp tensor name
  std::vector<std::string> datasets;
  int64_t chunk_count = 0, chunk_size = 0;
  std::string format;  // "gguf" or "dat" (what it was read from)
};

// Reads either format (GGUF by its magic, else legacy .dat). InputError "[imatrix] PATH: ..." naming the
// tensor or entry for anything malformed: not an imatrix GGUF, an in_sum2 without its counts, a non-F32
// tensor, expert stacks, truncated data.
ImatrixData read_imatrix(const std::string& path);
// Writes the GGUF format atomically (temp file + rename).
void write_imatrix_gguf(const std::string& path, const ImatrixData& d);

// Runs `calib` ([N, L] tokens) through the float model block by block and collects Σ x² and the row count
// of every linear layer inside the blocks (what llama-imatrix collects; the output layer is left out, as
// llama-imatrix does without --process-output), named as export_gguf names them. Llama-family models only.
ImatrixData collect_imatrix(Model& model, const at::Tensor& calib, int64_t batch = 8);

// The llama.cpp tensor name of each of a llama-family model's linear weights, by layer name.
std::map<std::string, std::string> gguf_names_by_layer(const Model& model);

// Importance of one weight from d: float [in]. InputError "[imatrix] PATH: no entry 'blk.3.ffn_down.weight'
// (layer ...)" when it is missing, or "... has N values, the weight has M input columns".
at::Tensor imatrix_importance(const ImatrixData& d, const std::string& path, const std::string& gguf_name,
                              int64_t in_features, const std::string& layer = "");

}  // namespace mc
