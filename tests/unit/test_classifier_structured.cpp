// Channel pruning of classifier MLPs (prune/structured.h). Oracles: keeping every channel gives the
// input weights and logits bit for bit; channels whose outgoing weights are zero (however large their
// activations) score zero, are the ones removed, and removing them leaves the logits unchanged; the
// scores of a 4-3-2 MLP equal a hand computation; unsupported layers between linears are input errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "mcompress/error.h"
#include "mcompress/models/classifier.h"
#include "mcompress/prune/structured.h"
#include "mcompress/torch_bridge.h"
#include "test_utils.h"

using namespace mc;

namespace {

using Weights = std::map<std::string, at::Tensor>;

const char* kMlp = R"(
input: {shape: [784], scale: 0.00392156862745098, mean: 0.5, std: 0.5}  # centred: no dead relu channel
layers:
  - {type: linear, name: fc1, in: 784, out: 50}
  - relu
  - {type: dropout}
  - {type: linear, name: fc2, in: 50, out: 30}
  - {type: gelu}
  - {type: linear, name: fc3, in: 30, out: 10}
)";

Weights mlp_weights(uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  Weights w;
  w["fc1.weight"] = at::randn({50, 784}, gen) * 0.05;
  w["fc1.bias"] = at::randn({50}, gen) * 0.1;
  w["fc2.weight"] = at::randn({30, 50}, gen) * 0.2;
  w["fc2.bias"] = at::randn({30}, gen) * 0.1;
  w["fc3.weight"] = at::randn({10, 30}, gen) * 0.2;
  w["fc3.bias"] = at::randn({10}, gen) * 0.1;
  return w;
}

std::unique_ptr<ClassifierModel> make(const std::string& yaml, const Weights& w) {
  std::map<std::string, HostTensor> h;
  for (const auto& [k, t] : w) h[k] = from_torch(k, t);
  return std::make_unique<ClassifierModel>(yaml, h, "test.yaml");
}

