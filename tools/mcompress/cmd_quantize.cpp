// mcompress quantize --method rtn --bits 4 --group-size 32 [--sym|--asym] MODEL -o OUT [--eval DATA]
// Quantizes the matmul weights (optionally embeddings / classifier), writes OUT/model.safetensors in the
// packed layout, reloads it, evaluates baseline and compressed, and writes OUT/report.{json,md}.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <set>
#include <unistd.h>
#include <cmath>

#include "cli.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/model.h"
#include "mcompress/calib.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/packed.h"
#include "mcompress/rng.h"
#include "mcompress/quant/rtn.h"
#include "mcompress/report.h"
#include "mcompress/tensor.h"
#include "model_files.h"

namespace mcli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Rows of calibration input kept per layer for the RTN path's per-layer errors.
constexpr int64_t kMaxRows = 4096;

// The calibration set as the model's forward takes it: `samples` windows of `seqlen` tokens drawn
// reproducibly from the documents' token stream, or `samples` labeled examples.
// allow_short: a text shorter than seqlen gives shorter sequences instead of an error.
at::Tensor calibration_inputs(const EvalData& cd, int64_t samples, int64_t seqlen, uint64_t seed,
                              bool allow_short = false) {
  mc::SplitMix64 rng{seed};
  if (cd.labeled) {
    const int64_t n = std::min<int64_t>(samples, cd.examples.count);
    const int64_t per = mc::shape_numel(cd.examples.example_shape);
    mc::Shape shape = {n};
    shape.insert(shape.end(), cd.examples.example_shape.begin(), cd.examples.example_shape.end());
    at::Tensor x = at::empty(shape, at::kFloat);
    float* dst = x.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t idx = static_cast<int64_t>(rng.below(static_cast<uint64_t>(cd.examples.count)));
      std::copy_n(cd.examples.inputs.data() + idx * per, per, dst + i * per);
    }
    return x;
  }
  std::vector<int32_t> stream;
  for (const auto& d : cd.corpus.docs) stream.insert(stream.end(), d.begin(), d.end());
  if (allow_short && !stream.empty()) seqlen = std::min<int64_t>(seqlen, static_cast<int64_t>(stream.size()));
  if (static_cast<int64_t>(stream.size()) < seqlen)
    mc::fail("quantize", "calibration text has ", stream.size(), " tokens, shorter than one sequence of ", seqlen,
             " (--calib-seqlen)");
  at::Tensor x = at::empty({samples, seqlen}, at::kLong);
  int64_t* dst = x.data_ptr<int64_t>();
  const uint64_t starts = stream.size() - static_cast<uint64_t>(seqlen) + 1;
  for (int64_t i = 0; i < samples; ++i) {
    const int64_t s0 = static_cast<int64_t>(rng.below(starts));
    for (int64_t j = 0; j < seqlen; ++j) dst[i * seqlen + j] = stream[s0 + j];
  }
  return x;
}

// Inputs of every target layer on the calibration set x (at most kMaxRows rows per layer).
std::map<std::string, at::Tensor> capture_inputs(mc::Model& model, const at::Tensor& x,
                                                 const std::set<std::string>& layers) {
  std::map<std::string, std::vector<at::Tensor>> rows;
  std::map<std::string, int64_t> count;
  int hook = model.add_hook([&](const mc::LayerInfo& l, const at::Tensor& in, const at::Tensor&) {
    if (!layers.count(l.name) || count[l.name] >= kMaxRows) return;
    at::Tensor r = in.detach().reshape({-1, in.size(-1)}).to(at::kFloat).to(at::kCPU);
    r = r.narrow(0, 0, std::min<int64_t>(r.size(0), kMaxRows - count[l.name]));
    count[l.name] += r.size(0);
    rows[l.name].push_back(r.clone());
  });
  at::NoGradGuard no_grad;
  try {
    model.forward(x.to(model.device()));
  } catch (...) {
    model.remove_hook(hook);
    throw;
  }
  model.remove_hook(hook);
  std::map<std::string, at::Tensor> out;
  for (auto& [k, v] : rows) out[k] = at::cat(v, 0);
  return out;
}

