// mcompress prune --method sparsegpt|wanda|magnitude (--sparsity 0.5 | --pattern 2:4) --calib DATA MODEL -o OUT
//   [--bits 4 --group-size 32] [--distribution uniform|global|owl] [--eval DATA]
// Prunes the matmul weights block by block (prune/prune.h), writes OUT/model.safetensors (pruned
// weights in the sparse packed layout, quantized when --bits is given) and OUT/report.{json,md}, and
// evaluates baseline and the reloaded file.
// --structured ffn=0.25,heads=0.25,blocks=1 (llama): removes whole FFN channels, heads / KV groups and
// blocks instead (prune/structured.h); OUT/model.safetensors has the smaller shapes and config, and the
// report gives the forward speedup measured on the calibration batch in the same run.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>
#include <unistd.h>

#include "cli.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/model.h"
#include "mcompress/prune/prune.h"
#include "mcompress/prune/structured.h"
#include "mcompress/quant/packed.h"
#include "mcompress/report.h"
#include "model_files.h"

namespace mcli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Best of 3 forward passes over `x` (after one warm-up), seconds.
double forward_seconds(mc::Model& m, const at::Tensor& x) {
  at::NoGradGuard no_grad;
  m.forward(x);
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const auto t = Clock::now();
    m.forward(x);
    best = std::min(best, since(t));
  }
  return best;
}

// --structured: prune_structured, write the smaller model, time dense vs pruned, evaluate the reloaded file.
int run_structured(std::unique_ptr<mc::Model> model, const at::Tensor& calib_x, mc::StructuredOptions so,
                   int64_t batch, const std::string& model_path, const std::string& out, const mc::LoadOptions& lo,
                   bool have_eval, const EvalData& ed, const mc::LmEvalOptions& eo, mc::Report& rep, bool quiet) {
  rep.method = "structured";
  rep.title = fs::path(model_path).filename().string() + ": structured " + mc::describe(so);
  for (const char* k : {"sparsity", "storage"}) rep.settings.erase(k);
  so.batch = batch;
  auto t = Clock::now();
  mc::StructuredResult res = mc::prune_structured(*model, calib_x, so);
  for (const auto& [k, v] : res.settings) rep.settings[k] = v;
  std::string removed;
  for (const auto& r : res.removed) removed += (removed.empty() ? "" : "; ") + r;
  rep.settings["removed"] = removed.empty() ? "nothing" : removed;
  rep.steps.push_back({"structured prune", since(t), mc::take_peak_rss_mib()});
  auto pruned = mc::make_structured_model(res);
  pruned->to(model->device());
  {
    const at::Tensor xb = calib_x.narrow(0, 0, std::min<int64_t>(batch, calib_x.size(0)));
    const double td = forward_seconds(*model, xb), tp = forward_seconds(*pruned, xb);
    rep.settings["forward speedup"] = fmt("%.2fx", td / tp) + " (" + fmt("%.2f ms", 1e3 * td) + " -> " +
                                      fmt("%.2f ms", 1e3 * tp) + " per forward of " + std::to_string(xb.size(0)) +
                                      " x " + std::to_string(xb.size(1)) + " calibration tokens, best of 3)";
  }
  t = Clock::now();
  fs::create_directories(out);
  const std::string out_model = (fs::path(out) / "model.safetensors").string();
  mc::save_model(*pruned, out_model);
  rep.output = out_model;
  rep.steps.push_back({"write", since(t), mc::take_peak_rss_mib()});
  rep.size_before = model_bytes(model_path);
  rep.size_after = fs::file_size(out_model);
  model.reset(), pruned.reset();
  if (have_eval) {
    t = Clock::now();
    auto reloaded = mc::load_model(out_model, lo);
    auto baseline = mc::load_model(model_path, lo);
    evaluate_into(*reloaded, baseline.get(), ed, eo, true, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate pruned (reloaded from the file)", since(t), mc::take_peak_rss_mib()});
  }
  mc::write_report(rep, out);
  if (!quiet) {
    std::printf("\nstructured %s: parameters %s, forward speedup %s\n", mc::describe(so).c_str(),
                rep.settings["parameters"].c_str(), rep.settings["forward speedup"].c_str());
    print_summary(rep, ed.labeled, out, "");
  }
  return 0;
}

}  // namespace

