// Trainer (AdamW, schedule, exact resume, refusal of another configuration's checkpoint) and
// distillation (loss terms against hand computations, layer maps, students, recovery fine-tuning
// keeping grids and masks).
#include <ATen/ATen.h>

#include <cmath>

#include "../test_utils.h"
#include "mcompress/distill.h"
#include "mcompress/error.h"
#include "mcompress/generate.h"
#include "mcompress/checkpoint.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/model.h"
#include "mcompress/quant/fake_quant.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/train.h"
#include "tiny_llama.h"

namespace {

using mctest::tiny_llama;

void write_text(const std::string& path, const std::string& text) {
  mctest::write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}

std::vector<int32_t> token_stream(int64_t n, int64_t vocab, uint64_t seed) {
  mc::SplitMix64 r{seed};
  std::vector<int32_t> t(static_cast<size_t>(n));
  // A learnable stream: mostly the previous token + 1 (mod vocab), sometimes random.
  t[0] = 0;
  for (int64_t i = 1; i < n; ++i) t[i] = r.uniform() < 0.8 ? (t[i - 1] + 1) % vocab : int32_t(r.below(vocab));
  return t;
}

mc::TrainOptions small_opts(int64_t steps) {
  mc::TrainOptions o;
  o.steps = steps, o.batch = 4, o.seq_len = 16, o.lr = 3e-3, o.min_lr = 3e-4, o.warmup = 3, o.eval_every = 0;
  o.seed = 7;
  return o;
}

std::map<std::string, at::Tensor> snapshot(const mc::Model& m) {
  std::map<std::string, at::Tensor> s;
  for (const auto& [k, v] : m.params()) s[k] = v.detach().clone();
  return s;
}

}  // namespace

TEST_CASE("AdamW step equals the per-element formula of torch.optim.AdamW", "[train]") {
  // One parameter vector, loss = sum(c * p) -> gradient c; two steps by hand in double.
  at::Tensor p = at::tensor({0.5f, -1.0f, 2.0f});
  const std::vector<double> c = {0.3, -2.0, 1e-3};
  at::Tensor cv = at::tensor({0.3f, -2.0f, 1e-3f});
  std::vector<mc::TrainParam> params = {{"p", p, true}};
  mc::TrainOptions o;
  o.steps = 2, o.batch = 1, o.lr = 0.1, o.min_lr = 0.1, o.warmup = 0, o.weight_decay = 0.05, o.grad_clip = 0;
  o.eval_every = 0;
  std::vector<double> ref = {0.5, -1.0, 2.0}, m(3, 0), v(3, 0);
  mc::train(params, [&](mc::SplitMix64&) { return mc::StepLoss{(p * cv).sum(), {}}; }, {}, o);
  for (int t = 1; t <= 2; ++t)
    for (int i = 0; i < 3; ++i) {
      ref[i] *= 1 - 0.1 * 0.05;
      m[i] = 0.9 * m[i] + 0.1 * c[i];
      v[i] = 0.95 * v[i] + 0.05 * c[i] * c[i];
      const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.95, t);
      ref[i] -= 0.1 / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + 1e-8);
    }
  for (int i = 0; i < 3; ++i) CHECK(p[i].item<double>() == Approx(ref[i]).epsilon(1e-5));
  CHECK_FALSE(p.requires_grad());
}

TEST_CASE("learning rate: linear warm-up then cosine to min_lr", "[train]") {
  mc::TrainOptions o;
  o.steps = 110, o.warmup = 10, o.lr = 1.0, o.min_lr = 0.1;
  CHECK(mc::lr_at(o, 0) == Approx(0.1));
  CHECK(mc::lr_at(o, 9) == Approx(1.0));
  CHECK(mc::lr_at(o, 60) == Approx(0.1 + 0.45 * (1 + std::cos(M_PI * 0.5))));
  CHECK(mc::lr_at(o, 110) == Approx(0.1));
}

TEST_CASE("bad training settings are input errors", "[train]") {
  mc::TrainOptions o = small_opts(10);
  o.lr = 0;
  CHECK_THROWS_AS(mc::validate(o), mc::InputError);
  o = small_opts(0);
  CHECK_THROWS_AS(mc::validate(o), mc::InputError);
  o = small_opts(10);
  o.lr = -1e-3;
  CHECK_THROWS_WITH(mc::validate(o), Catch::Contains("learning rate must be positive"));
}

