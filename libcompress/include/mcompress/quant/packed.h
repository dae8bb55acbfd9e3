// Packed quantized checkpoints in safetensors: the integer codes really packed (int4 two per byte,
// int2/int3/int5..7 densely across bytes), fp16 scales and zero points, the quantization settings in
// the metadata. The layout is documented in docs/packed-format.md.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"
#include "mcompress/quant/rtn.h"

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
// "<key>.scales" F16 [out, n_groups], and for asymmetric grids "<key>.zeros" U8
// [out, packed_row_bytes(n_groups, bits)]; `metadata` plus kPackedMetadataKey (which replaces a
// caller's entry of that name). Scales must be float16 values and symmetric zeros 2^(bits-1), as
// rtn_quantize makes them: anything else throws Error rather than writing a file that would
// dequantize differently.
void write_packed_checkpoint(const std::string& path, const std::map<std::string, at::Tensor>& dense,
                             const std::map<std::string, QuantResult>& quantized,
                             const std::map<std::string, std::string>& metadata);
// The same written piece by piece (a model quantized block by block): each add packs its tensors and
// spools them to disk at once (SafetensorsStreamWriter), keeping only the description; finish()
// writes the file atomically. Adding the same tensors in the order write_packed_checkpoint uses
// (dense by name, then quantized by key) gives the same bytes.
class PackedCheckpointWriter {
 public:
  explicit PackedCheckpointWriter(std::string path);
  ~PackedCheckpointWriter();
  void add_dense(const std::string& name, const at::Tensor& t);
  void add_quantized(const std::string& key, const QuantResult& q);
  void finish(const std::map<std::string, std::string>& metadata);

 private:
  struct Impl;
  std::string path_;
  std::unique_ptr<Impl> impl_;
};

// True when the file carries kPackedMetadataKey.
bool is_packed_checkpoint(const CheckpointReader& reader);
// Every parameter of a packed checkpoint by its original name, packed weights dequantized to F32
// ((code - zero) * scale, exactly QuantResult::dequantize() of what was written), in file order.
// Throws InputError naming the file and tensor for a malformed description or missing parts.
std::vector<HostTensor> read_packed_checkpoint(const CheckpointReader& reader);

}  // namespace mc
