// Frozen quantization grids for recovery fine-tuning: train a quantized and/or pruned model while its
// grid (scales, zero points, group map) and sparsity mask stay those of its packed checkpoint, then
// pack it again on the same grid.
//
//   auto grids = read_frozen_grids(*reader);              // every packed weight of the checkpoint
//   w_eff = fake_quant_ste(param, grids.at(name));         // in the forward pass; gradients reach param
//   ...                                                     // train
//   add_like(writer, param, grids.at(name));               // re-pack as the entry was stored
//
// The projection is the code arithmetic of rtn.h with the stored grid: inv = 1/scale (float32),
// code = clamp(round(w * inv + zero), 0, 2^bits - 1) (the sum rounded once, half to even), value
// (code - zero) * scale. A weight already on the grid (a dequantized packed weight) maps to itself bit
// for bit, and its codes are the stored ones. Pruned places are 0 (code = zero point) whatever w holds.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/quant/rtn.h"
#include "mcompress/quant/sparse.h"

namespace mc {

class CheckpointReader;
class PackedCheckpointWriter;

// The fixed grid and/or sparsity mask of one packed weight of a checkpoint.
struct FrozenGrid {
  std::string key;                     // checkpoint name of the weight
  std::optional<QuantResult> quant;    // spec, scales [out, G], zeros [out, G], g_idx, weight_shape, and the
                                       // stored codes (0 where nothing is stored); empty: not quantized
                                       // (a sparse entry of float16 values)
  std::optional<SparseLayout> sparse;  // the sparse layout the weight was stored in; empty: dense
  at::Tensor mask;                     // bool [out, in], true = kept; undefined when not sparse
  std::vector<int64_t> weight_shape;   // the parameter's shape ([out, in], or a conv kernel [out, ...])
  // float32 [out, in]: each element's scale, 1/scale (the rtn.h reciprocal, kept so the forward pass
  // need not recompute it) and zero point, expanded once; undefined when not quantized.
  at::Tensor scale_full, inv_full, zero_full;
  // Moves mask and the expanded tensors to `device` (fake_quant_ste then runs there; `quant` stays on
  // the CPU for requantize / add_like).
  void to(const c10::Device& device);
};

// Every packed entry of a packed checkpoint (quantized and/or sparse) by key, on the CPU; an empty map
// when the file is not packed. InputError naming the file and tensor for a malformed file (the checks
// of read_packed_checkpoint).
std::map<std::string, FrozenGrid> read_frozen_grids(const CheckpointReader& reader);

// Forward: w (the parameter's shape, any floating dtype, on the device of g's tensors) masked, then
// projected onto the grid: exactly (code - zero) * scale, float32, 0 at pruned places. A sparse entry
// of float16 values has no grid: the kept values are rounded to float16 (what add_like stores); a
// grid with only a mask (no quant, no sparse layout: the zeros of a dense pruned file) keeps w's values.
// Backward: straight through, the gradient times the mask. Computed as q - (w_m.detach() - w_m), whose
// second term is exactly +0, so the value is the projection bit for bit (-0 included) for finite w.
// Result: w's shape, w's dtype promoted with float32.
at::Tensor fake_quant_ste(const at::Tensor& w, const FrozenGrid& g);

// The codes of w on the fixed grid: g.quant with its codes replaced (uint8 [out, in], on the CPU);
// pruned places get the zero-point code, so they dequantize to exactly 0. Error when g is not quantized.
QuantResult requantize(const at::Tensor& w, const FrozenGrid& g);

// Writes w into `writer` the way the entry was stored, with g's grid and mask: add_quantized (dense
// quantized), add_sparse with g's layout and requantize(w, g) (sparse quantized), or add_sparse of
// the masked values (sparse float16). The stored positions are exactly g.mask, even where the trained
// value or code is 0, so re-packing the weights read from a file gives that file's bytes back.
void add_like(PackedCheckpointWriter& writer, const at::Tensor& w, const FrozenGrid& g);

}  // namespace mc
