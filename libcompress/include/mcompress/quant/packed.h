// Packed quantized checkpoints in safetensors: the integer codes really packed (int4 two per byte,
// int2/int3/int5..7 densely across bytes), fp16 scales and zero points, the quantization settings in
// the metadata. Pruned weights can be stored sparse (bitmask or N:M positions, quant/sparse.h). The
// layout is documented in docs/packed-format.md.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/quant/sparse.h"

namespace mc {

// Metadata key holding the JSON description of the packed tensors, and its "format" value.
inline constexpr const char* kPackedMetadataKey = "mcompress.quantization";
inline constexpr const char* kPackedFormat = "mcompress-packed-v1";

// Bytes of one packed row of `cols` codes: ceil(cols * bits / 8).
int64_t packed_row_bytes(int64_t cols, int bits);
// Packs `bits`-bit codes (uint8 tensor [rows, cols] or [cols], values < 2^bits; bits 2..8) into
// bytes, little-endian bit order, each row padded to whole bytes: code k of a row occupies bits
// [k*bits, (k+1)*bits) of the row's bytes read as one little-endian number (int4: code 0 in the low
// nibble of byte 0, code 1 in its high nibble). Throws InputError for a code that does not fit.
// unpack is the inverse and returns uint8 [rows, cols].
std::vector<uint8_t> pack_codes(const at::Tensor& codes, int bits);
// The same into caller-owned memory of rows * packed_row_bytes(cols, bits) bytes (a reused staging
// buffer: no allocation or first-touch page faults per call).
void pack_codes_into(const at::Tensor& codes, int bits, uint8_t* dst);
at::Tensor unpack_codes(const uint8_t* packed, int64_t rows, int64_t cols, int bits);

// Writes `dense` tensors as they are and each entry of `quantized` (keyed by the weight's checkpoint
// name) in the packed layout, atomically: "<key>.qweight" U8 [out, packed_row_bytes(in, bits)],
// "<key>.scales" F16 [out, n_groups], for asymmetric grids "<key>.zeros" U8 [out, packed_row_bytes(n_groups,
// bits)], or F16 [out, n_groups] with "zero_dtype": "F16" when a zero is fractional (hqq.h); `metadata` plus
// kPackedMetadataKey (replacing a caller's entry of that name). Scales must be fp16 values, symmetric zeros
// 2^(bits-1), others integers in 0..2^bits-1 or fp16 values (rtn_quantize, hqq_quantize): anything else throws
// Error rather than write a file that dequantizes differently. Each entry of `sparse` is written as add_sparse does.
// Without sparse entries the file is byte for byte what this function wrote before they existed.
void write_packed_checkpoint(const std::string& path, const std::map<std::string, at::Tensor>& dense,
                             const std::map<std::string, QuantResult>& quantized,
                             const std::map<std::string, std::string>& metadata,
                             const std::map<std::string, SparseEntry>& sparse = {});
// The same written piece by piece (a model quantized block by block): each add packs its tensors and
// spools them to disk at once (SafetensorsStreamWriter), keeping only the description; finish()
// writes the file atomically. Adding the same tensors in the order write_packed_checkpoint uses
// (dense by name, then quantized by key, then sparse by key) gives the same bytes.
class PackedCheckpointWriter {
 public:
  explicit PackedCheckpointWriter(std::string path);
  ~PackedCheckpointWriter();
  void add_dense(const std::string& name, const at::Tensor& t);
  void add_quantized(const std::string& key, const QuantResult& q);
  // A pruned weight (float [out, in] or a conv kernel [out, ...] flattened to [out, in], pruned entries
  // exactly 0; its non-zeros are the kept entries) in a sparse layout (quant/sparse.h): with `quant`
  // (the codes and grid of the whole [out, in] matrix, checked as add_quantized checks them) the
  // kept entries' codes, whose codes must dequantize to 0 at every pruned place (Error otherwise);
  // without, the kept values rounded to float16. Reading the file gives quant->dequantize(), or the
  // float16-rounded weight, exactly. InputError for a layout the weight does not follow (a group with
  // more than m - n non-zeros, m not dividing in) or values beyond float16.
  void add_sparse(const std::string& key, const at::Tensor& weight, const SparseLayout& layout,
                  const QuantResult* quant);
  void finish(const std::map<std::string, std::string>& metadata);

 private:
  struct Impl;
  std::string path_;
  std::unique_ptr<Impl> impl_;
};

// True when the file carries kPackedMetadataKey.
bool is_packed_checkpoint(const CheckpointReader& reader);
// Every parameter of a packed checkpoint by its original name, packed weights dequantized to F32
// ((code - zero) * scale, exactly QuantResult::dequantize() of what was written), sparse entries
// made dense again (their stored entries in place, 0 elsewhere; float16 values widened), in file order.
// Throws InputError naming the file and tensor for a malformed description or missing parts.
std::vector<HostTensor> read_packed_checkpoint(const CheckpointReader& reader);

// One packed entry as stored, not dequantized (recovery fine-tuning on the fixed grid: quant/fake_quant.h).
struct PackedEntryParts {
  std::optional<QuantResult> quant;    // spec, codes (0 at unstored places), scales, zeros, g_idx, weight_shape
                                       // (empty when [out, in]); empty: a sparse entry of float16 values
  std::optional<SparseLayout> sparse;  // empty: dense
  at::Tensor mask;                     // sparse: bool [out, in], true = stored; else undefined
  at::Tensor values;                   // float16 values: float32 [out, in], 0 where not stored; else undefined
  std::vector<int64_t> weight_shape;   // the parameter's shape: [out, in] or the conv kernel's
};
// Every packed entry of a packed checkpoint by key, checked as read_packed_checkpoint checks it
// (InputError naming the file and tensor).
std::map<std::string, PackedEntryParts> read_packed_entries(const CheckpointReader& reader);

}  // namespace mc
