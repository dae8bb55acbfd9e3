// Causal grouped-query attention: the whole-tensor reference and the chunked inference path.
#include "mcompress/models/attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace mc {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Scores per chunk: 2^17 floats (512 KB) stay in a core's L2 (1 MB here) beside the chunk's keys and values
// (2^16 and 2^18 measured 5-15% slower on the 1B shapes of bench_attention).
constexpr int64_t kChunkScores = int64_t(1) << 17;
// Below ~2^24 multiply-adds (a decoded token against a few thousand keys) splitting costs more than it saves.
constexpr double kSerialWork = double(1 << 24);

// Where query row t (position pos0 + t) must not look at key j: j after it, or at least `window` before it.
at::Tensor masked_positions(int64_t T, int64_t S, int64_t window, c10::Device dev) {
  auto lopts = at::TensorOptions().dtype(at::kLong).device(dev);
  const int64_t pos0 = S - T;
  at::Tensor qpos = at::arange(pos0, pos0 + T, lopts).unsqueeze(1), kpos = at::arange(0, S, lopts).unsqueeze(0);
  at::Tensor masked = kpos > qpos;
  if (window > 0) masked = masked.logical_or(qpos - kpos >= window);
  return masked;  // [T, S]
}

// OpenBLAS (the pthreads build that Debian's LibTorch links) runs each sgemm on its own thread pool: called from
// two OpenMP threads at once, the calls fight over that pool (the 1B eval shape took 4 s instead of 0.2 s).
// While alive, sgemm runs on the calling thread. Looked up at run time: other BLAS libraries (MKL) lack these
// functions and keep nested calls serial by themselves.
class SerialBlas {
 public:
  SerialBlas() : prev_(get_ && set_ ? get_() : 1) {
    if (prev_ > 1) set_(1);
  }
  ~SerialBlas() {
    if (prev_ > 1) set_(prev_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  static inline void (*const set_)(int) =
      reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  static inline int (*const get_)() = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  const int prev_;
};

}  // namespace

at::Tensor causal_attention_ref(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const AttentionParams& p, at::Tensor* probs) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), HKV = k.size(1), S = k.size(2);
  // Grouped-query attention: query head h uses kv head h / (H / HKV), as llama2.c repeat_kv.
  at::Tensor qg = q.reshape({B, HKV, H / HKV, T, hd});
  at::Tensor scores = at::matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * p.scale;
  if (p.softcap > 0) scores = at::tanh(scores / p.softcap) * p.softcap;  // Gemma 2
  scores.masked_fill_(masked_positions(T, S, p.window, q.device()), kNegInf);
  at::Tensor pr = at::softmax(scores, -1);  // [B, HKV, rep, T, S]
  if (probs) *probs = pr.reshape({B, H, T, S});
  at::Tensor out = at::matmul(pr, v.unsqueeze(2));  // [B, HKV, rep, T, hd]
  return out.reshape({B, H, T, hd}).transpose(1, 2).reshape({B, T, H * hd});
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionParams& p) {
  const bool grad = at::GradMode::is_enabled() || q.requires_grad() || k.requires_grad() || v.requires_grad();
  const bool cpu_float = q.is_cpu() && q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                         v.scalar_type() == at::kFloat;
  if (grad || !cpu_float) return causal_attention_ref(q, k, v, p);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), HKV = k.size(1), S = k.size(2);
  const int64_t rep = H / HKV, pos0 = S - T;
  at::Tensor out = at::empty({B, T, H * hd}, q.options());
  if (out.numel() == 0) return out;
  // 0 where a query may look, -inf where it may not; one [T, S] table for every head and batch row.
  const at::Tensor bias = at::zeros({T, S}, q.options()).masked_fill_(masked_positions(T, S, p.window, q.device()), kNegInf);
  const int64_t tc = std::clamp<int64_t>(kChunkScores / (rep * S), 1, T), chunks = (T + tc - 1) / tc;
  // Softcap: scale / cap folded into the (small) query copy, tanh and cap on the scores.
  const double qscale = p.softcap > 0 ? p.scale / p.softcap : p.scale;
  // Chunks in parallel, each on one thread; a few decoded tokens' worth on the calling thread alone.
  const int64_t items = B * HKV * chunks;
  const bool parallel = items > 1 && double(B * H * T) * double(S * hd) > kSerialWork;
  std::optional<SerialBlas> serial_blas;
  if (parallel) serial_blas.emplace();
  at::parallel_for(0, items, parallel ? 1 : items, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (HKV * chunks), g = i / chunks % HKV, t0 = i % chunks * tc, n = std::min(tc, T - t0);
      // Keys the rows [t0, t0 + n) can see: up to the last row's position, from the first row's window on.
      const int64_t hi = pos0 + t0 + n, lo = p.window > 0 ? std::max<int64_t>(0, pos0 + t0 - p.window + 1) : 0;
      const at::Tensor qc = q[b].narrow(0, g * rep, rep).narrow(1, t0, n).mul(qscale).view({rep * n, hd});
      const at::Tensor kc = k[b][g].narrow(0, lo, hi - lo), vc = v[b][g].narrow(0, lo, hi - lo);
      at::Tensor sc = at::mm(qc, kc.t());  // [rep * n, keys]: the group's query heads stacked as rows
      if (p.softcap > 0) sc.tanh_().mul_(p.softcap);
      sc.view({rep, n, hi - lo}).add_(bias.narrow(0, t0, n).narrow(1, lo, hi - lo));
      at::_softmax_out(sc, sc, 1, false);
      const at::Tensor oc = at::mm(sc, vc).view({rep, n, hd}).transpose(0, 1);  // [n, rep, hd]
      out[b].narrow(0, t0, n).view({n, H, hd}).narrow(1, g * rep, rep).copy_(oc);
    }
  });
  return out;
}

}  // namespace mc
