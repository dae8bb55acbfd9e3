// A packed checkpoint (quant/packed.h) read one entry at a time, for models larger than memory (exports):
// the description is parsed and checked once; an entry's parts are read (views of the mapped file),
// unpacked and checked only when asked for, exactly as read_packed_entries / read_packed_checkpoint
// read them, and their pages can be handed back afterwards.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"
#include "mcompress/quant/packed.h"

namespace mc {

// What the description says about one entry, without reading it.
struct PackedEntryInfo {
  std::optional<QuantSpec> spec;      // empty: a sparse entry of float16 values
  bool g_idx = false;                 // act-order column -> group map
  bool float_zeros = false;           // fractional zero points stored as float16 (HQQ)
  bool mins = false;                  // float16 mins instead of zero points (the K-quant lattice)
  bool sparse = false;
  int64_t out = 0, in = 0;            // the [out, in] matrix of the codes
  std::vector<int64_t> weight_shape;  // as QuantResult::weight_shape: empty when the parameter is [out, in]
  Shape shape() const { return weight_shape.empty() ? Shape{out, in} : Shape(weight_shape); }
};

class PackedEntryReader {
 public:
  // InputError naming the file for a malformed description (as read_packed_entries).
  explicit PackedEntryReader(std::unique_ptr<CheckpointReader> reader);
  ~PackedEntryReader();
  PackedEntryReader(const PackedEntryReader&) = delete;
  PackedEntryReader& operator=(const PackedEntryReader&) = delete;

  const CheckpointReader& file() const;
  bool contains(const std::string& key) const;
  const PackedEntryInfo& info(const std::string& key) const;  // InputError when not an entry
  std::vector<std::string> keys() const;                      // sorted

  // Every parameter in read_packed_checkpoint's order, dense tensors as views of the file and each
  // packed entry as a placeholder that holds no data: float32 of the parameter's shape with a null data
  // pointer (a model built on them checks names and shapes; reading one throws).
  std::vector<HostTensor> parameters_unread() const;
  // One entry's parts (read_packed_entries' value for the key).
  PackedEntryParts load(const std::string& key) const;
  // One entry as read_packed_checkpoint gives it: float32 of the parameter's shape.
  at::Tensor dequantized(const std::string& key) const;
  // Hands back the pages of the entry's parts that reading it mapped in (release_mapped_pages).
  void release(const std::string& key) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mc
