// Causal grouped-query attention: the whole-tensor reference.
#include "mcompress/models/attention.h"

#include <ATen/ATen.h>

#include <limits>

namespace mc {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Where query row t (position pos0 + t) must not look at key j: j after it, or at least `window` before it.
at::Tensor masked_positions(int64_t T, int64_t S, int64_t window, c10::Device dev) {
  auto lopts = at::TensorOptions().dtype(at::kLong).device(dev);
  const int64_t pos0 = S - T;
  at::Tensor qpos = at::arange(pos0, pos0 + T, lopts).unsqueeze(1), kpos = at::arange(0, S, lopts).unsqueeze(0);
  at::Tensor masked = kpos > qpos;
  if (window > 0) masked = masked.logical_or(qpos - kpos >= window);
  return masked;  // [T, S]
}

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

}  // namespace mc
