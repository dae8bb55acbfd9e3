// Teacher-student distillation on the trainer of train.h: a student (smaller config, a structurally
// pruned teacher, or the compressed model itself) learns the teacher's outputs.
//
// Loss terms, each with its own weight (0 = off); T is the softmax temperature of the logit terms:
//   kl          forward KL(p_t^T || p_s^T) * T^2 (Hinton et al. 2015: the T^2 keeps gradient scale)
//   reverse_kl  KL(p_s^T || p_t^T) * T^2 (mode seeking, MiniLLM)
//   jsd         generalized JSD(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t +
//               (1 - beta) p_s (GKD, Agarwal et al. 2024), at temperature T, * T^2
//   ce          cross-entropy of the labels (next tokens; class labels), temperature 1
//   hidden      MSE between the student's block outputs, projected to the teacher's width by a learned
//               linear map when the widths differ, and the teacher's mapped block outputs, divided by
//               the teacher's mean square (a relative error, so one weight fits any model)
//   attention   KL(teacher || student) of the attention maps of mapped blocks, per query position,
//               per head when head counts agree, else of the head-averaged maps (MiniLM)
// The layer map pairs student blocks with teacher blocks for the hidden and attention terms.
// There is no single "alpha": every term's weight is named (libraries disagree on what alpha means).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mcompress/quant/fake_quant.h"
#include "mcompress/train.h"

namespace mc {

class Model;

struct DistillLoss {
  double kl = 1.0, reverse_kl = 0, jsd = 0, ce = 0, hidden = 0, attention = 0;
  double temperature = 2.0, jsd_beta = 0.5;
  bool uses_teacher() const { return kl > 0 || reverse_kl > 0 || jsd > 0 || hidden > 0 || attention > 0; }
  std::string describe() const;  // "kl 1 (T 2) + ce 0.5"
};
// "kl=1,ce=0.5,T=2" (also reverse_kl / rkl, jsd, beta, hidden, attention / attn); unnamed terms are 0
// when the spec names any term. InputError for unknown names, negative weights, T <= 0, beta outside
// (0, 1), or all weights 0.
DistillLoss parse_distill_loss(const std::string& spec);

// The loss terms on logits [..., V] (mean over the leading positions).
at::Tensor forward_kl(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature);
at::Tensor reverse_kl(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature);
at::Tensor generalized_jsd(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double beta,
                           double temperature);
// probs [B, H, Tq, Tk] (rows summing to 1; masked keys 0).
at::Tensor attention_kl(const at::Tensor& student_probs, const at::Tensor& teacher_probs);
// student [..., ds], teacher [..., dt], projection [dt, ds] (undefined when ds == dt).
at::Tensor hidden_mse(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& projection);

// (student block, teacher block) pairs.
using LayerMap = std::vector<std::pair<int, int>>;
// "0:1,1:3" (student:teacher); "" maps student block j to teacher block round((j+1) * nt / ns) - 1 (the
// last to the last). InputError naming a block that does not exist.
LayerMap parse_layer_map(const std::string& spec, int student_blocks, int teacher_blocks);
std::string describe(const LayerMap& m);

// Training data: a token stream (language models) or inputs [N, ...] with labels [N] (classifiers;
// label -1 = none, e.g. generated inputs only the teacher labels).
struct DistillData {
  std::vector<int32_t> tokens;
  at::Tensor inputs, labels;
  bool labeled() const { return inputs.defined(); }
};

// Classifier inputs for data-free distillation: `n` mixups x = l a + (1 - l) b of random pairs of
// `from`'s inputs, l ~ U(0, 1), labels -1. Seeded.
DistillData mixup_inputs(const DistillData& from, int64_t n, uint64_t seed);

struct DistillOptions {
  TrainOptions train;
  DistillLoss loss;
  LayerMap layer_map;                        // for hidden / attention terms
  // Recovery fine-tuning: weights (by checkpoint key) kept on their quantization grid and sparsity
  // mask: a latent float weight is trained through fake_quant_ste, the model runs its projection.
  std::map<std::string, FrozenGrid> frozen;
};

// Checks that student and teacher can be distilled: both language models with the same vocabulary,
// or classifiers with the same input shape and classes; the layer map's blocks exist; an attention
// term needs models with attention. InputError naming what differs.
void check_distill(const Model& teacher, const Model& student, const DistillOptions& o);

// Trains `student` on `train` against `teacher` (not changed). Held-out loss (the student's
// cross-entropy, nats per token or example) on `valid` when it has data. On return the student holds
// the trained weights (frozen ones on their grid and mask).
TrainResult distill(Model& teacher, Model& student, const DistillData& train, const DistillData& valid,
                    const DistillOptions& o, const ProgressFn& progress = {});

// A student from a config file (YAML or JSON), randomly initialised (seed):
//   language models: {dim, n_layers, n_heads, n_kv_heads, hidden_dim} (n_kv_heads defaults to n_heads,
//   hidden_dim to the teacher's hidden/dim ratio rounded up to a multiple of 8); vocabulary, context,
//   naming, RoPE and norms as the teacher's.
//   classifiers: an architecture YAML (models/classifier.h); weights as PyTorch's default init
//   (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), batchnorm 1/0.
std::unique_ptr<Model> student_from_config(const Model& teacher, const std::string& path, uint64_t seed);

}  // namespace mc
