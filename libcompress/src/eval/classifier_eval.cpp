// Classifier evaluation: top-1 / top-5 accuracy, label cross-entropy, and agreement with a reference.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>

#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/model.h"

namespace mc {

ClassifierEvalResult evaluate_classifier(Model& model, const LabeledData& data, const ClassifierEvalOptions& opts,
                                         Model* reference) {
  if (model.is_language_model()) fail("eval", "model is a language model: labeled examples need a classifier");
  if (reference && reference->is_language_model()) fail("eval", "reference model is a language model");
  if (opts.batch_size < 1) fail("eval", "batch size ", opts.batch_size, " must be >= 1");
  const int64_t per = shape_numel(data.example_shape);
  const int64_t n = opts.max_examples > 0 ? std::min(data.count, opts.max_examples) : data.count;
  if (n <= 0) fail("eval", "no labeled examples to evaluate");
  if (int64_t(data.inputs.size()) < data.count * per || int64_t(data.labels.size()) < data.count)
    fail("eval", "labeled data holds fewer values than its count says (", data.count, " examples of ", per, ")");
  const auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard no_grad;
  const c10::Device dev = model.device();

  int64_t top1 = 0, top5 = 0, agree = 0, classes = 0;
  double nll = 0, kl = 0;
  for (int64_t b0 = 0; b0 < n; b0 += opts.batch_size) {
    const int64_t nb = std::min(opts.batch_size, n - b0);
    Shape shape{nb};
    shape.insert(shape.end(), data.example_shape.begin(), data.example_shape.end());
    at::Tensor x = at::from_blob(const_cast<float*>(data.inputs.data() + b0 * per), shape, at::kFloat).to(dev);
    at::Tensor y = at::from_blob(const_cast<int64_t*>(data.labels.data() + b0), {nb}, at::kLong).to(dev);
    at::Tensor logits = model.forward(x).to(at::kFloat);
    if (logits.dim() != 2 || logits.size(0) != nb)
      fail("eval", "classifier output has shape ", logits.sizes(), ", expected [", nb, ", classes]");
    classes = logits.size(1);
    const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
    if (lo < 0 || hi >= classes) fail("eval", "label ", lo < 0 ? lo : hi, " is outside the model's ", classes, " classes");
    at::Tensor logp = at::log_softmax(logits, -1);
    at::Tensor pred = logits.argmax(-1);
    top1 += (pred == y).sum().item<int64_t>();
    at::Tensor top = std::get<1>(logits.topk(std::min<int64_t>(5, classes), -1));
    top5 += (top == y.unsqueeze(1)).any(1).sum().item<int64_t>();
    nll -= logp.gather(1, y.unsqueeze(1)).to(at::kDouble).sum().item<double>();
    if (reference) {
      at::Tensor ref = at::log_softmax(reference->forward(x).to(at::kFloat), -1);
      if (!ref.sizes().equals(logp.sizes())) fail("eval", "reference output shape differs from the model's");
      kl += (ref.exp() * (ref - logp)).sum(-1).to(at::kDouble).sum().item<double>();
      agree += (ref.argmax(-1) == pred).sum().item<int64_t>();
    }
  }
  ClassifierEvalResult r;
  r.examples = n;
  r.classes = classes;
  r.top1 = double(top1) / double(n);
  r.top5 = double(top5) / double(n);
  r.mean_nll = nll / double(n);
  if (reference) r.has_reference = true, r.mean_kl = kl / double(n), r.top1_agreement = double(agree) / double(n);
  r.protocol = str("top-1/top-5 accuracy over ", n, " labeled examples (argmax of the logits)");
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

void to_json(nlohmann::json& j, const ClassifierEvalResult& r) {
  j = nlohmann::json{{"protocol", r.protocol}, {"examples", r.examples}, {"classes", r.classes},
                     {"top1", r.top1},         {"top5", r.top5},         {"mean_nll", r.mean_nll},
                     {"seconds", r.seconds}};
  if (r.has_reference) j["mean_kl"] = r.mean_kl, j["top1_agreement"] = r.top1_agreement;
}

}  // namespace mc
