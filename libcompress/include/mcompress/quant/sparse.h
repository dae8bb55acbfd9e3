// Sparse weights in the packed safetensors layout (docs/packed-format.md, "Sparse entries"): the kept
// entries of a pruned matrix and where they are, either as a bitmask (any sparsity) or as N:M
// positions (n of every m consecutive input columns zeroed, per row; "2:4" keeps 2 of every 4 with a
// 2-bit position each), the kept entries as float16 values or as packed quantization codes.
// PackedCheckpointWriter::add_sparse (quant/packed.h) writes them; read_packed_checkpoint restores the
// dense matrix. encode_sparse / decode_sparse_parts are the layout itself, as pure functions.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/quant/rtn.h"
#include "mcompress/tensor.h"

namespace mc {

class CheckpointReader;

// n = m = 0: bitmask; else N:M with n zeroed of every m input columns (2:4 -> n 2, m 4), 2 <= m <= 16,
// 1 <= n < m.
struct SparseLayout {
  int n = 0, m = 0;
  bool bitmask() const { return n == 0 && m == 0; }
  std::string describe() const;  // "bitmask", "2:4"
  // Throws InputError "[sparse] layer X: ..." for a bad n, m, or an m that does not divide in_features.
  void validate(const std::string& layer, int64_t in_features) const;
  // Bits of one stored position: max(2, ceil(log2 m)) (2:4 -> 2, 4:8 -> 3, 8:16 -> 4; 1:2 -> 2, the
  // packing's narrowest width). 0 for the bitmask.
  int index_bits() const;
};

// One sparse weight for write_packed_checkpoint.
struct SparseEntry {
  at::Tensor weight;                // float [out, in] (or a conv kernel [out, ...]), pruned entries exactly 0
  SparseLayout layout;
  std::optional<QuantResult> quant; // the codes of the whole [out, in] matrix; empty: float16 values
};

// The stored parts of one sparse weight W [out, in] (rows = out, cols = in).
//   bitmask  "<key>.mask" U8 [out, ceil(in/8)]: bit c%8 of byte c/8 (LSB first) set = column c kept;
//            the kept entries, row by row in column order, as one flat stream:
//            "<key>.values" F16 [kept], or "<key>.qweight" U8 [ceil(kept * bits / 8)] (packed codes).
//   n:m      exactly k = m - n entries kept per group of m columns (a group with fewer non-zeros keeps
//            its first zeros too; more is an InputError): "<key>.indices" U8
//            [out, packed_row_bytes(in*k/m, index_bits)], the position 0..m-1 of each kept entry in its
//            group, ascending within a group; "<key>.values" F16 [out, in*k/m] or "<key>.qweight" U8
//            [out, packed_row_bytes(in*k/m, bits)].
// Kept = non-zero in `w`. values: `w` rounded to float16 (InputError for a non-finite value or one
// beyond the float16 range); codes (uint8 [out, in], may be undefined): the codes at the kept places,
// packed with `bits` bits. `kept` returns the number of stored entries.
std::vector<HostTensor> encode_sparse(const std::string& key, const at::Tensor& w, const SparseLayout& layout,
                                      const at::Tensor& codes, int bits, int64_t* kept);

// Reads and validates the parts encode_sparse wrote (InputError naming reader.path() and the tensor:
// shapes, dtypes, mask padding bits, counts against `kept`, positions < m and ascending in a group).
// Returns mask (bool [out, in], true = stored) and stored: float32 [out, in] with the values (bits == 0)
// or uint8 [out, in] with the codes (bits > 0), 0 where nothing is stored.
struct SparseParts {
  at::Tensor mask, stored;
};
SparseParts decode_sparse_parts(const CheckpointReader& reader, const std::string& key, int64_t out, int64_t in,
                                const SparseLayout& layout, int64_t kept, int bits);

// Bytes a sparse entry occupies in the file (all its tensors, metadata not counted): `kept` entries of
// an [out, in] matrix; spec nullptr for float16 values, else the codes plus the grid's scales, zeros
// and, with g_idx, 4 bytes per column.
int64_t sparse_bytes(int64_t out, int64_t in, int64_t kept, const SparseLayout& layout, const QuantSpec* spec,
                     bool g_idx = false);
// The same for the dense packed layout (spec) or float16 (spec nullptr), for comparisons.
int64_t dense_packed_bytes(int64_t out, int64_t in, const QuantSpec* spec, bool g_idx = false);

}  // namespace mc