int cmd_prune(const std::vector<std::string>& args) {
  po::options_description desc("prune options");
  std::string model_path, out, targets, ignore, pattern, storage, structured;
  RunDataOptions data;
  std::string &eval_data = data.eval_data, &calib_data = data.calib_data, &tokenizer = data.tokenizer,
              &arch = data.arch, &device = data.device, &separator = data.separator;
  int64_t &window = data.window, &calib_samples = data.calib_samples, &calib_seqlen = data.calib_seqlen,
          &max_docs = data.max_docs;
  bool& truncate = data.truncate;
  uint64_t& seed = data.seed;
  mc::PruneOptions o;
  int bits = 0;
  int64_t group_size = 32;
  bool per_channel = false, asym = false;
  desc.add_options()
      ("model", po::value<std::string>(&model_path)->required(), "model to prune (any format load_model reads)")
      ("output,o", po::value<std::string>(&out)->required(), "output directory: model.safetensors + report.{json,md}")
      ("method", po::value<std::string>(&o.method)->default_value("sparsegpt"), "sparsegpt | wanda | magnitude")
      ("sparsity", po::value<double>(&o.sparsity)->default_value(0.5), "fraction of weights zeroed, [0, 1)")
      ("pattern", po::value<std::string>(&pattern), "N:M semi-structured: N of every M input columns zeroed (2:4, 4:8)")
      ("distribution", po::value<std::string>(&o.distribution)->default_value("uniform"),
       "sparsity per layer: uniform | global (magnitude) | owl (outlier-weighted per block)")
      ("owl-lambda", po::value<double>(&o.owl_lambda)->default_value(0.08), "owl: largest deviation from --sparsity")
      ("owl-threshold", po::value<double>(&o.owl_threshold)->default_value(5.0), "owl: outlier = score above this x the layer mean")
      ("bits", po::value<int>(&bits)->default_value(0), "also quantize the survivors to B bits (sparsegpt: in the same pass)")
      ("group-size", po::value<int64_t>(&group_size)->default_value(32), "with --bits: input columns per scale")
      ("per-channel", po::bool_switch(&per_channel), "with --bits: one scale per output channel")
      ("asym", po::bool_switch(&asym), "with --bits: asymmetric grid")
      ("structured", po::value<std::string>(&structured),
       "llama: remove whole parts instead, e.g. ffn=0.25,heads=0.25,blocks=1 (fractions of FFN channels and heads "
       "per block, whole blocks); smaller shapes, faster forward")
      ("storage", po::value<std::string>(&storage)->default_value("sparse"),
       "sparse (bitmask or N:M indices + packed survivors) or dense")
      ("targets", po::value<std::string>(&targets), "comma-separated layer patterns (glob or re:REGEX)")
      ("ignore", po::value<std::string>(&ignore), "comma-separated layer patterns to leave alone")
      ("true-sequential", po::bool_switch(&o.true_sequential), "prune q,k,v -> o -> gate,up -> down in turn")
      ("damp", po::value<double>(&o.damp)->default_value(0.01), "sparsegpt: damping as a fraction of mean(diag H)");
  add_run_data_options(desc, data, 128, "calibration sequences / examples");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  const std::string usage =
      "--method sparsegpt|wanda|magnitude (--sparsity 0.5 | --pattern 2:4) [--bits 4] --calib DATA MODEL -o OUT "
      "[--eval DATA]";
  if (!parse_command_line("prune", usage, args, desc, pos, vm, common)) return 0;
  if (!pattern.empty()) {
    const auto c = pattern.find(':');
    try {
      if (c == std::string::npos) throw std::invalid_argument("no colon");
      o.prune_n = std::stoi(pattern.substr(0, c));
      o.prune_m = std::stoi(pattern.substr(c + 1));
    } catch (const std::exception&) {
      mc::fail("prune", "--pattern '", pattern, "' is not N:M (e.g. 2:4)");
    }
    if (!vm["sparsity"].defaulted()) mc::fail("prune", "--pattern and --sparsity exclude each other");
  }
  if (storage != "sparse" && storage != "dense") mc::fail("prune", "--storage must be sparse or dense");
  if (calib_samples < 1 || calib_seqlen < 1) mc::fail("prune", "--calib-samples and --calib-seqlen must be >= 1");
  if (bits) {
    mc::QuantSpec q;
    q.bits = bits, q.group_size = per_channel ? 0 : group_size, q.symmetric = !asym;
    if (!per_channel && group_size < 1) mc::fail("prune", "--group-size ", group_size, " must be >= 1");
    q.validate("(all layers)", 1 << 30);
    o.quant = q;
  }
  o.targets = split_list(targets), o.ignore = split_list(ignore);
  mc::StructuredOptions so;
  if (!structured.empty()) {
    so = mc::parse_structured_options(structured);
    if (bits || !pattern.empty()) mc::fail("prune", "--structured excludes --bits and --pattern");
    if (eval_data.empty() && calib_data.empty())
      mc::fail("prune", "--structured needs calibration data: --calib DATA (or --eval DATA)");
  }

  std::string cmdline = "mcompress prune";
  for (const auto& a : args) cmdline += " " + a;
  mc::Report rep;
  rep.model = model_path;
  rep.method = o.method;
  rep.command_line = cmdline;
  rep.settings["sparsity"] = o.prune_n ? std::to_string(o.prune_n) + ":" + std::to_string(o.prune_m) + " (" +
                                             fmt("%.0f%%", 100.0 * o.prune_n / o.prune_m) + ")"
                                       : fmt("%.0f%%", 100 * o.sparsity) + " (" + o.distribution + ")";
  if (o.quant) rep.settings["quantization"] = o.quant->describe() + ", fp16 scales";
  rep.settings["storage"] = storage;

  auto t = Clock::now();
  mc::LoadOptions lo;
  lo.arch_file = arch;
  lo.device = device;
  auto model = mc::load_model(model_path, lo);
  rep.steps.push_back({"load model", since(t), mc::take_peak_rss_mib()});
  rep.title = fs::path(model_path).filename().string() + ": " + o.method + " " +
              (o.prune_n ? pattern : fmt("%.0f%%", 100 * o.sparsity)) + (o.quant ? " + " + o.quant->describe() : "");

  if (!structured.empty()) mc::check_structured(*model, so);  // before any data is read
  else mc::prune_layers(*model, o);  // bad options and patterns fail before any data is read
  const bool have_eval = !eval_data.empty();
  if (o.method != "magnitude" && !have_eval && calib_data.empty())
    mc::fail("prune", "--method ", o.method, " needs calibration data: --calib DATA (or --eval DATA)");
  EvalData ed;
  mc::LmEvalOptions eo;
  eo.window = window, eo.truncate = truncate, eo.max_docs = max_docs;
  if (have_eval) {
    t = Clock::now();
    ed = load_eval_data(*model, model_path, {eval_data, tokenizer, separator});
    evaluate_into(*model, nullptr, ed, eo, false, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate baseline", since(t), mc::take_peak_rss_mib()});
  }
  at::Tensor calib_x;
  if (have_eval || !calib_data.empty()) {
    EvalData calib = calib_data.empty() ? ed : load_eval_data(*model, model_path, {calib_data, tokenizer, separator});
    calib_x = calibration_inputs(calib, calib_samples, calib_seqlen, seed);
    rep.settings["calibration"] = std::to_string(calib_x.size(0)) +
                                  (calib.labeled ? " examples" : " x " + std::to_string(calib_x.size(1)) + " tokens") +
                                  " (seed " + std::to_string(seed) + ")";
    rep.seed = std::to_string(seed);
  }

  if (!structured.empty())
    return run_structured(std::move(model), calib_x, so, o.batch, model_path, out, lo, have_eval, ed, eo, rep,
                          common.quiet);

  t = Clock::now();
  o.progress = layer_progress(o.method, common.quiet);
  // Resume: each finished block goes to OUT/.resume; a rerun after an interruption restores them.
  // A directory this run created goes again if the run fails (bad input found while pruning).
  JobOutput job(out, "prune", args, {model_path, calib_data, eval_data, tokenizer, arch}, common.quiet);
  o.journal = &job.journal();
  mc::PruneResult res = mc::prune_model(*model, calib_x, o);
  job.keep();
  end_progress(common.quiet);
  for (const auto& [k, v] : res.settings) rep.settings[k] = v;
  rep.layers = res.layers;
  rep.warnings = res.warnings;
  rep.steps.push_back({"prune " + std::to_string(res.layers.size()) + " layers", since(t), mc::take_peak_rss_mib()});

  t = Clock::now();
  const std::string out_model = (fs::path(out) / "model.safetensors").string();
  {
    mc::PackedCheckpointWriter writer(out_model);
    for (const auto& [k, v] : model->params())
      if (!res.pruned.count(k)) writer.add_dense(k, v);
    for (const auto& [key, p] : res.pruned) {
      const at::Tensor w = p.weight.reshape(model->param(key).sizes());
      if (storage == "sparse") {
        mc::SparseLayout layout;
        layout.n = o.prune_n, layout.m = o.prune_m;
        writer.add_sparse(key, p.weight, layout, p.quant ? &*p.quant : nullptr);
      } else if (p.quant) {
        writer.add_quantized(key, *p.quant);
      } else {
        writer.add_dense(key, w);
      }
    }
    writer.finish(model->config_metadata());
  }
  rep.output = out_model;
  rep.steps.push_back({"write", since(t), mc::take_peak_rss_mib()});
  rep.size_before = model_bytes(model_path);
  rep.size_after = fs::file_size(out_model);
  {
    auto r = mc::open_checkpoint(out_model);
    for (auto& row : rep.layers) {
      const std::string key = model->layer(row.name).weight;
      uint64_t bytes = 0;
      for (const auto& ti : r->tensors())
        if (ti.name == key || ti.name.rfind(key + ".", 0) == 0) bytes += ti.nbytes;
      row.bits_per_weight = 8.0 * double(bytes) / double(row.params);
    }
  }
  if (rep.size_after >= rep.size_before)
    rep.warnings.push_back("the output (" + human_bytes(rep.size_after) + ") is not smaller than the input (" +
                           human_bytes(rep.size_before) + "): this pattern and storage save no bytes");
  {
    // What the same values cost in the dense layout: f32, or the quantized grid (codes + fp16 scales).
    double dense_bits = 32;
    if (o.quant) {
      const double g = o.quant->group_size > 0 ? double(o.quant->group_size) : 1e9;
      dense_bits = o.quant->bits + 16.0 / g + (o.quant->symmetric ? 0.0 : o.quant->bits / g);
    }
    double b = 0, n = 0;
    for (const auto& l : rep.layers) b += l.bits_per_weight * double(l.params), n += double(l.params);
    if (storage == "sparse" && n > 0 && b / n > 0.85 * dense_bits)
      rep.warnings.push_back("the sparse layout stores " + fmt("%.2f", b / n) + " bits per pruned weight against " +
                             fmt("%.2f", dense_bits) + " dense: the mask or indices eat most of the saving (2:4 or "
                             "a larger sparsity saves more)");
  }
  rep.settings["sparse kernels"] = "none: sparse weights run as dense matrices (smaller files, same speed)";
  if (storage == "dense" && !o.quant)
    rep.warnings.push_back("--storage dense keeps every zero: the file is as large as the input and no faster");
  model.reset();
  if (have_eval) {
    t = Clock::now();
    auto reloaded = mc::load_model(out_model, lo);
    auto baseline = mc::load_model(model_path, lo);
    evaluate_into(*reloaded, baseline.get(), ed, eo, true, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate pruned (reloaded from the file)", since(t), mc::take_peak_rss_mib()});
  }
  mc::write_report(rep, out);
  job.finish();
  if (!common.quiet) {
    std::printf("\nsparsity %.2f%% of the pruned layers' weights\n", 100 * res.sparsity);
    print_summary(rep, ed.labeled, out, "stored bits per pruned weight");
  }
  return 0;
}

}  // namespace mcli