TEST_CASE("an interrupted and resumed run ends with the uninterrupted run's weights", "[train]") {
  mctest::TempDir dir;
  const auto tokens = token_stream(4000, 20, 3);
  auto a = tiny_llama(11), b = tiny_llama(11);
  mc::TrainOptions o = small_opts(12);
  o.checkpoint_every = 4;
  o.checkpoint_path = (dir.path / "a.safetensors").string();
  auto ra = mc::train_language_model(*a, tokens, {}, o);
  CHECK(ra.steps == 12);

  // b: stopped after step 5 by the interrupt flag (a checkpoint is written), then resumed.
  std::atomic<bool> stop{false};
  mc::TrainOptions ob = o;
  ob.checkpoint_path = (dir.path / "b.safetensors").string();
  ob.interrupt = &stop;
  auto rb1 = mc::train_language_model(*b, tokens, {}, ob, [&](const mc::TrainProgress& p) {
    if (p.step == 5) stop = true;
  });
  CHECK(rb1.interrupted);
  CHECK(rb1.steps == 5);
  auto c = tiny_llama(99);  // different starting weights: everything must come from the checkpoint
  stop = false;
  ob.resume = true;
  auto rb2 = mc::train_language_model(*c, tokens, {}, ob);
  CHECK(rb2.resumed_from == 5);
  CHECK(rb2.steps == 12);
  const auto wa = snapshot(*a), wc = snapshot(*c);
  for (const auto& [k, t] : wa) CHECK(at::equal(t, wc.at(k)));
}

TEST_CASE("resuming a checkpoint of another configuration is refused before anything is written", "[train]") {
  mctest::TempDir dir;
  const auto tokens = token_stream(4000, 20, 3);
  auto a = tiny_llama(11);
  mc::TrainOptions o = small_opts(4);
  o.checkpoint_every = 2;
  o.checkpoint_path = (dir.path / "s.safetensors").string();
  o.identity["loss"] = "kl 1";
  mc::train_language_model(*a, tokens, {}, o);
  const auto before = mctest::read_bytes(o.checkpoint_path);
  o.resume = true;
  o.identity["loss"] = "ce 1";
  CHECK_THROWS_WITH(mc::check_resume(o), Catch::Contains("checkpoint of another configuration (loss is kl 1 there, ce 1 here)"));
  auto b = tiny_llama(11);
  CHECK_THROWS_AS(mc::train_language_model(*b, tokens, {}, o), mc::InputError);
  o.identity["loss"] = "kl 1";
  o.lr = 1e-2;
  CHECK_THROWS_WITH(mc::check_resume(o), Catch::Contains("lr is"));
  // A model of another shape: refused naming the tensor.
  o.lr = small_opts(4).lr;
  mctest::TinyLlamaShape wide;
  wide.dim = 32, wide.heads = 4;
  auto w = tiny_llama(1, wide);
  CHECK_THROWS_WITH(mc::train_language_model(*w, tokens, {}, o), Catch::Contains("has shape"));
  CHECK(mctest::read_bytes(o.checkpoint_path) == before);
}

TEST_CASE("distillation loss terms equal hand computations", "[distill]") {
  at::Tensor s = at::tensor({1.0f, 0.0f, -1.0f}).view({1, 3}), t = at::tensor({0.0f, 2.0f, 0.5f}).view({1, 3});
  auto softmax = [](std::vector<double> z, double T) {
    double m = 0;
    for (double& x : z) x /= T, m += std::exp(x);
    for (double& x : z) x = std::exp(x) / m;
    return z;
  };
  auto kl = [](const std::vector<double>& p, const std::vector<double>& q) {
    double k = 0;
    for (size_t i = 0; i < p.size(); ++i) k += p[i] * std::log(p[i] / q[i]);
    return k;
  };
  for (double T : {1.0, 2.0, 4.0}) {
    auto ps = softmax({1, 0, -1}, T), pt = softmax({0, 2, 0.5}, T);
    CHECK(mc::forward_kl(s, t, T).item<double>() == Approx(kl(pt, ps) * T * T).epsilon(1e-5));
    CHECK(mc::reverse_kl(s, t, T).item<double>() == Approx(kl(ps, pt) * T * T).epsilon(1e-5));
    for (double beta : {0.1, 0.5, 0.9}) {
      std::vector<double> m(3);
      for (int i = 0; i < 3; ++i) m[i] = beta * pt[i] + (1 - beta) * ps[i];
      CHECK(mc::generalized_jsd(s, t, beta, T).item<double>() ==
            Approx((beta * kl(pt, m) + (1 - beta) * kl(ps, m)) * T * T).epsilon(1e-5));
    }
  }
  CHECK(mc::forward_kl(t, t, 2.0).item<double>() == Approx(0).margin(1e-7));
  // Hidden MSE relative to the teacher's mean square; with a projection.
  at::Tensor hs = at::tensor({1.0f, 2.0f}).view({1, 2}), ht = at::tensor({2.0f, 0.0f, 1.0f}).view({1, 3});
  at::Tensor P = at::tensor({1.0f, 0.0f, 0.0f, 1.0f, 1.0f, 1.0f}).view({3, 2});  // -> (1, 2, 3)
  CHECK(mc::hidden_mse(hs, ht, P).item<double>() == Approx(((1 - 2) * (1 - 2) + 4 + 4) / 3.0 / (5 / 3.0)));
  // Attention maps: per head when the head counts agree, head-averaged otherwise.
  at::Tensor a1 = at::tensor({1.0f, 0.0f, 0.5f, 0.5f}).view({1, 1, 2, 2});
  at::Tensor a2 = at::tensor({1.0f, 0.0f, 0.25f, 0.75f}).view({1, 1, 2, 2});
  const double row2 = 0.5 * std::log(0.5 / 0.25) + 0.5 * std::log(0.5 / 0.75);
  CHECK(mc::attention_kl(a2, a1).item<double>() == Approx(row2 / 2));
  at::Tensor two = at::cat({a2, a1}, 1);  // mean of the two heads: rows (1, 0), (0.375, 0.625)
  const double avg = 0.5 * std::log(0.5 / 0.375) + 0.5 * std::log(0.5 / 0.625);
  CHECK(mc::attention_kl(two, a1).item<double>() == Approx(avg / 2));
}

