// make_synthetic_llama: writes a random llama-family checkpoint that `mcompress` loads (inspect, eval,
// quantize), streaming one tensor at a time so the whole model is never held in memory (models larger
// than RAM can be written). Optionally writes random calibration tokens as a flat uint16 token file
// (`.u16`: little-endian uint16 ids, read by `--calib/--eval FILE.u16` as one document, no tokenizer
// needed).
//
//   make_synthetic_llama --blocks 8 --dim 1024 --hidden 2816 --vocab 512 --seed 0 -o out.safetensors
//                        [--heads 16 --kv-heads 16 --seq-len 512 --untied]
//                        [--outliers 4 --outlier-scale 8] [--tokens calib.u16 --num-tokens 65536]
//
// File: safetensors (u64 LE header length, JSON header padded to 8 bytes with spaces, data), F32
// tensors named as llama2.c's model.py, metadata as LlamaModel::config_metadata() writes it
// (mcompress.arch = llama, mcompress.llama.config = LlamaConfig::json(), and the llama2.c keys).
//
// Values (seeded splitmix64 normals; each tensor has its own stream derived from the seed and its
// name, so the values do not depend on the block count or the write order):
//   linear W [out, in]   N(0, 1/in); wo and w2 further scaled by 1/sqrt(2 * blocks) (GPT-2 style, so the
//                        residual stream does not grow with depth)
//   embedding [V, D]     N(0, 1/D) (tied classifier logits of order 1)
//   norms                1
//   outliers             `--outliers K` input channels of every linear layer have their weight column
//                        scaled by `--outlier-scale S`: for layers reading the residual stream (wq, wk, wv,
//                        w1, w3 and an untied classifier) the same K channels, which are also scaled by S
//                        in the embedding, so the activations carry outliers too (the Hessian's diagonal
//                        is uneven and GPTQ differs from RTN); for wo and w2, K channels of their own.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "mcompress/atomic_file.h"
#include "mcompress/error.h"
#include "mcompress/models/llama.h"
#include "mcompress/rng.h"

namespace {

struct Options {
  int64_t blocks = 8, dim = 1024, hidden = 2816, vocab = 512, heads = 16, kv_heads = 16, seq_len = 512;
  uint64_t seed = 0;
  bool untied = false;
  int64_t outliers = 4;
  double outlier_scale = 8.0;
  std::string out, tokens;
  int64_t num_tokens = 65536;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "make_synthetic_llama: %s\n"
               "usage: make_synthetic_llama --blocks N [--dim 1024] [--hidden 2816] [--vocab 512] [--heads 16]\n"
               "       [--kv-heads 16] [--seq-len 512] [--seed 0] [--untied] [--outliers 4] [--outlier-scale 8]\n"
               "       -o OUT.safetensors [--tokens CALIB.u16 [--num-tokens 65536]]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    auto num = [&]() -> int64_t {
      const std::string v = next();
      char* end = nullptr;
      const long long x = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end) usage((a + " needs an integer, got '" + v + "'").c_str());
      return x;
    };
    if (a == "--blocks") o.blocks = num();
    else if (a == "--dim") o.dim = num();
    else if (a == "--hidden") o.hidden = num();
    else if (a == "--vocab") o.vocab = num();
    else if (a == "--heads") o.heads = num();
    else if (a == "--kv-heads") o.kv_heads = num();
    else if (a == "--seq-len") o.seq_len = num();
    else if (a == "--seed") o.seed = static_cast<uint64_t>(num());
    else if (a == "--untied") o.untied = true;
    else if (a == "--outliers") o.outliers = num();
    else if (a == "--outlier-scale") o.outlier_scale = std::atof(next().c_str());
    else if (a == "-o" || a == "--out") o.out = next();
    else if (a == "--tokens") o.tokens = next();
    else if (a == "--num-tokens") o.num_tokens = num();
    else if (a == "-h" || a == "--help") usage("help");
    else usage(("unknown option " + a).c_str());
  }
  if (o.out.empty()) usage("-o OUT.safetensors is required");
  if (o.blocks < 1 || o.dim < 2 || o.hidden < 1 || o.vocab < 2 || o.heads < 1 || o.kv_heads < 1 || o.seq_len < 1)
    usage("sizes must be positive");
  if (o.dim % o.heads) usage("--heads must divide --dim");
  if (o.outliers < 0 || o.outliers > std::min(o.dim, o.hidden)) usage("--outliers out of range");
  if (!o.tokens.empty() && (o.vocab > 65536 || o.num_tokens < 2)) usage("a u16 token file needs vocab <= 65536");
  return o;
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Normal pairs from one splitmix64 stream (Box-Muller, both outputs used).
struct NormalStream {
  mc::SplitMix64 rng;
  bool have = false;
  double spare = 0;
  float next() {
    if (have) return have = false, static_cast<float>(spare);
    const double u1 = rng.uniform() + 1e-300, u2 = rng.uniform();
    const double r = std::sqrt(-2.0 * std::log(u1)), t = 6.283185307179586 * u2;
    spare = r * std::sin(t), have = true;
    return static_cast<float>(r * std::cos(t));
  }
};

