// Structured pruning (prune/structured.h) pays off in speed: a random llama (dim 512, hidden 1376,
// 8 layers, 8 heads, 8 kv heads, vocab 512) pruned by ffn 25% + heads 25% (calibration: 16 random
// sequences of 128 tokens), forward of [4, 256] tokens timed dense vs pruned in the same process
// (one warm-up, best of `reps`: the machine is shared). Prints the parameter ratio and the speedup.
// Usage: bench_structured [ffn=0.25] [heads=0.25] [blocks=0] [reps=5] [threads=0 (all)]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "best_seconds.h"
#include "mcompress/models/llama.h"
#include "mcompress/prune/structured.h"
#include "mcompress/torch_bridge.h"

namespace {

std::unique_ptr<mc::LlamaModel> random_llama(uint64_t seed) {
  mc::LlamaConfig c;
  c.dim = 512, c.hidden_dim = 1376, c.n_layers = 8, c.n_heads = 8, c.n_kv_heads = 8;
  c.head_dim = c.dim / c.n_heads, c.vocab_size = 512, c.max_seq_len = 256;
  auto gen = at::detail::createCPUGenerator(seed);
  std::map<std::string, mc::HostTensor> w;
  auto add = [&](const std::string& role, int64_t blk, std::vector<int64_t> shape, bool norm) {
    const std::string n = mc::llama_param_name(c.names, role, blk);
    at::Tensor r = at::randn(shape, gen, at::kFloat);
    // Norms near 1; matrices scaled by 1/sqrt(fan_in) so activations stay O(1) through 8 blocks.
    at::Tensor t = norm ? 1 + 0.1 * r : r / std::sqrt(double(shape.back()));
    w[n] = mc::from_torch(n, t);
  };
  const int64_t D = c.dim, F = c.hidden_dim;
  add("embed", -1, {c.vocab_size, D}, false);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    add("attn_norm", i, {D}, true), add("ffn_norm", i, {D}, true);
    add("wq", i, {D, D}, false), add("wk", i, {D, D}, false), add("wv", i, {D, D}, false);
    add("wo", i, {D, D}, false);
    add("w1", i, {F, D}, false), add("w3", i, {F, D}, false), add("w2", i, {D, F}, false);
  }
  add("final_norm", -1, {D}, true);
  return std::make_unique<mc::LlamaModel>(c, w);
}

}  // namespace

int main(int argc, char** argv) {
  mc::StructuredOptions o;
  o.ffn = argc > 1 ? std::atof(argv[1]) : 0.25;
  o.heads = argc > 2 ? std::atof(argv[2]) : 0.25;
  o.blocks = argc > 3 ? std::atoi(argv[3]) : 0;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 5;
  const int threads = argc > 5 ? std::atoi(argv[5]) : 0;
  if (threads > 0) at::set_num_threads(threads);
  at::NoGradGuard no_grad;

  auto dense = random_llama(1);
  auto gen = at::detail::createCPUGenerator(2);
  const at::Tensor calib = at::randint(512, {16, 128}, gen, at::kLong);
  const at::Tensor x = at::randint(512, {4, 256}, gen, at::kLong);

  const auto t0 = std::chrono::steady_clock::now();
  mc::StructuredResult r = mc::prune_structured(*dense, calib, o);
  const double prune_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto pruned = mc::make_structured_model(r);

  const double td = mcbench::best_seconds(reps, [&] { dense->forward(x); });
  const double tp = mcbench::best_seconds(reps, [&] { pruned->forward(x); });
  std::printf("structured pruning: %s (%d threads)\n", mc::describe(o).c_str(), at::get_num_threads());
  for (const auto& [k, v] : r.settings)
    if (k != "block influence") std::printf("  %-24s %s\n", k.c_str(), v.c_str());
  std::printf("prune time            %.2f s (16 x 128 calibration tokens)\n", prune_s);
  std::printf("params                %lld -> %lld  ratio %.3f\n", (long long)r.params_before,
              (long long)r.params_after, double(r.params_after) / double(r.params_before));
  std::printf("forward [4, 256]      dense %.1f ms, pruned %.1f ms (best of %d)\n", 1e3 * td, 1e3 * tp, reps);
  std::printf("time ratio            %.3f  speedup %.2fx\n", tp / td, td / tp);
  return 0;
}
