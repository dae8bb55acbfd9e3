// Classifiers from an architecture YAML: forward against the same network written out with ATen ops by
// hand, conv hooks whose unfolded input reproduces the output by a matmul, key mismatches, the
// architecture embedded in saved checkpoints.
#include <ATen/ATen.h>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/models/classifier.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"

namespace {

constexpr double kTol = 1e-5;  // same float32 ops, possibly another summation order

const char* kCnn = R"(
input: {shape: [1, 8, 8], scale: 0.5}
layers:
  - {type: conv2d, name: c1, in: 1, out: 4, kernel: 3, stride: 1, padding: 1}
  - {type: batchnorm, name: bn1, features: 4}
  - relu
  - {type: maxpool, kernel: 2}
  - {type: flatten}
  - {type: dropout}
  - {type: linear, name: fc, in: 64, out: 5}
)";

std::map<std::string, mc::HostTensor> cnn_weights() {
  at::manual_seed(0);  // test-only: the library never touches the global generator
  std::map<std::string, mc::HostTensor> w;
  auto add = [&](const std::string& n, at::Tensor t) { w[n] = mc::from_torch(n, t); };
  add("c1.weight", at::randn({4, 1, 3, 3}));
  add("c1.bias", at::randn({4}));
  add("bn1.weight", at::rand({4}) + 0.5);
  add("bn1.bias", at::randn({4}));
  add("bn1.running_mean", at::randn({4}));
  add("bn1.running_var", at::rand({4}) + 0.5);
  add("bn1.num_batches_tracked", at::zeros({}, at::kLong));
  add("fc.weight", at::randn({5, 64}) * 0.1);
  add("fc.bias", at::randn({5}));
  return w;
}

at::Tensor T(const std::map<std::string, mc::HostTensor>& w, const std::string& k) { return mc::to_torch(w.at(k)); }

}  // namespace

TEST_CASE("classifier: CNN from YAML equals the hand-written ATen network", "[model]") {
  auto w = cnn_weights();
  mc::ClassifierModel m(kCnn, w, "cnn.yaml");
  CHECK(m.num_blocks() == 2);
  CHECK(m.num_classes() == 5);
  REQUIRE(m.layers().size() == 3);
  CHECK(m.layers()[0].kind == mc::LayerKind::Conv2d);
  CHECK(m.layers()[0].in_features == 9);
  CHECK(m.layers()[1].kind == mc::LayerKind::Norm);
  CHECK(m.layers()[2].is_classifier);
  at::Tensor x = at::rand({3, 64}) * 255;
  at::Tensor h = at::conv2d(x.view({3, 1, 8, 8}) * 0.5, T(w, "c1.weight"), T(w, "c1.bias"), 1, 1);
  h = (h - T(w, "bn1.running_mean").view({1, 4, 1, 1})) / at::sqrt(T(w, "bn1.running_var").view({1, 4, 1, 1}) + 1e-5) *
          T(w, "bn1.weight").view({1, 4, 1, 1}) + T(w, "bn1.bias").view({1, 4, 1, 1});
  h = at::max_pool2d(at::relu(h), 2).flatten(1);
  at::Tensor want = at::linear(h, T(w, "fc.weight"), T(w, "fc.bias"));
  CHECK((m.forward(x) - want).abs().max().item<double>() < kTol * want.abs().max().item<double>());
  at::Tensor b = m.embed(x);
  for (int k = 0; k < m.num_blocks(); ++k) b = m.run_block(k, b);
  CHECK((m.head(b) - m.forward(x)).abs().max().item<double>() == 0.0);
}

TEST_CASE("classifier: conv hook input is the unfolded patches the matmul sees", "[model]") {
  auto w = cnn_weights();
  mc::ClassifierModel m(kCnn, w, "cnn.yaml");
  bool checked = false;
  m.add_hook([&](const mc::LayerInfo& l, const at::Tensor& in, const at::Tensor& out) {
    if (l.kind != mc::LayerKind::Conv2d) return;
    REQUIRE(in.sizes() == at::IntArrayRef({2, 64, 9}));
    REQUIRE(out.sizes() == at::IntArrayRef({2, 64, 4}));
    at::Tensor y = at::matmul(in, T(w, "c1.weight").view({4, 9}).t()) + T(w, "c1.bias");
    CHECK((y - out).abs().max().item<double>() < 1e-4);
    checked = true;
  });
  m.forward(at::rand({2, 1, 8, 8}));
  CHECK(checked);
}

TEST_CASE("classifier: architecture not matching the keys lists missing and unexpected", "[model]") {
  auto w = cnn_weights();
  w.erase("fc.bias");
  w["fc2.weight"] = w.at("fc.weight");
  try {
    mc::ClassifierModel m(kCnn, w, "cnn.yaml");
    FAIL("no error");
  } catch (const mc::InputError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("missing keys: fc.bias") != std::string::npos);
    CHECK(msg.find("unexpected keys: fc2.weight") != std::string::npos);
  }
  auto w2 = cnn_weights();
  w2["fc.weight"] = mc::from_torch("fc.weight", at::zeros({5, 63}));
  CHECK_THROWS_WITH(mc::ClassifierModel(kCnn, w2, "cnn.yaml"),
                    Catch::Contains("'fc.weight' has shape [5, 63], expected [5, 64]"));
  CHECK_THROWS_AS(mc::ClassifierModel("layers: [{type: conv3d}]\ninput: {shape: [4]}", w2, "x.yaml"), mc::InputError);
  CHECK_THROWS_AS(mc::ClassifierModel("layers: [", w2, "x.yaml"), mc::InputError);
  // Sizes that do not chain (flatten gives 64, the linear layer says 32).
  std::map<std::string, mc::HostTensor> mlp = {{"a.weight", mc::from_torch("a.weight", at::zeros({3, 32}))},
                                               {"a.bias", mc::from_torch("a.bias", at::zeros({3}))}};
  CHECK_THROWS_AS(mc::ClassifierModel("input: {shape: [64]}\nlayers: [{type: linear, name: a, in: 32, out: 3}]",
                                      mlp, "x.yaml"),
                  mc::InputError);
}

TEST_CASE("classifier: saved checkpoints carry their architecture", "[model]") {
  mctest::TempDir dir;
  auto w = cnn_weights();
  mc::ClassifierModel m(kCnn, w, "cnn.yaml");
  at::Tensor x = at::rand({2, 64});
  for (const char* name : {"cnn.safetensors", "cnn.pt", "cnn.h5"}) {
    CAPTURE(name);
    mc::save_model(m, dir.file(name));
    auto back = mc::load_model(dir.file(name));
    CHECK(back->arch() == "classifier");
    CHECK((back->forward(x) - m.forward(x)).abs().max().item<double>() == 0.0);
  }
  // Weights without an architecture: the error says what to pass.
  mc::write_checkpoint(dir.file("plain.safetensors"), {w.at("fc.weight")});
  CHECK_THROWS_WITH(mc::load_model(dir.file("plain.safetensors")), Catch::Contains("--arch"));
}