// K distinct channels in [0, n), seeded.
std::vector<int64_t> pick_channels(int64_t k, int64_t n, uint64_t seed) {
  mc::SplitMix64 r{seed};
  std::set<int64_t> s;
  while (static_cast<int64_t>(s.size()) < k) s.insert(static_cast<int64_t>(r.below(static_cast<uint64_t>(n))));
  return {s.begin(), s.end()};
}

struct TensorPlan {
  std::string name;
  int64_t rows = 0, cols = 0;  // 1-D tensors: rows = 1, shape [cols]
  bool one_d = false;
  enum Fill { Normal, Ones } fill = Normal;
  float stddev = 0;
  std::vector<int64_t> outlier_cols;  // columns scaled by outlier_scale
  uint64_t bytes() const { return static_cast<uint64_t>(rows * cols) * 4; }
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    mc::LlamaConfig c;
    c.dim = o.dim, c.hidden_dim = o.hidden, c.n_layers = o.blocks, c.n_heads = o.heads, c.n_kv_heads = o.kv_heads;
    c.head_dim = o.dim / o.heads, c.vocab_size = o.vocab, c.max_seq_len = o.seq_len;
    c.names = mc::LlamaNames::Llama2c, c.rope = mc::RopeLayout::Interleaved, c.tied = !o.untied;
    c.validate();
    const auto N = c.names;
    const int64_t D = c.dim, F = c.hidden_dim, V = c.vocab_size, QD = c.n_heads * c.head_dim,
                  KVD = c.n_kv_heads * c.head_dim;
    const uint64_t seed_mix = mc::SplitMix64{o.seed ^ 0x5eedull}.next();
    const std::vector<int64_t> resid_outliers = pick_channels(o.outliers, D, seed_mix ^ fnv1a("residual"));
    const float out_scale = 1.0f / std::sqrt(2.0f * static_cast<float>(o.blocks));

    // The plan, in execution order (the file's data order).
    std::vector<TensorPlan> plan;
    auto lin = [&](const std::string& role, int64_t blk, int64_t out, int64_t in, float extra) {
      TensorPlan p;
      p.name = mc::llama_param_name(N, role, blk);
      p.rows = out, p.cols = in, p.stddev = extra / std::sqrt(static_cast<float>(in));
      p.outlier_cols = in == D ? resid_outliers : pick_channels(o.outliers, in, seed_mix ^ fnv1a(p.name));
      plan.push_back(p);
    };
    auto norm = [&](const std::string& role, int64_t blk) {
      TensorPlan p;
      p.name = mc::llama_param_name(N, role, blk);
      p.rows = 1, p.cols = D, p.one_d = true, p.fill = TensorPlan::Ones;
      plan.push_back(p);
    };
    {
      TensorPlan e;
      e.name = mc::llama_param_name(N, "embed");
      e.rows = V, e.cols = D, e.stddev = 1.0f / std::sqrt(static_cast<float>(D)), e.outlier_cols = resid_outliers;
      plan.push_back(e);
    }
    for (int64_t b = 0; b < o.blocks; ++b) {
      norm("attn_norm", b);
      lin("wq", b, QD, D, 1.0f), lin("wk", b, KVD, D, 1.0f), lin("wv", b, KVD, D, 1.0f);
      lin("wo", b, D, QD, out_scale);
      norm("ffn_norm", b);
      lin("w1", b, F, D, 1.0f), lin("w3", b, F, D, 1.0f);
      lin("w2", b, D, F, out_scale);
    }
    norm("final_norm", -1);
    if (o.untied) lin("output", -1, V, D, 1.0f);

