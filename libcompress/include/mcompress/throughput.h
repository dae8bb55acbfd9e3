// Work estimates for the long passes (evaluation, calibration): what a token costs a model's forward,
// and this machine's matmul speed on the model's own layer shapes, so a run can say up front how long
// it will take and afterwards how close to the machine's speed it ran.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace mc {

class Model;

struct TokenCost {
  double linear_flops = 0;        // 2 x in x out over every linear layer (classifier included)
  double block_linear_flops = 0;  // the same over the blocks' layers only
  double attn_flops_per_pos = 0;  // times the window length: q.k and p.v over all heads, full L x L
  double bytes = 0;               // activations a pass holds per token
  std::vector<std::pair<int64_t, int64_t>> block_shapes;  // (in, out) of block 0's linear layers
};

TokenCost token_cost(const Model& model, int64_t window);

// GFLOP/s of at::linear (in bf16 when `bf16`) on `shapes` with `tokens` rows, each shape at least once and
// the set repeated until ~0.3 s have passed.
double matmul_gflops(const std::vector<std::pair<int64_t, int64_t>>& shapes, int64_t tokens, c10::Device dev,
                     bool bf16);

}  // namespace mc
