// Classifiers (MLP / CNN) described by a small architecture YAML:
//
//   input: {shape: [784], scale: 1.0}        # optional mean/std: x * scale, then (x - mean) / std
//   layers:
//     - {type: linear, name: fc1, in: 784, out: 500}        # bias: true by default
//     - {type: relu}
//     - {type: conv2d, name: c1, in: 1, out: 8, kernel: 3, stride: 1, padding: 1}
//     - {type: batchnorm, name: bn1, features: 8, eps: 1e-5}  # name.weight/bias/running_mean/running_var
//     - {type: maxpool, kernel: 2}            # avgpool too; stride defaults to kernel
//     - {type: flatten}                       # also gelu, silu, tanh, sigmoid, dropout (identity at eval)
//
// Layer names must match the checkpoint's keys (name.weight, name.bias). One block per linear/conv layer
// (with the activations, pools and norms after it); the input transform and anything before the first
// weight layer is embed(); head() is the identity. The last linear layer is marked is_classifier.
#pragma once
#include <map>
#include <string>

#include "mcompress/model.h"
#include "mcompress/tensor.h"

namespace mc {

class ClassifierModel : public Model {
 public:
  // `where` names the YAML's origin in error messages.
  ClassifierModel(const std::string& yaml_text, const std::map<std::string, HostTensor>& weights,
                  const std::string& where);

  std::string arch() const override { return "classifier"; }
  bool is_language_model() const override { return false; }
  const Shape& input_shape() const { return input_shape_; }
  int64_t num_classes() const { return num_classes_; }
  const std::string& yaml() const { return yaml_; }  // the architecture YAML as given

  at::Tensor forward(const at::Tensor& input) override;
  at::Tensor embed(const at::Tensor& input) override;
  at::Tensor run_block(int k, const at::Tensor& hidden) override;
  at::Tensor head(const at::Tensor& hidden) override { return hidden; }
  std::map<std::string, std::string> config_metadata() const override;

 private:
  enum class Op { Linear, Conv2d, BatchNorm, Relu, Gelu, Silu, Tanh, Sigmoid, MaxPool, AvgPool, Flatten, Identity };
  struct Step {
    Op op = Op::Identity;
    std::string type;
    int64_t layer = -1;  // index into layers_ for weight-bearing steps
    int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
    double eps = 1e-5;
  };
  at::Tensor apply(const Step& s, const at::Tensor& x);
  at::Tensor conv(const LayerInfo& layer, const Step& s, const at::Tensor& x);

  std::string yaml_;
  Shape input_shape_;
  double scale_ = 1.0, mean_ = 0.0, std_ = 1.0;
  int64_t num_classes_ = 0;
  std::vector<Step> pre_;                  // run by embed()
  std::vector<std::vector<Step>> blocks_;  // run by run_block(k)
};

}  // namespace mc
