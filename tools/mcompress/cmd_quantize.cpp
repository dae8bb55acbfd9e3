// mcompress quantize --method rtn --bits 4 --group-size 32 [--sym|--asym] MODEL -o OUT [--eval DATA]
// Quantizes the matmul weights (optionally embeddings / classifier), writes OUT/model.safetensors in the
// packed layout, reloads it, evaluates baseline and compressed, and writes OUT/report.{json,md}.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <unistd.h>
#include <cmath>

#include "cli.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/model.h"
#include "mcompress/ptq.h"
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

}  // namespace

// "PATTERN:bits=8,group-size=0,asym" -> an override of `base` for the layers PATTERN matches (the
// last ':' ends the pattern, so "re:..." patterns work).
static mc::PtqOptions::Override parse_override(const std::string& text, const mc::QuantSpec& base) {
  const size_t c = text.rfind(':');
  if (c == std::string::npos || c == 0 || (text.rfind("re:", 0) == 0 && c == 2))
    mc::fail("quantize", "--override '", text, "' is not PATTERN:SETTINGS (e.g. 'layers.0.*:bits=8')");
  mc::PtqOptions::Override ov;
  ov.patterns = {text.substr(0, c)};
  ov.spec = base;
  for (const auto& item : split_list(text.substr(c + 1))) {
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq), val = eq == std::string::npos ? "" : item.substr(eq + 1);
    try {
      if (key == "bits") ov.spec.bits = std::stoi(val);
      else if (key == "group-size" || key == "group_size") ov.spec.group_size = std::stoll(val);
      else if (key == "per-channel" && val.empty()) ov.spec.group_size = 0;
      else if (key == "per-tensor" && val.empty()) ov.spec.group_size = -1;
      else if (key == "sym" && val.empty()) ov.spec.symmetric = true;
      else if (key == "asym" && val.empty()) ov.spec.symmetric = false;
      else if (key == "mse-clip" && val.empty()) ov.spec.mse_clip = true;
      else throw std::invalid_argument("key");
    } catch (const std::exception&) {
      mc::fail("quantize", "--override '", text, "': bad setting '", item,
               "' (allowed: bits=N, group-size=G, per-channel, per-tensor, sym, asym, mse-clip)");
    }
  }
  ov.spec.validate("override " + ov.patterns[0], 1 << 30);
  return ov;
}