TEST_CASE("loss specs and layer maps", "[distill]") {
  auto l = mc::parse_distill_loss("ce=0.5,T=3");
  CHECK(l.kl == 0);
  CHECK(l.ce == 0.5);
  CHECK(l.temperature == 3);
  CHECK_FALSE(l.uses_teacher());
  CHECK(mc::parse_distill_loss("T=4").kl == 1);  // naming no term keeps forward KL
  CHECK_THROWS_WITH(mc::parse_distill_loss("kl=1,alpha=0.5"), Catch::Contains("unknown term 'alpha'"));
  CHECK_THROWS_AS(mc::parse_distill_loss("kl=0"), mc::InputError);
  CHECK_THROWS_AS(mc::parse_distill_loss("T=0"), mc::InputError);
  CHECK_THROWS_AS(mc::parse_distill_loss("jsd=1,beta=1"), mc::InputError);
  CHECK(mc::describe(mc::parse_layer_map("", 2, 4)) == "0:1,1:3");
  CHECK(mc::describe(mc::parse_layer_map("", 3, 5)) == "0:1,1:2,2:4");
  CHECK(mc::describe(mc::parse_layer_map("0:0,1:4", 2, 5)) == "0:0,1:4");
  CHECK_THROWS_WITH(mc::parse_layer_map("0:5", 2, 5), Catch::Contains("the teacher has no block 5"));
  CHECK_THROWS_WITH(mc::parse_layer_map("2:1", 2, 5), Catch::Contains("the student has no block 2"));
  CHECK_THROWS_AS(mc::parse_layer_map("0-1", 2, 5), mc::InputError);
}

TEST_CASE("students from a config and the checks against the teacher", "[distill]") {
  mctest::TempDir dir;
  auto teacher = tiny_llama(1);
  const std::string cfg = (dir.path / "s.yaml").string();
  write_text(cfg, "dim: 8\nn_layers: 1\nn_heads: 2\nn_kv_heads: 1\nhidden_dim: 24\n");
  auto s = mc::student_from_config(*teacher, cfg, 3);
  CHECK(s->num_blocks() == 1);
  CHECK(s->vocab_size() == teacher->vocab_size());
  CHECK(s->param("tok_embeddings.weight").sizes() == at::IntArrayRef({20, 8}));
  write_text(cfg, "dim: 8\nn_layers: 1\nn_heads: 3\n");
  CHECK_THROWS_WITH(mc::student_from_config(*teacher, cfg, 3), Catch::Contains("must divide dim"));
  write_text(cfg, "dim: 8\nlayers: 1\nheads: 2\ndepth: 3\n");
  CHECK_THROWS_WITH(mc::student_from_config(*teacher, cfg, 3), Catch::Contains("unknown student config key 'depth'"));
  mctest::TinyLlamaShape other;
  other.vocab = 30;
  auto v = tiny_llama(2, other);
  mc::DistillOptions o;
  CHECK_THROWS_WITH(mc::check_distill(*teacher, *v, o), Catch::Contains("vocabulary has 30 tokens, the teacher's 20"));
  o.loss.hidden = 1;
  o.layer_map = {{0, 7}};
  CHECK_THROWS_WITH(mc::check_distill(*teacher, *s, o), Catch::Contains("the teacher has no block 7"));
}