at::Tensor images(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::rand({n, 784}, gen) * 255;
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

void check_error(ClassifierModel& m, const at::Tensor& calib, const ClassifierPruneOptions& o,
                 const std::vector<std::string>& parts) {
  try {
    prune_classifier_channels(m, calib, o);
    FAIL("no error for " << describe(o));
  } catch (const InputError& e) {
    const std::string msg = e.what();
    INFO(msg);
    for (const auto& p : parts) CHECK(msg.find(p) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("classifier prune: keeping every channel reproduces weights and logits exactly", "[structured]") {
  const Weights w = mlp_weights(1);
  auto m = make(kMlp, w);
  const at::Tensor calib = images(64, 2), x = images(16, 3);
  const at::Tensor want = m->forward(x);
  for (const char* spec : {"", "fc1=50,fc2=30", "hidden=100", "hidden=50"}) {
    INFO(spec);
    ClassifierPruneResult r = prune_classifier_channels(*m, calib, parse_classifier_prune_options(spec));
    CHECK(r.removed.empty());
    CHECK(r.params_before == r.params_after);
    CHECK(r.params_before == 50 * 785 + 30 * 51 + 10 * 31);
    REQUIRE(r.weights.size() == w.size());
    for (const auto& [k, t] : w) CHECK(at::equal(r.weights.at(k), t));
    auto p = make_pruned_classifier(r);
    CHECK(at::equal(p->forward(x), want));
  }
}

TEST_CASE("classifier prune: channels with zero outgoing weights are the ones removed", "[structured]") {
  Weights w = mlp_weights(4);
  // 20 of fc1's 50 channels: large activations (scaled rows, large bias), zero columns in fc2.
  std::vector<int64_t> dead;
  for (int64_t i = 0; i < 20; ++i) dead.push_back(i * 7 % 50);
  const at::Tensor idx = at::tensor(dead, at::kLong);
  w["fc1.weight"].index_copy_(0, idx, w["fc1.weight"].index_select(0, idx) * 10);
  w["fc1.bias"].index_fill_(0, idx, 5.0);
  w["fc2.weight"].index_fill_(1, idx, 0.0);
  std::vector<int64_t> alive;
  for (int64_t c = 0; c < 50; ++c)
    if (std::find(dead.begin(), dead.end(), c) == dead.end()) alive.push_back(c);
  const at::Tensor keep = at::tensor(alive, at::kLong);

  auto m = make(kMlp, w);
  const at::Tensor calib = images(64, 5), x = images(16, 6);
  const at::Tensor want = m->forward(x);
  for (const char* spec : {"fc1=30", "hidden=30", "fc1=0.6,batch=7"}) {
    INFO(spec);
    ClassifierPruneOptions o = parse_classifier_prune_options(spec);
    ClassifierPruneResult r = prune_classifier_channels(*m, calib, o);
    REQUIRE(r.removed.size() == 1);
    CHECK(r.removed[0] == "fc1: 20 of 50 channels");
    const at::Tensor s = r.scores.at("fc1");
    CHECK(s.index_select(0, idx).abs().max().item<double>() == 0.0);
    CHECK(s.index_select(0, keep).min().item<double>() > 0.0);
    CHECK(r.scores.count("fc2") == 0);  // fc2 keeps all 30: not ranked
    CHECK(at::equal(r.weights.at("fc1.weight"), w.at("fc1.weight").index_select(0, keep)));
    CHECK(at::equal(r.weights.at("fc1.bias"), w.at("fc1.bias").index_select(0, keep)));
    CHECK(at::equal(r.weights.at("fc2.weight"), w.at("fc2.weight").index_select(1, keep)));
    CHECK(at::equal(r.weights.at("fc3.weight"), w.at("fc3.weight")));
    CHECK(r.params_after == r.params_before - 20 * 785 - 20 * 30);
    CHECK(r.settings.at("fc1 channels") == "50 -> 30");
    CHECK(r.settings.at("fc2 channels") == "30 -> 30");
    auto p = make_pruned_classifier(r);
    CHECK(p->layer("fc1").out_features == 30);
    CHECK(p->layer("fc2").in_features == 30);
    // Only exact zero products are dropped: the rest sums in another order at most.
    CHECK(max_diff(p->forward(x), want) < 1e-5 * want.abs().max().item<double>());
    // The YAML round-trips through a second ClassifierModel (the input transform kept).
    CHECK(r.yaml.find("0.00392156862745098") != std::string::npos);
  }
}

TEST_CASE("classifier prune: fractions prune every hidden layer", "[structured]") {
  const Weights w = mlp_weights(7);
  auto m = make(kMlp, w);
  ClassifierPruneOptions o = parse_classifier_prune_options("hidden=0.2");
  CHECK(o.hidden == 0.2);
  CHECK(describe(o) == "hidden 20%");
  ClassifierPruneResult r = prune_classifier_channels(*m, images(32, 8), o);
  REQUIRE(r.removed.size() == 2);
  CHECK(r.removed[0] == "fc1: 40 of 50 channels");
  CHECK(r.removed[1] == "fc2: 24 of 30 channels");
  CHECK(r.weights.at("fc1.weight").sizes() == at::IntArrayRef({10, 784}));
  CHECK(r.weights.at("fc2.weight").sizes() == at::IntArrayRef({6, 10}));  // rows and columns
  CHECK(r.weights.at("fc2.bias").sizes() == at::IntArrayRef({6}));
  CHECK(r.weights.at("fc3.weight").sizes() == at::IntArrayRef({10, 6}));
  CHECK(r.params_after == 10 * 785 + 6 * 11 + 10 * 7);
  // fc2 is sliced by both rankings: its kept rows / columns are the top-scored fc2 / fc1 channels.
  const at::Tensor k1 = std::get<0>(at::sort(std::get<1>(at::sort(r.scores.at("fc1"), true, 0, true)).narrow(0, 0, 10)));
  const at::Tensor k2 = std::get<0>(at::sort(std::get<1>(at::sort(r.scores.at("fc2"), true, 0, true)).narrow(0, 0, 6)));
  CHECK(at::equal(r.weights.at("fc2.weight"), w.at("fc2.weight").index_select(0, k2).index_select(1, k1)));
  auto p = make_pruned_classifier(r);
  CHECK(p->num_classes() == 10);
  CHECK(at::isfinite(p->forward(images(4, 9))).all().item<bool>());
  // Per-layer override beside the global value.
  o = parse_classifier_prune_options("hidden=20,fc2=0.5");
  CHECK(describe(o) == "hidden 20 channels, fc2 50%");
  r = prune_classifier_channels(*m, images(32, 8), o);
  CHECK(r.settings.at("fc1 channels") == "50 -> 20");
  CHECK(r.settings.at("fc2 channels") == "30 -> 15");
}

TEST_CASE("classifier prune: scores of a 4-3-2 MLP equal the hand computation", "[structured]") {
  const char* yaml = R"(
input: {shape: [4]}
layers:
  - {type: linear, name: fc1, in: 4, out: 3}
  - relu
  - {type: linear, name: fc2, in: 3, out: 2}
)";
  Weights w;
  w["fc1.weight"] = at::tensor(std::vector<float>{1, 0, 0, 0, 0, 2, 0, 0, 0.5, 0.5, 0, 0}).view({3, 4});
  w["fc1.bias"] = at::tensor(std::vector<float>{0.5, 0, 0});
  w["fc2.weight"] = at::tensor({0.3f, 0.6f, 1.2f, 0.4f, 0.8f, 1.6f}).view({2, 3});  // column norms 0.5, 1, 2
  w["fc2.bias"] = at::tensor({0.1f, -0.1f});
  auto m = make(yaml, w);
  // Activations after relu, per input row: [1.5, 0, 0.5], [0.5, 2, 0.5], [0, 0, 0] (relu of -0.5, -2, -1).
  const at::Tensor calib = at::tensor(std::vector<float>{1, 0, 0, 0, 0, 1, 0, 0, -1, -1, 0, 0}).view({3, 4});
  const double want[3] = {std::sqrt(1.5 * 1.5 + 0.5 * 0.5) * 0.5,  // 0.79: large activations, small weights
                          std::sqrt(0.0 + 2 * 2) * 1.0,            // 2.00
                          std::sqrt(0.5 * 0.5 + 0.5 * 0.5) * 2.0}; // 1.41: small activations, large weights
  ClassifierPruneResult r = prune_classifier_channels(*m, calib, parse_classifier_prune_options("fc1=2,batch=1"));
  const at::Tensor s = r.scores.at("fc1");
  REQUIRE(s.numel() == 3);
  for (int c = 0; c < 3; ++c) CHECK(s[c].item<double>() == Approx(want[c]).epsilon(1e-6));
  CHECK(r.removed == std::vector<std::string>{"fc1: 1 of 3 channels"});
  const at::Tensor k = at::tensor(std::vector<int64_t>{1, 2});
  CHECK(at::equal(r.weights.at("fc1.weight"), w.at("fc1.weight").index_select(0, k)));
  CHECK(at::equal(r.weights.at("fc2.weight"), w.at("fc2.weight").index_select(1, k)));
  CHECK(at::equal(r.weights.at("fc2.bias"), w.at("fc2.bias")));
  r = prune_classifier_channels(*m, calib, parse_classifier_prune_options("hidden=1"));  // one channel: the 2nd
  CHECK(at::equal(r.weights.at("fc1.weight"), w.at("fc1.weight").narrow(0, 1, 1)));
  auto p = make_pruned_classifier(r);
  const at::Tensor x = at::tensor({0.3f, 0.7f, -0.2f, 1.0f}).view({1, 4});
  const at::Tensor h = at::relu(at::linear(x, w.at("fc1.weight").narrow(0, 1, 1), w.at("fc1.bias").narrow(0, 1, 1)));
  CHECK(max_diff(p->forward(x), at::linear(h, w.at("fc2.weight").narrow(1, 1, 1), w.at("fc2.bias"))) < 1e-6);
}

TEST_CASE("classifier prune: convolutions before the first linear layer stay", "[structured]") {
  const char* yaml = R"(
input: {shape: [1, 6, 6]}
layers:
  - {type: conv2d, name: c1, in: 1, out: 2, kernel: 3, padding: 1}
  - {type: batchnorm, name: bn1, features: 2}
  - relu
  - flatten
  - {type: linear, name: fc1, in: 72, out: 16}
  - tanh
  - {type: linear, name: fc2, in: 16, out: 3, bias: false}
)";
  auto gen = at::detail::createCPUGenerator(10);
  Weights w;
  w["c1.weight"] = at::randn({2, 1, 3, 3}, gen);
  w["c1.bias"] = at::randn({2}, gen);
  w["bn1.weight"] = at::rand({2}, gen) + 0.5;
  w["bn1.bias"] = at::randn({2}, gen);
  w["bn1.running_mean"] = at::randn({2}, gen);
  w["bn1.running_var"] = at::rand({2}, gen) + 0.5;
  w["fc1.weight"] = at::randn({16, 72}, gen) * 0.2;
  w["fc1.bias"] = at::randn({16}, gen);
  w["fc2.weight"] = at::randn({3, 16}, gen);
  auto m = make(yaml, w);
  ClassifierPruneResult r = prune_classifier_channels(*m, at::randn({8, 36}, gen), parse_classifier_prune_options("hidden=4"));
  CHECK(r.removed == std::vector<std::string>{"fc1: 12 of 16 channels"});
  CHECK(at::equal(r.weights.at("c1.weight"), w.at("c1.weight")));
  CHECK(at::equal(r.weights.at("bn1.running_var"), w.at("bn1.running_var")));
  CHECK(r.weights.count("fc2.bias") == 0);
  auto p = make_pruned_classifier(r);
  CHECK(p->forward(at::randn({2, 36}, gen)).sizes() == at::IntArrayRef({2, 3}));
}

TEST_CASE("classifier prune: unsupported layers between linears and bad options are input errors", "[structured]") {
  auto gen = at::detail::createCPUGenerator(11);
  Weights w;
  w["fc1.weight"] = at::randn({6, 8}, gen);
  w["fc1.bias"] = at::randn({6}, gen);
  w["bn1.weight"] = at::rand({6}, gen) + 0.5;
  w["bn1.bias"] = at::randn({6}, gen);
  w["bn1.running_mean"] = at::randn({6}, gen);
  w["bn1.running_var"] = at::rand({6}, gen) + 0.5;
  w["fc2.weight"] = at::randn({4, 6}, gen);
  w["fc2.bias"] = at::randn({4}, gen);
  w["fc3.weight"] = at::randn({3, 4}, gen);
  w["fc3.bias"] = at::randn({3}, gen);
  const char* with_bn = R"(
input: {shape: [8]}
layers:
  - {type: linear, name: fc1, in: 8, out: 6}
  - {type: batchnorm, name: bn1, features: 6}
  - relu
  - {type: linear, name: fc2, in: 6, out: 4}
  - relu
  - {type: linear, name: fc3, in: 4, out: 3}
)";
  const at::Tensor calib = at::randn({5, 8}, gen);
  auto m = make(with_bn, w);
  check_error(*m, calib, parse_classifier_prune_options("hidden=3"), {"'fc1'", "batchnorm 'bn1'", "layer 2"});
  CHECK_THROWS_AS(check_classifier_prune(*m, parse_classifier_prune_options("fc1=0.5")), InputError);
  // fc2 -> relu -> fc3 alone is fine, and fc1 keeping all channels is not checked.
  ClassifierPruneResult r = prune_classifier_channels(*m, calib, parse_classifier_prune_options("fc2=2"));
  CHECK(r.removed == std::vector<std::string>{"fc2: 2 of 4 channels"});
  CHECK(make_pruned_classifier(r)->forward(calib).sizes() == at::IntArrayRef({5, 3}));

  Weights w2 = w;
  for (const char* k : {"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"}) w2.erase(k);
  const char* with_flatten = R"(
input: {shape: [8]}
layers:
  - {type: linear, name: fc1, in: 8, out: 6}
  - flatten
  - {type: linear, name: fc2, in: 6, out: 4}
  - {type: linear, name: fc3, in: 4, out: 3}
)";
  auto f = make(with_flatten, w2);
  check_error(*f, calib, parse_classifier_prune_options("fc1=3"), {"'fc1'", "flatten"});
  check_error(*f, calib, parse_classifier_prune_options("fc3=2"), {"'fc3' is not a hidden linear layer", "classifier"});
  check_error(*f, calib, parse_classifier_prune_options("fc9=2"), {"'fc9'", "fc1, fc2"});
  check_error(*f, calib, parse_classifier_prune_options("fc2=5"), {"'fc2' has 4 channels, cannot keep 5"});
  check_error(*f, at::Tensor(), parse_classifier_prune_options("fc2=2"), {"calibration inputs"});
  ClassifierPruneOptions bad;
  bad.hidden = 2.5;
  check_error(*f, calib, bad, {"hidden 2.5"});

  const char* only_classifier = R"(
input: {shape: [8]}
layers:
  - {type: linear, name: fc1, in: 8, out: 6}
)";
  Weights w3{{"fc1.weight", w.at("fc1.weight")}, {"fc1.bias", w.at("fc1.bias")}};
  auto c = make(only_classifier, w3);
  check_error(*c, calib, parse_classifier_prune_options("hidden=2"), {"no hidden linear layer", "'fc1'"});

  for (const char* spec : {"hidden=1.5", "hidden=0", "hidden=-3", "hidden=abc", "hidden", "=3", "hidden=0.5x",
                           "batch=x"})
    CHECK_THROWS_AS(parse_classifier_prune_options(spec), InputError);
  ClassifierPruneOptions o = parse_classifier_prune_options("hidden=100,fc1=400,batch=32");
  CHECK(o.hidden == 100);
  CHECK(o.layers.at("fc1") == 400);
  CHECK(o.batch == 32);
}