    // Metadata: what LlamaModel::config_metadata() writes for a llama2.c-named model.
    std::map<std::string, std::string> meta = {{"mcompress.arch", "llama"}, {"mcompress.llama.config", c.json()}};
    meta["dim"] = std::to_string(c.dim), meta["hidden_dim"] = std::to_string(c.hidden_dim);
    meta["n_layers"] = std::to_string(c.n_layers), meta["n_heads"] = std::to_string(c.n_heads);
    meta["n_kv_heads"] = std::to_string(c.n_kv_heads), meta["vocab_size"] = std::to_string(c.vocab_size);
    meta["seq_len"] = std::to_string(c.max_seq_len), meta["shared_classifier"] = c.tied ? "1" : "0";
    meta["mcompress.synthetic"] = "make_synthetic_llama seed " + std::to_string(o.seed) + ", " +
                                  std::to_string(o.outliers) + " outlier channels x" + std::to_string(o.outlier_scale);

    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    h["__metadata__"] = meta;
    uint64_t off = 0;
    for (const auto& p : plan) {
      std::vector<int64_t> shape = p.one_d ? std::vector<int64_t>{p.cols} : std::vector<int64_t>{p.rows, p.cols};
      h[p.name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {off, off + p.bytes()}}};
      off += p.bytes();
    }
    std::string text = h.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keeps every F32 tensor 4-byte aligned in an mmap

    mc::AtomicFile file(o.out, "make_synthetic_llama");
    file.write_le<uint64_t>(text.size());
    file.write(text.data(), text.size());
    constexpr int64_t kChunkElems = 1 << 20;  // 4 MiB of floats at a time
    std::vector<float> buf;
    for (const auto& p : plan) {
      NormalStream ns{mc::SplitMix64{seed_mix ^ fnv1a(p.name)}};
      std::vector<float> col_scale(static_cast<size_t>(p.cols), 1.0f);
      for (int64_t ch : p.outlier_cols) col_scale[static_cast<size_t>(ch)] = static_cast<float>(o.outlier_scale);
      const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkElems / p.cols);
      for (int64_t r0 = 0; r0 < p.rows; r0 += rows_per_chunk) {
        const int64_t nr = std::min(rows_per_chunk, p.rows - r0);
        buf.resize(static_cast<size_t>(nr * p.cols));
        for (int64_t r = 0; r < nr; ++r) {
          float* row = buf.data() + r * p.cols;
          for (int64_t j = 0; j < p.cols; ++j)
            row[j] = p.fill == TensorPlan::Ones ? 1.0f : ns.next() * p.stddev * col_scale[static_cast<size_t>(j)];
        }
        file.write(buf.data(), buf.size() * sizeof(float));
      }
    }
    file.commit();
    std::printf("make_synthetic_llama: %s: %lld blocks, dim %lld, hidden %lld, heads %lld/%lld, vocab %lld, "
                "%zu tensors, %.1f MiB\n",
                o.out.c_str(), static_cast<long long>(o.blocks), static_cast<long long>(D),
                static_cast<long long>(F), static_cast<long long>(c.n_heads), static_cast<long long>(c.n_kv_heads),
                static_cast<long long>(V), plan.size(), double(off + 8 + text.size()) / (1 << 20));

    if (!o.tokens.empty()) {
      mc::AtomicFile tf(o.tokens, "make_synthetic_llama");
      mc::SplitMix64 r{seed_mix ^ fnv1a("tokens")};
      std::vector<uint16_t> ids(static_cast<size_t>(o.num_tokens));
      for (auto& t : ids) t = static_cast<uint16_t>(r.below(static_cast<uint64_t>(V)));
      tf.write(ids.data(), ids.size() * sizeof(uint16_t));
      tf.commit();
      std::printf("make_synthetic_llama: %s: %lld uniform random token ids (uint16 LE, .u16 token file)\n",
                  o.tokens.c_str(), static_cast<long long>(o.num_tokens));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_synthetic_llama: %s\n", e.what());
    return 2;
  }
  return 0;
}