struct Metrics {
  std::vector<mc::MetricRow> rows;
  std::string protocol;
};

// Evaluates `model` (against `reference` when given) and fills the compressed or baseline column.
void evaluate_into(mc::Model& model, mc::Model* reference, const EvalData& ed, const mc::LmEvalOptions& lo,
                   bool compressed, std::vector<mc::MetricRow>& rows, std::string& protocol) {
  auto put = [&](const char* name, double v, bool higher, int dec, bool pct, bool primary) {
    for (auto& r : rows)
      if (r.name == name) {
        (compressed ? r.compressed : r.baseline) = v;
        return;
      }
    mc::MetricRow r;
    r.name = name, r.higher_is_better = higher, r.decimals = dec, r.percent = pct, r.is_primary = primary;
    (compressed ? r.compressed : r.baseline) = v;
    rows.push_back(r);
  };
  if (ed.labeled) {
    auto r = mc::evaluate_classifier(model, ed.examples, {}, reference);
    protocol = r.protocol;
    put("top-1 accuracy", r.top1, true, 2, true, true);
    put("top-5 accuracy", r.top5, true, 2, true, false);
    put("mean NLL (nats/example)", r.mean_nll, false, 4, false, false);
    if (r.has_reference) {
      put("KL(baseline || compressed) per example", r.mean_kl, false, 5, false, false);
      put("same top-1 as baseline", r.top1_agreement, true, 2, true, false);
    }
  } else {
    auto r = mc::evaluate_lm(model, ed.corpus, lo, reference);
    protocol = r.protocol;
    if (r.bits_per_byte >= 0) put("bits per byte", r.bits_per_byte, false, 4, false, false);
    put("perplexity", r.perplexity, false, 3, false, true);
    put("mean NLL (nats/token)", r.mean_nll, false, 4, false, false);
    if (r.has_reference) {
      put("KL(baseline || compressed) per token", r.mean_kl, false, 5, false, false);
      put("same top-1 as baseline", r.top1_agreement, true, 2, true, false);
    }
  }
}

}  // namespace