TEST_CASE("a distilled student is closer to the teacher than the same student trained on the data alone",
          "[distill]") {
  auto teacher = tiny_llama(1);
  mctest::TempDir dir;
  const std::string cfg = (dir.path / "s.yaml").string();
  write_text(cfg, "dim: 8\nn_layers: 1\nn_heads: 2\nhidden_dim: 16\n");
  mc::SampleBatchOptions so;
  so.sequences = 40, so.length = 64, so.seed = 2, so.start_id = 0;
  mc::DistillData train;
  for (const auto& seq : mc::sample_sequences(*teacher, so)) train.tokens.insert(train.tokens.end(), seq.begin(), seq.end());
  at::Tensor x = mctest::random_tokens(8, 16, 20, 9);
  auto kl_to_teacher = [&](mc::Model& m) {
    at::NoGradGuard ng;
    return mc::forward_kl(m.forward(x), teacher->forward(x), 1.0).item<double>();
  };
  auto run = [&](const std::string& loss) {
    auto s = mc::student_from_config(*teacher, cfg, 3);
    mc::DistillOptions o;
    o.train = small_opts(150);
    o.train.lr = 1e-2;
    o.loss = mc::parse_distill_loss(loss);
    if (o.loss.hidden > 0) o.layer_map = mc::parse_layer_map("", s->num_blocks(), teacher->num_blocks());
    const double before = kl_to_teacher(*s);
    auto r = mc::distill(*teacher, *s, train, {}, o, {});
    CHECK(r.steps == 150);
    const double after = kl_to_teacher(*s);
    CHECK(after < before);
    return after;
  };
  const double ce = run("ce=1"), kd = run("kl=1,T=1"), all = run("kl=1,T=1,hidden=0.5,attention=0.5");
  CHECK(kd < ce);
  CHECK(all < ce);
}

TEST_CASE("recovery fine-tuning keeps the quantization grid and the sparsity mask", "[distill]") {
  auto teacher = tiny_llama(1);
  auto student = tiny_llama(1);
  mctest::TempDir dir;
  const std::string path = (dir.path / "q.safetensors").string();
  // Pack: wq of block 0 int4 g8, w1 of block 1 2:4 sparse int4, the rest dense.
  const std::string kq = "layers.0.attention.wq.weight", ks = "layers.1.feed_forward.w1.weight";
  {
    mc::PackedCheckpointWriter w(path);
    for (const auto& [k, v] : student->params())
      if (k != kq && k != ks) w.add_dense(k, v);
    mc::QuantSpec spec;
    spec.bits = 4, spec.group_size = 8;
    w.add_quantized(kq, mc::rtn_quantize(student->param(kq), spec));
    at::Tensor ws = student->param(ks).clone();
    ws.view({-1, 4}).narrow(1, 0, 2).zero_();  // 2 of every 4 zeroed
    auto q = mc::rtn_quantize(ws, spec);
    mc::SparseLayout lay;
    lay.n = 2, lay.m = 4;
    w.add_sparse(ks, q.dequantize(), lay, &q);
    w.finish(student->config_metadata());
  }
  auto compressed = mc::load_model(path);
  auto grids = mc::read_frozen_grids(*mc::open_checkpoint(path));
  REQUIRE(grids.size() == 2);
  mc::DistillOptions o;
  o.train = small_opts(30);
  o.train.lr = 1e-2;
  o.loss = mc::parse_distill_loss("kl=1,T=1");
  o.frozen = grids;
  const at::Tensor wq0 = compressed->param(kq).clone(), ws0 = compressed->param(ks).clone();
  mc::DistillData train;
  train.tokens = token_stream(3000, 20, 5);
  mc::distill(*teacher, *compressed, train, {}, o, {});
  const at::Tensor wq = compressed->param(kq), ws = compressed->param(ks);
  CHECK_FALSE(at::equal(wq, wq0));  // trained ...
  CHECK(at::equal(mc::fake_quant_ste(wq, grids.at(kq)), wq));  // ... and on the grid
  CHECK(at::equal(mc::fake_quant_ste(ws, grids.at(ks)), ws));
  CHECK(at::equal(ws.eq(0).logical_or(grids.at(ks).mask), at::ones_like(grids.at(ks).mask)));
  CHECK(ws.masked_select(grids.at(ks).mask.logical_not()).abs().max().item<float>() == 0.0f);
  // Re-packed on the same grid: the file reads back exactly the trained weights.
  const std::string out = (dir.path / "r.safetensors").string();
  {
    mc::PackedCheckpointWriter w(out);
    for (const auto& [k, v] : compressed->params())
      if (!grids.count(k)) w.add_dense(k, v);
    for (const auto& [k, g] : grids) mc::add_like(w, compressed->param(k), g);
    w.finish(compressed->config_metadata());
  }
  auto back = mc::load_model(out);
  for (const auto& [k, v] : compressed->params()) CHECK(at::equal(back->param(k), v));
}