int cmd_quantize(const std::vector<std::string>& args) {
  po::options_description desc("quantize options");
  std::string model_path, out, targets, ignore, cand;
  std::vector<std::string> overrides;
  RunDataOptions data;
  std::string &eval_data = data.eval_data, &calib_data = data.calib_data, &tokenizer = data.tokenizer,
              &arch = data.arch, &device = data.device, &separator = data.separator;
  int64_t &window = data.window, &calib_samples = data.calib_samples, &calib_seqlen = data.calib_seqlen,
          &max_docs = data.max_docs;
  bool& truncate = data.truncate;
  uint64_t& seed = data.seed;
  mc::PtqOptions po_;
  mc::QuantSpec& spec = po_.spec;
  bool sym = false, asym = false, per_channel = false, per_tensor = false, no_clip = false, simulate = false;
  desc.add_options()
      ("model", po::value<std::string>(&model_path)->required(), "model to quantize (any format load_model reads)")
      ("output,o", po::value<std::string>(&out)->required(), "output directory: model.safetensors + report.{json,md}")
      ("method", po::value<std::string>(&po_.method)->default_value("rtn"),
       "rtn | imatrix | gptq | awq | smoothquant (all but rtn need calibration data)")
      ("bits", po::value<int>(&spec.bits)->default_value(4), "bits per weight, 2..8 (smoothquant: 8)")
      ("group-size", po::value<int64_t>(&spec.group_size)->default_value(32),
       "input columns per scale (a row whose length it does not divide ends with a shorter group)")
      ("per-channel", po::bool_switch(&per_channel), "one scale per output channel (smoothquant's default)")
      ("per-tensor", po::bool_switch(&per_tensor), "one scale for the whole matrix (rtn)")
      ("sym", po::bool_switch(&sym), "symmetric grid, no zero point (default)")
      ("asym", po::bool_switch(&asym), "asymmetric grid with a zero point per group")
      ("mse-clip", po::bool_switch(&spec.mse_clip), "rtn/gptq: search a clip ratio per group minimising the squared error")
      ("targets", po::value<std::string>(&targets),
       "comma-separated layer patterns to quantize (glob, or re:REGEX); default: every linear layer but the classifier")
      ("ignore", po::value<std::string>(&ignore), "comma-separated layer patterns to leave dense")
      ("quantize-embeddings", po::bool_switch(&po_.embeddings), "also quantize the token embedding (RTN)")
      ("quantize-classifier", po::bool_switch(&po_.classifier), "also quantize the output classifier (RTN)")
      ("quantize-conv", po::bool_switch(&po_.conv), "also quantize Conv2d kernels (as [out, in*kh*kw] matrices)")
      ("true-sequential", po::bool_switch(&po_.true_sequential),
       "inside a block, quantize q,k,v -> o -> gate,up -> down, each on inputs from the already quantized ones")
      ("fp64", po::bool_switch(&po_.fp64), "accumulate Hessians in float64")
      ("act-order", po::bool_switch(&po_.act_order), "gptq: quantize columns by descending Hessian diagonal")
      ("static-groups", po::bool_switch(&po_.static_groups), "gptq: fit every group's grid up front on the original weights")
      ("damp", po::value<double>(&po_.damp)->default_value(0.01), "gptq: damping as a fraction of mean(diag H)")
      ("keep-sparsity", po::bool_switch(&po_.keep_sparsity),
       "keep the zeros of a pruned model (gptq compensates them like SparseGPT) and store the sparse layout")
      ("no-clip", po::bool_switch(&no_clip), "awq: skip the clipping search")
      ("alpha", po::value<double>(&po_.smooth_alpha)->default_value(0.5), "smoothquant: migration strength 0..1")
      ("act-bits", po::value<int>(&po_.act_bits)->default_value(8), "smoothquant: bits of the per-token activations")
      ("simulate-int8", po::bool_switch(&simulate), "smoothquant: evaluate with simulated (float) int8 matmuls only")
      ("target-bpw", po::value<double>(&po_.target_bpw)->default_value(0),
       "mixed precision: mean code bits per weight to meet (e.g. 3.5), bits chosen per layer by a sensitivity scan")
      ("bits-candidates", po::value<std::string>(&cand)->default_value("3,4,8"), "mixed precision: bit widths to choose from")
      ("override", po::value<std::vector<std::string>>(&overrides)->composing(),
       "per-layer grid, repeatable: PATTERN:bits=8,group-size=64|per-channel,sym|asym (first match wins)");
  add_run_data_options(desc, data, 0, "calibration sequences / examples (default: 128; 8 for rtn's per-layer errors)");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  const std::string usage =
      "--method rtn|imatrix|gptq|awq|smoothquant --bits B (--group-size G | --per-channel) [--sym|--asym] "
      "[--calib DATA] [--target-bpw 3.5] MODEL -o OUT [--eval DATA]";
  if (!parse_command_line("quantize", usage, args, desc, pos, vm, common)) return 0;
  const std::string& method = po_.method;
  static const std::set<std::string> methods = {"rtn", "imatrix", "gptq", "awq", "smoothquant"};
  if (!methods.count(method))
    mc::fail("quantize", "--method '", method, "' is not available (allowed: rtn, imatrix, gptq, awq, smoothquant)");
  const bool calibrated = method != "rtn";
  if (calib_samples < 0 || calib_seqlen < 1) mc::fail("quantize", "--calib-samples must be >= 0, --calib-seqlen >= 1");
  if (calib_samples == 0) calib_samples = calibrated || po_.target_bpw > 0 ? 128 : 8;
  if (sym && asym) mc::fail("quantize", "--sym and --asym exclude each other");
  if (per_channel && per_tensor) mc::fail("quantize", "--per-channel and --per-tensor exclude each other");
  if (method == "smoothquant") {  // W8A8 unless the grid is given explicitly
    if (vm["bits"].defaulted()) spec.bits = 8;
    if (vm["group-size"].defaulted() && !per_tensor) per_channel = true;
  }
  if (spec.group_size < 1)
    mc::fail("quantize", "--group-size ", spec.group_size, " must be >= 1 (use --per-channel or --per-tensor)");
  if (per_channel) spec.group_size = 0;
  if (per_tensor) spec.group_size = -1;
  if (per_tensor && method != "rtn") mc::fail("quantize", "--per-tensor is only available with --method rtn");
  spec.symmetric = !asym;
  spec.validate("(all layers)", 1 << 30);  // bits and group size, before any work
  if (po_.target_bpw < 0) mc::fail("quantize", "--target-bpw must be > 0");
  for (const auto& ov : overrides) po_.overrides.push_back(parse_override(ov, spec));
  po_.awq_clip = !no_clip;
  po_.targets = split_list(targets), po_.ignore = split_list(ignore);
  po_.candidate_bits.clear();
  for (const auto& b : split_list(cand)) {
    try {
      po_.candidate_bits.push_back(std::stoi(b));
    } catch (const std::exception&) {
      mc::fail("quantize", "--bits-candidates: '", b, "' is not a number");
    }
  }

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
  if (method == "gptq") {
    rep.settings["damp"] = fmt("%g", po_.damp);
    if (po_.act_order) rep.settings["act-order"] = po_.static_groups ? "yes, static groups" : "yes";
  }
  if (method == "awq") rep.settings["clip search"] = po_.awq_clip ? "yes" : "no";
  if (method == "smoothquant")
    rep.settings["activations"] = "int" + std::to_string(po_.act_bits) + " per token, dynamic, symmetric (alpha " +
                                  fmt("%g", po_.smooth_alpha) + ")";
  if (po_.true_sequential) rep.settings["order"] = "true-sequential";
  if (!targets.empty()) rep.settings["targets"] = targets;
  if (!ignore.empty()) rep.settings["ignore"] = ignore;

  auto t = Clock::now();
  mc::LoadOptions lo;
  lo.arch_file = arch;
  lo.device = device;
  lo.int8_kernel = !simulate;
  auto model = mc::load_model(model_path, lo);
  rep.steps.push_back({"load model", since(t), mc::take_peak_rss_mib()});
  static const std::map<std::string, std::string> names = {
      {"rtn", "RTN"}, {"imatrix", "imatrix"}, {"gptq", "GPTQ"}, {"awq", "AWQ"}, {"smoothquant", "SmoothQuant"}};
  rep.title = fs::path(model_path).filename().string() + ": " + names.at(method) + " " + spec.describe() +
              (method == "smoothquant" ? ", a" + std::to_string(po_.act_bits) : "") +
              (po_.target_bpw > 0 ? ", mixed " + fmt("%g", po_.target_bpw) + " bits" : "");
  {
    // bad patterns fail before any data is read; a pruned input without --keep-sparsity is worth a word
    double zeros = 0, n = 0;
    for (const mc::LayerInfo* l : mc::select_layers(*model, po_)) {
      const at::Tensor& w = model->param(l->weight);
      zeros += w.eq(0).sum().item<double>(), n += double(w.numel());
    }
    if (!po_.keep_sparsity && n > 0 && zeros / n >= 0.25)
      rep.warnings.push_back(fmt("%.0f%% of the selected weights are exactly zero (a pruned model?): ", 100 * zeros / n) +
                             " --keep-sparsity keeps them zero and stores the sparse layout");
  }

  EvalData ed;
  const bool have_eval = !eval_data.empty();
  mc::LmEvalOptions eo;
  eo.window = window, eo.truncate = truncate, eo.max_docs = max_docs;
  if (have_eval) {
    t = Clock::now();
    ed = load_eval_data(*model, model_path, {eval_data, tokenizer, separator});
    evaluate_into(*model, nullptr, ed, eo, false, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate baseline", since(t), mc::take_peak_rss_mib()});
  }
  if ((calibrated || po_.target_bpw > 0) && !have_eval && calib_data.empty())
    mc::fail("quantize", "--method ", method, po_.target_bpw > 0 ? " with --target-bpw" : "",
             " needs calibration data: --calib DATA (or --eval DATA)");
  at::Tensor calib_x;
  if (have_eval || !calib_data.empty()) {
    EvalData calib = calib_data.empty() ? ed : load_eval_data(*model, model_path, {calib_data, tokenizer, separator});
    // rtn only measures per-layer errors: a short text gives shorter sequences instead of an error.
    calib_x = calibration_inputs(calib, calib_samples, calibrated || po_.target_bpw > 0 ? calib_seqlen : window, seed,
                                 !calibrated && po_.target_bpw <= 0);
    rep.settings["calibration"] = std::to_string(calib_x.size(0)) +
                                  (calib.labeled ? " examples" : " x " + std::to_string(calib_x.size(1)) + " tokens") +
                                  " (seed " + std::to_string(seed) + ")";
    rep.seed = std::to_string(seed);
  }

  t = Clock::now();
  po_.progress = layer_progress(method, common.quiet);
  // The output is written while quantizing: each finished block's packed weights go to disk and the
  // model's copies are released, so memory stays that of one block (Model::set_low_memory).
  JobOutput job(out, "quantize", args, {model_path, calib_data, eval_data, tokenizer, arch}, common.quiet);
  po_.journal = &job.journal();
  const std::string out_model = (fs::path(out) / "model.safetensors").string();
  mc::PackedCheckpointWriter writer(out_model);
  std::set<std::string> written;
  model->set_low_memory(true);
  int64_t sparse_layers = 0;
  // With --keep-sparsity, a layer with zeros is stored in the sparse layout that costs the least
  // (bitmask, 2:4 or 4:8), when that beats the dense packed layout.
  auto add_quantized = [&](const std::string& key, const mc::QuantResult& q) {
    if (po_.keep_sparsity && q.weight_shape.empty()) {
      const at::Tensor w = q.dequantize();
      const int64_t out_f = w.size(0), in_f = w.size(1), kept = w.ne(0).sum().item<int64_t>();
      const bool gi = q.g_idx.defined();
      int64_t best = mc::dense_packed_bytes(out_f, in_f, &q.spec, gi);
      std::optional<mc::SparseLayout> pick;
      mc::SparseLayout bm;
      if (int64_t b = mc::sparse_bytes(out_f, in_f, kept, bm, &q.spec, gi); b < best) best = b, pick = bm;
      for (auto [n, m] : {std::pair{2, 4}, std::pair{4, 8}}) {
        if (in_f % m) continue;
        if (!w.eq(0).reshape({out_f, in_f / m, m}).sum(-1).ge(n).all().item<bool>()) continue;
        mc::SparseLayout nm;
        nm.n = n, nm.m = m;
        // On a tie with the bitmask (2:4 costs the same), N:M: fixed-size rows suit kernels.
        if (int64_t b = mc::sparse_bytes(out_f, in_f, out_f * in_f / m * (m - n), nm, &q.spec, gi); b <= best)
          best = b, pick = nm;
      }
      if (pick) {
        writer.add_sparse(key, w, *pick, &q);
        ++sparse_layers;
        return;
      }
    }
    writer.add_quantized(key, q);
  };
  po_.after_block = [&](int, mc::PtqResult& partial) {
    for (auto& [key, q] : partial.quantized) {
      add_quantized(key, q);
      written.insert(key);
      model->release_param(key);
    }
    partial.quantized.clear();
  };
  mc::PtqResult res = mc::quantize_model(*model, calib_x, po_);
  end_progress(common.quiet);
  for (const auto& [k, v] : res.settings) rep.settings[k] = v;
  rep.layers = res.layers;
  for (const auto& w : res.warnings) rep.warnings.push_back(w);
  rep.steps.push_back({"quantize " + std::to_string(res.layers.size()) + " layers (writing each block)", since(t), mc::take_peak_rss_mib()});

  // The rest: layers quantized after the blocks, then dense parameters as they are.
  t = Clock::now();
  for (const auto& [key, q] : res.quantized) add_quantized(key, q), written.insert(key);
  if (po_.keep_sparsity) rep.settings["sparsity"] = std::to_string(sparse_layers) + " layers kept sparse (sparse layout)";
  for (const auto& [k, v] : model->params())
    if (!written.count(k) && v.defined()) writer.add_dense(k, v);
  auto meta = model->config_metadata();
  if (!res.act_bits.empty()) {
    std::string j = "{\"layers\": {";
    bool first = true;
    for (const auto& [name, bits] : res.act_bits) {
      j += (first ? "" : ", ") + std::string("\"") + name + "\": {\"bits\": " + std::to_string(bits) +
           ", \"granularity\": \"per-token\", \"symmetric\": true, \"dynamic\": true}";
      first = false;
    }
    meta[mc::kActivationMetadataKey] = j + "}}";
  }
  writer.finish(meta);
  job.keep();
  rep.output = out_model;
  rep.steps.push_back({"write packed checkpoint", since(t), mc::take_peak_rss_mib()});
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

  model.reset();  // what is left of it; the evaluation reloads the written file
  if (have_eval) {
    t = Clock::now();
    auto reloaded = mc::load_model(out_model, lo);
    auto baseline = mc::load_model(model_path, lo);
    evaluate_into(*reloaded, baseline.get(), ed, eo, true, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate compressed (reloaded from the file)", since(t), mc::take_peak_rss_mib()});
    if (!res.act_bits.empty() && !simulate) {
      // The same W8A8 model with the int8 matmuls simulated in float: a check of the int8 kernel.
      t = Clock::now();
      mc::LoadOptions sim_lo = lo;
      sim_lo.int8_kernel = false;
      auto sim = mc::load_model(out_model, sim_lo);
      std::vector<mc::MetricRow> sim_rows;
      std::string proto;
      evaluate_into(*sim, nullptr, ed, eo, true, sim_rows, proto);
      for (auto& m : sim_rows)
        if (m.is_primary) {
          m.name += " (int8 matmuls simulated in float)";
          m.is_primary = false;
          rep.metrics.push_back(m);
        }
      rep.steps.push_back({"evaluate compressed, int8 simulated", since(t), mc::take_peak_rss_mib()});
    }
  }
  mc::write_report(rep, out);
  job.finish();

  if (!common.quiet) print_summary(rep, ed.labeled, out, "bits per quantized weight");
  return 0;
}

}  // namespace mcli
