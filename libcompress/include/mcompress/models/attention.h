// Causal grouped-query attention, the core of LlamaModel::attention after the projections and RoPE:
// softmax(mask(softcap(q k^T * scale))) v, with query head h reading key/value head h / (H / HKV).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mc {

struct AttentionParams {
  double scale = 1.0;    // scores times it: 1 / sqrt(head_dim), or 1 / sqrt(query_pre_attn_scalar) (Gemma)
  double softcap = 0;    // Gemma 2: cap * tanh(scores / cap), before the mask; 0 = off
  int64_t window = 0;    // sliding window: query position p sees keys j with p - window < j <= p; 0 = all j <= p
};

// q [B, H, T, hd]; k, v [B, HKV, S, hd] with S >= T and H a multiple of HKV. Query row t sits at position
// S - T + t (a KV cache's earlier positions come first). Returns [B, T, H * hd], heads side by side as wo
// takes them.
//
// The reference: whole [B, HKV, H / HKV, T, S] score tensors, a bool mask, softmax. Differentiable; when
// `probs` is given it receives the attention probabilities [B, H, T, S] (part of the autograd graph).
at::Tensor causal_attention_ref(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const AttentionParams& p, at::Tensor* probs = nullptr);

// The same values for inference: per (batch row, KV group, chunk of query rows) one plain GEMM of the group's
// stacked query heads against the keys the chunk can see (causal and window limits skip the rest), an
// additive -inf bias, softmax in place and a GEMM with the values, written into the output, so no tensor
// the size of the scores is ever made. Rounds differently from the reference (its summation order differs;
// agreement ~1e-6 relative). Falls back to the reference while grad mode is on or an input requires grad, and
// for inputs other than float32 on the CPU.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionParams& p);

}  // namespace mc
