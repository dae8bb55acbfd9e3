// Layer-sequential calibration: calibration inputs run through the model block by block, and block k
// sees the outputs of the already compressed blocks 0..k-1 (as the GPTQ and SparseGPT papers do), so
// only one block's activations are live at a time. Each target layer's statistics (Hessian
// 2/n Σ x xᵀ, mean |x|, max |x|, Σ x²) are handed to a compressor that rewrites its weights.
//
// True-sequential order (opt-in): inside a block the target layers are split into groups that read
// the same input tensor (llama: q,k,v -> o -> gate,up -> down), found by watching which tensor each
// layer receives; group i's statistics are collected with groups 0..i-1 already compressed.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace mc {

class Model;
struct LayerInfo;
class HessianAccumulator;

// Statistics of the layers being compressed, by layer name.
using BlockStats = std::map<std::string, HessianAccumulator*>;
// Compresses `layers` (target layers of block `block`, in execution order) given their input
// statistics. It may replace any parameter (Model::set_param, Model::apply_scale_group): the block's
// outputs are computed afterwards, from what it leaves.
using BlockCompressor =
    std::function<void(int block, const std::vector<const LayerInfo*>& layers, const BlockStats& stats)>;

struct SequentialOptions {
  int64_t batch = 8;             // calibration sequences per forward pass
  bool fp64 = false;             // accumulate Hessians in float64
  bool true_sequential = false;  // compress a block's layers group by group (see above)
  // Called once a block's outputs for the next block are computed, with those outputs (free what the
  // block no longer needs; a journal saves them).
  std::function<void(int block, const std::vector<at::Tensor>& hidden)> after_block;
  // Called just before each compress call with the block's inputs (one tensor per batch: what its
  // statistics pass ran on), for compressors that run the block themselves (AutoRound).
  std::function<void(int block, const std::vector<at::Tensor>& inputs)> before_compress;
  // Called before the block's output pass (its compressed weights on the inputs, for the next block).
  std::function<void(int block)> before_output;
  // Progress of the block forward passes: at its start (0 done) and after each batch, the pass ("statistics": the block with its
  // hooks, feeding the Hessians; "output": the compressed block, for the next one) and the tokens
  // (rows: sequences x positions) done of all of them.
  std::function<void(int block, int blocks, const char* pass, int64_t done, int64_t total)> pass_progress;
  // Resume (journal.h): start at this block with its input hidden states (one tensor per batch, as
  // after_block received them) instead of embedding the inputs and running blocks 0..start_block-1.
  int start_block = 0;
  std::vector<at::Tensor> start_hidden;
};

// inputs: the calibration set as the model's forward takes it ([N, L] int64 tokens, or [N, ...]
// examples). Layers named in `targets` that lie inside blocks are compressed; others are left alone.
// Throws InputError when a target layer receives no input (never reached) or a non-finite one.
void compress_blocks(Model& model, const at::Tensor& inputs, const std::set<std::string>& targets,
                     const BlockCompressor& compress, const SequentialOptions& opts = {});

}  // namespace mc