int cmd_quantize(const std::vector<std::string>& args) {
  po::options_description desc("quantize options");
  std::string model_path, out, method, eval_data, calib_data, tokenizer, arch, device, separator;
  mc::QuantSpec spec;
  bool sym = false, asym = false, q_embed = false, q_cls = false, q_conv = false, truncate = false, per_channel = false,
       per_tensor = false;
  int64_t window = 128, calib_samples = 0, calib_seqlen = 128, max_docs = 0;
  bool act_order = false, static_groups = false;
  double damp = 0.01;
  uint64_t seed = 0;
  desc.add_options()
      ("model", po::value<std::string>(&model_path)->required(), "model to quantize (any format load_model reads)")
      ("output,o", po::value<std::string>(&out)->required(), "output directory: model.safetensors + report.{json,md}")
      ("method", po::value<std::string>(&method)->default_value("rtn"),
       "rtn (round to nearest) or gptq (error-compensating, needs calibration data)")
      ("bits", po::value<int>(&spec.bits)->default_value(4), "bits per weight, 2..8")
      ("group-size", po::value<int64_t>(&spec.group_size)->default_value(32),
       "input columns per scale (a row whose length it does not divide ends with a shorter group)")
      ("per-channel", po::bool_switch(&per_channel), "one scale per output channel instead of groups")
      ("per-tensor", po::bool_switch(&per_tensor), "one scale for the whole matrix")
      ("sym", po::bool_switch(&sym), "symmetric grid, no zero point (default)")
      ("asym", po::bool_switch(&asym), "asymmetric grid with a zero point per group")
      ("mse-clip", po::bool_switch(&spec.mse_clip), "search a clip ratio per group minimising the squared error")
      ("quantize-embeddings", po::bool_switch(&q_embed), "also quantize the token embedding")
      ("quantize-classifier", po::bool_switch(&q_cls), "also quantize the output classifier")
      ("quantize-conv", po::bool_switch(&q_conv), "also quantize Conv2d kernels (as [out, in*kh*kw] matrices)")
      ("eval", po::value<std::string>(&eval_data), "evaluation data (text, token file, MNIST directory, tensor file)")
      ("calib", po::value<std::string>(&calib_data), "calibration data for per-layer errors (default: --eval data)")
      ("calib-samples", po::value<int64_t>(&calib_samples)->default_value(0),
       "calibration sequences / examples (default: 8 for rtn's per-layer errors, 128 for gptq)")
      ("calib-seqlen", po::value<int64_t>(&calib_seqlen)->default_value(128), "tokens per calibration sequence (gptq)")
      ("seed", po::value<uint64_t>(&seed)->default_value(0), "seed of the calibration sampling")
      ("act-order", po::bool_switch(&act_order), "gptq: quantize columns by descending Hessian diagonal")
      ("static-groups", po::bool_switch(&static_groups), "gptq: fit every group's grid up front on the original weights")
      ("damp", po::value<double>(&damp)->default_value(0.01), "gptq: damping as a fraction of mean(diag H)")
      ("tokenizer", po::value<std::string>(&tokenizer), "tokenizer (default: one beside the model)")
      ("arch", po::value<std::string>(&arch), "classifier architecture YAML")
      ("window", po::value<int64_t>(&window)->default_value(128), "evaluation window (tokens)")
      ("truncate", po::bool_switch(&truncate), "score only each document's first window")
      ("separator", po::value<std::string>(&separator)->default_value("<|endoftext|>"), "document separator")
      ("max-docs", po::value<int64_t>(&max_docs)->default_value(0), "evaluate at most N documents (0 = all)")
      ("device", po::value<std::string>(&device)->default_value("cpu"), "cpu or cuda");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  const std::string usage =
      "--method rtn --bits 4 (--group-size 32 | --per-channel | --per-tensor) [--sym|--asym] MODEL -o OUT [--eval DATA]";
  if (!parse_command_line("quantize", usage, args, desc, pos, vm, common)) return 0;
  if (method != "rtn" && method != "gptq")
    mc::fail("quantize", "--method '", method, "' is not available (allowed: rtn, gptq)");
  const bool gptq = method == "gptq";
  if (gptq && act_order && !static_groups && !per_channel)
    mc::fail("quantize", "--act-order with per-group scales needs --static-groups here (the packed layout has no "
             "g_idx yet)");
  if (calib_samples < 0 || calib_seqlen < 1) mc::fail("quantize", "--calib-samples must be >= 0, --calib-seqlen >= 1");
  if (calib_samples == 0) calib_samples = gptq ? 128 : 8;
  if (sym && asym) mc::fail("quantize", "--sym and --asym exclude each other");
  if (per_channel && per_tensor) mc::fail("quantize", "--per-channel and --per-tensor exclude each other");
  if (spec.group_size < 1)
    mc::fail("quantize", "--group-size ", spec.group_size, " must be >= 1 (use --per-channel or --per-tensor)");
  if (per_channel) spec.group_size = 0;
  if (per_tensor) spec.group_size = -1;
  spec.symmetric = !asym;
  spec.validate("(all layers)", 1 << 30);  // bits and group size, before any work

  std::string cmdline = "mcompress quantize";
  for (const auto& a : args) cmdline += " " + a;
  mc::Report rep;
  rep.model = model_path;
  rep.method = method;
  rep.command_line = cmdline;
  rep.settings = {{"bits", std::to_string(spec.bits)},
                  {"grid", spec.symmetric ? "symmetric" : "asymmetric"},
                  {"groups", spec.group_size > 0 ? std::to_string(spec.group_size) + " columns"
                             : spec.group_size == 0 ? "per output channel" : "per tensor"},
                  {"scales", "fp16"}};
  if (spec.mse_clip) rep.settings["clip"] = "MSE search";
  if (gptq) {
    rep.settings["calibration"] = std::to_string(calib_samples) + " x " + std::to_string(calib_seqlen) + " (seed " +
                                  std::to_string(seed) + ")";
    rep.settings["damp"] = fmt("%g", damp);
    if (act_order) rep.settings["act-order"] = static_groups ? "yes, static groups" : "yes";
    rep.seed = std::to_string(seed);
  }

  auto t = Clock::now();
  mc::LoadOptions lo;
  lo.arch_file = arch;
  lo.device = device;
  auto model = mc::load_model(model_path, lo);
  rep.steps.push_back({"load model", since(t)});
  rep.title = fs::path(model_path).filename().string() + ": " + (gptq ? "GPTQ " : "RTN ") + spec.describe();

  // Which weights to quantize (each weight key once: a tied classifier is its embedding).
  std::vector<const mc::LayerInfo*> targets;
  std::set<std::string> target_layers, seen_keys;
  for (const auto& l : model->layers()) {
    bool take = (l.kind == mc::LayerKind::Linear && !l.is_classifier) ||
                (q_embed && l.kind == mc::LayerKind::Embedding) || (q_cls && l.is_classifier) ||
                (q_conv && l.kind == mc::LayerKind::Conv2d);
    if (!take || !seen_keys.insert(l.weight).second) continue;
    const int64_t dims = model->param(l.weight).dim();
    if (dims != 2 && !(l.kind == mc::LayerKind::Conv2d && dims == 4)) continue;
    spec.validate(l.name, l.in_features);
    targets.push_back(&l);
    target_layers.insert(l.name);
  }
  if (targets.empty()) mc::fail("quantize", model_path, ": no layer selected for quantization");

  EvalData ed;
  const bool have_eval = !eval_data.empty();
  mc::LmEvalOptions eo;
  eo.window = window, eo.truncate = truncate, eo.max_docs = max_docs;
  if (have_eval) {
    t = Clock::now();
    ed = load_eval_data(*model, model_path, {eval_data, tokenizer, separator});
    evaluate_into(*model, nullptr, ed, eo, false, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate baseline", since(t)});
  }
  EvalData calib = calib_data.empty() ? ed : load_eval_data(*model, model_path, {calib_data, tokenizer, separator});
  if (gptq && !have_eval && calib_data.empty())
    mc::fail("quantize", "--method gptq needs calibration data: --calib DATA (or --eval DATA)");
  std::map<std::string, at::Tensor> inputs;
  if (!gptq && (have_eval || !calib_data.empty())) {
    t = Clock::now();
    inputs = capture_inputs(*model, calibration_inputs(calib, calib_samples, window, seed, true), target_layers);
    rep.steps.push_back({"capture calibration inputs", since(t)});
  }

  t = Clock::now();
  std::map<std::string, mc::QuantResult> quantized;
  const bool tty = ::isatty(1) && !common.quiet;
  if (gptq) {
    const at::Tensor calib_x = calibration_inputs(calib, calib_samples, calib_seqlen, seed);
    std::set<std::string> in_blocks;
    for (const mc::LayerInfo* l : targets)
      if (l->block >= 0) in_blocks.insert(l->name);
    mc::GptqOptions go;
    go.spec = spec, go.damp = damp, go.act_order = act_order, go.static_groups = static_groups;
    mc::SequentialOptions so;
    so.progress = [&](const mc::LayerInfo& l, int64_t i, int64_t n) {
      if (common.quiet) return;
      const double el = since(t), eta = el / std::max<int64_t>(1, i - 1) * (n - i + 1);
      if (tty)
        std::printf("\rgptq layer %lld/%lld %-36s %5.1f s, ETA %4.0f s", static_cast<long long>(i),
                    static_cast<long long>(n), l.name.c_str(), el, i > 1 ? eta : 0.0), std::fflush(stdout);
      else
        std::printf("gptq layer %lld/%lld %s (%.1f s)\n", static_cast<long long>(i), static_cast<long long>(n),
                    l.name.c_str(), el);
    };
    mc::compress_block_sequential(*model, calib_x, in_blocks,
        [&](const mc::LayerInfo& l, const at::Tensor& w_full, const mc::HessianAccumulator& st) {
          const at::Tensor w = w_full.to(at::kFloat).reshape({w_full.size(0), -1});
          mc::GptqResult g = mc::gptq_quantize(w, st.hessian(), go, l.name);
          mc::QuantResult q = g.quant;
          if (w_full.dim() != 2) q.weight_shape = w_full.sizes().vec();
          const at::Tensor wq = q.dequantize();
          // Relative output error on this layer's calibration inputs: tr(D H Dᵀ) / tr(W H Wᵀ), H ∝ XᵀX.
          const at::Tensor H = st.hessian().to(at::kFloat), d = w - wq;
          const double den = (at::matmul(w, H) * w).sum().item<double>();
          mc::LayerRow row;
          row.name = l.name;
          row.shape = mc::shape_str(w_full.sizes().vec());
          row.scheme = "gptq " + spec.describe();
          row.params = w.numel();
          row.rel_output_error = den > 0 ? (at::matmul(d, H) * d).sum().item<double>() / den : 0.0;
          if (g.damp_retries)
            rep.warnings.push_back(l.name + ": Cholesky needed " + std::to_string(g.damp_retries) +
                                   " retries; damping raised to " + fmt("%g", g.damp_rel) + " of mean(diag H)");
          if (g.dead_columns) row.note = std::to_string(g.dead_columns) + " dead input columns";
          rep.layers.push_back(row);
          quantized.emplace(l.weight, std::move(q));
          return wq.reshape(w_full.sizes());
        },
        so);
    if (tty) std::printf("\r%-80s\r", "");
    for (const mc::LayerInfo* l : targets)
      if (l->block < 0) mc::fail("quantize", "layer ", l->name, " lies outside the blocks; gptq covers block layers only");
  } else {
    int64_t i = 0;
    for (const mc::LayerInfo* l : targets) {
      const at::Tensor w_full = model->param(l->weight).to(at::kFloat);
      const at::Tensor w = w_full.reshape({w_full.size(0), -1});  // conv kernels as [out, in*kh*kw]
      mc::QuantResult q = mc::rtn_quantize(w, spec, l->name);
      if (w_full.dim() != 2) q.weight_shape = w_full.sizes().vec();
      at::Tensor wq = q.dequantize();
      mc::LayerRow row;
      row.name = l->name;
      row.shape = mc::shape_str(w_full.sizes().vec());
      row.scheme = spec.describe();
      row.params = w.numel();
      if (spec.group_size > 0 && w.size(1) % spec.group_size)
        row.note = "last group of " + std::to_string(w.size(1) % spec.group_size) + " columns";
      auto it = inputs.find(l->name);
      if (it != inputs.end() && it->second.size(-1) == w.size(1)) {
        at::Tensor x = it->second.to(w.device());
        at::Tensor y = at::matmul(x, w.t()), e = at::matmul(x, (w - wq).t());
        double den = y.pow(2).sum().item<double>();
        row.rel_output_error = den > 0 ? e.pow(2).sum().item<double>() / den : 0.0;
      }
      rep.layers.push_back(row);
      model->set_param(l->weight, wq.reshape(w_full.sizes()));
      quantized.emplace(l->weight, std::move(q));
      if (!common.quiet && ::isatty(1))
        std::printf("\rquantizing layer %lld/%zu %-40s", static_cast<long long>(++i), targets.size(), l->name.c_str()),
            std::fflush(stdout);
    }
    if (!common.quiet && ::isatty(1)) std::printf("\r%-70s\r", "");

  }
  rep.steps.push_back({"quantize " + std::to_string(targets.size()) + " layers", since(t)});

  // Write: dense parameters as they are, quantized ones packed.
  t = Clock::now();
  fs::create_directories(out);
  const std::string out_model = (fs::path(out) / "model.safetensors").string();
  std::map<std::string, at::Tensor> dense;
  for (const auto& [k, v] : model->params())
    if (!quantized.count(k)) dense[k] = v;
  auto meta = model->config_metadata();
  write_packed_checkpoint(out_model, dense, quantized, meta);
  rep.output = out_model;
  rep.steps.push_back({"write packed checkpoint", since(t)});
  rep.size_before = model_bytes(model_path);
  rep.size_after = fs::file_size(out_model);
  if (rep.size_after >= rep.size_before)
    rep.warnings.push_back("the output (" + human_bytes(rep.size_after) + ") is not smaller than the input (" +
                           human_bytes(rep.size_before) + "): for a model this small, metadata and scales outweigh the savings");

  // Stored bits per quantized weight, from what the file really holds.
  {
    auto r = mc::open_checkpoint(out_model);
    for (auto& row : rep.layers) {
      const std::string key = model->layer(row.name).weight;
      uint64_t bytes = 0;
      for (const char* part : {".qweight", ".scales", ".zeros"})
        if (r->contains(key + part)) bytes += r->info(key + part).nbytes;
      row.bits_per_weight = 8.0 * double(bytes) / double(row.params);
    }
  }

  if (have_eval) {
    t = Clock::now();
    auto reloaded = mc::load_model(out_model, lo);
    auto baseline = mc::load_model(model_path, lo);
    evaluate_into(*reloaded, baseline.get(), ed, eo, true, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate compressed (reloaded from the file)", since(t)});
  }
  mc::write_report(rep, out);

  if (!common.quiet) {
    std::printf("\n%-40s %12s %12s %10s\n", "", "baseline", "compressed", "change");
    auto val = [](const mc::MetricRow& m, const std::optional<double>& v) {
      if (!v) return std::string("");
      return m.percent ? fmt("%.2f%%", 100 * *v) : fmt(("%." + std::to_string(m.decimals) + "f").c_str(), *v);
    };
    for (const auto& m : rep.metrics) {
      std::string change = m.baseline && m.compressed && *m.baseline != 0
                               ? fmt("%+.2f%%", 100 * (*m.compressed - *m.baseline) / std::fabs(*m.baseline))
                               : "";
      std::printf("%-40s %12s %12s %10s\n", m.name.c_str(), val(m, m.baseline).c_str(), val(m, m.compressed).c_str(),
                  change.c_str());
    }
    std::printf("%-40s %12s %12s %9.2fx\n", "file size", human_bytes(rep.size_before).c_str(),
                human_bytes(rep.size_after).c_str(), double(rep.size_before) / double(rep.size_after));
    double qbits = 0, qn = 0;
    for (const auto& l : rep.layers) qbits += l.bits_per_weight * l.params, qn += l.params;
    std::printf("%-40s %12s %12s\n", "bits per quantized weight", "32", fmt("%.3f", qbits / qn).c_str());
    if (auto r = rep.retention()) std::printf("\nretention %.2f%% (%s)\n", 100 * *r,
                                              ed.labeled ? "compressed / baseline top-1" : "baseline / compressed perplexity");
    for (const auto& w : rep.warnings) std::printf("warning: %s\n", w.c_str());
    std::printf("report: %s/report.md\n", out.c_str());
  }
  return 0;
}

}  // namespace mcli
