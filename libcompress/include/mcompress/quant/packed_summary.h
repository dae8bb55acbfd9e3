// What a packed checkpoint (docs/packed-format.md) stores per weight, read from its header only: the
// parts (KEY.qweight, .scales, .zeros, .g_idx, .mask, .values, .indices) grouped under the original
// weight name with a scheme label ("int4 sym g32", "2:4 sparse + int4 sym g16", "bitmask sparse fp16"),
// their bytes and the stored bits per weight. Nothing is dequantized; no tensor data is read.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {

struct PackedWeightSummary {
  std::string key;                 // the original weight's name
  std::string scheme;              // "int4 sym g32", "int8 asym per-channel act-order", "2:4 sparse fp16", ...
  std::vector<int64_t> shape;      // [out, in] as quantized
  std::vector<int64_t> weight_shape;  // the parameter's shape (a conv kernel's), = shape otherwise
  std::vector<std::string> parts;  // tensor names present in the file, in the order above
  uint64_t bytes = 0;              // sum of the parts' bytes
  int64_t numel = 0;               // out * in
  double bits_per_weight = 0;      // 8 * bytes / numel
  int bits = 0;                    // 0: float16 values (sparse fp16)
  int group_size = 0;
  bool symmetric = true, g_idx = false;
  std::string sparse;              // "", "bitmask" or "N:M"
};

// Every entry of kPackedMetadataKey, in the metadata's key order. InputError naming the file for a
// description that is not JSON, an unknown format, or an entry without a [out, in] shape; an entry
// none of whose parts are in the file is reported with bytes 0 (inspect shows it, reading refuses it).
std::vector<PackedWeightSummary> summarize_packed(const CheckpointReader& reader);

// The tensor names of the file that belong to a packed entry (its parts).
bool is_packed_part(const std::vector<PackedWeightSummary>& entries, const std::string& tensor);

}  // namespace mc
