// The prune stage: options -> PruneOptions, and the job, unstructured/N:M or structured (pipeline.h).
#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "job.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/methods.h"
#include "mcompress/prune/prune.h"
#include "mcompress/prune/structured.h"
#include "mcompress/quant/packed.h"
#include "prune_stage.h"
#include "quantize_stage.h"

namespace mc {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// Best of 3 forward passes over `x` (after one warm-up), seconds.
double forward_seconds(Model& m, const at::Tensor& x) {
  at::NoGradGuard no_grad;
  m.forward(x);
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const auto t = Clock::now();
    m.forward(x);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t).count());
  }
  return best;
}

// --structured: prune_structured, write the smaller model, time dense vs pruned, evaluate the reloaded file.
JobResult run_structured(JobRun& job, const PruneStage& st) {
  Report& rep = job.rep;
  rep.method = "structured";
  rep.title = fs::path(job.io.model).filename().string() + ": structured " + describe(st.structured);
  for (const char* k : {"sparsity", "storage"}) rep.settings.erase(k);
  StructuredOptions so = st.structured;
  so.batch = st.prune.batch;
  job.start();
  StructuredResult res = prune_structured(*job.model, job.calib_x, so);
  for (const auto& [k, v] : res.settings) rep.settings[k] = v;
  std::string removed;
  for (const auto& r : res.removed) removed += (removed.empty() ? "" : "; ") + r;
  rep.settings["removed"] = removed.empty() ? "nothing" : removed;
  job.step("structured prune");
  auto pruned = make_structured_model(res);
  pruned->to(job.model->device());
  {
    const at::Tensor xb = job.calib_x.narrow(0, 0, std::min<int64_t>(so.batch, job.calib_x.size(0)));
    const double td = forward_seconds(*job.model, xb), tp = forward_seconds(*pruned, xb);
    rep.settings["forward speedup"] = fmt_num("%.2fx", td / tp) + " (" + fmt_num("%.2f ms", 1e3 * td) + " -> " +
                                      fmt_num("%.2f ms", 1e3 * tp) + " per forward of " + std::to_string(xb.size(0)) +
                                      " x " + std::to_string(xb.size(1)) + " calibration tokens, best of 3)";
  }
  job.start();
  fs::create_directories(job.io.out);
  const std::string out_model = (fs::path(job.io.out) / "model.safetensors").string();
  save_model(*pruned, out_model);
  rep.output = out_model;
  job.step("write");
  rep.size_before = model_bytes(job.io.model);
  rep.size_after = fs::file_size(out_model);
  job.model.reset(), pruned.reset();
  job.evaluate_output(out_model, "evaluate pruned (reloaded from the file)");
  job.copy_companions();
  job.write_report();
  return job.result();
}

}  // namespace

PruneStage prune_stage(const StageOptions& so) {
  PruneStage st;
  PruneOptions& o = st.prune;
  const MethodInfo& method = method_of(so, MethodKind::Prune);
  o.method = method.name;
  o.sparsity = so.real("sparsity");
  o.distribution = so.text("distribution");
  o.owl_lambda = so.real("owl-lambda"), o.owl_threshold = so.real("owl-threshold");
  o.true_sequential = so.flag("true-sequential");
  o.damp = so.real("damp");
  const std::string pattern = so.text("pattern");
  if (!pattern.empty()) {
    const auto c = pattern.find(':');
    try {
      if (c == std::string::npos) throw std::invalid_argument("no colon");
      o.prune_n = std::stoi(pattern.substr(0, c));
      o.prune_m = std::stoi(pattern.substr(c + 1));
    } catch (const std::exception&) {
      so.fail("pattern", "'" + pattern + "' is not N:M (e.g. 2:4)");
    }
    if (so.has("sparsity")) so.fail("pattern", "and --sparsity exclude each other");
  }
  st.storage = so.text("storage");
  if (st.storage != "sparse" && st.storage != "dense") so.fail("storage", "must be sparse or dense");
  if (so.integer("calib-samples") < 1 || so.integer("calib-seqlen") < 1)
    so.fail("calib-samples", "and --calib-seqlen must be >= 1");
  if (const int bits = int(so.integer("bits"))) {
    QuantSpec q;
    const int64_t group_size = so.integer("group-size");
    q.bits = bits, q.group_size = so.flag("per-channel") ? 0 : group_size, q.symmetric = !so.flag("asym");
    if (!so.flag("per-channel") && group_size < 1) so.fail("group-size", std::to_string(group_size) + " must be >= 1");
    q.validate("(all layers)", 1 << 30);
    o.quant = q;
  }
  o.targets = so.list("targets"), o.ignore = so.list("ignore");
  if (so.has("structured")) {
    st.is_structured = true;
    st.structured = parse_structured_options(so.text("structured"));
    if (o.quant || !pattern.empty()) so.fail("structured", "excludes --bits and --pattern");
  }
  st.pattern = pattern;
  st.needs_calibration = st.is_structured || method.needs_calibration;
  st.calibration_for = st.is_structured ? "--structured" : "--method " + o.method;
  return st;
}

JobResult run_prune(const StageOptions& so, const JobIO& io, const EventSink& events) {
  PruneStage st = prune_stage(so);
  PruneOptions& o = st.prune;
  JobRun job(so, io, events);
  Report& rep = job.rep;
  rep.method = o.method;
  rep.settings["sparsity"] = o.prune_n ? std::to_string(o.prune_n) + ":" + std::to_string(o.prune_m) + " (" +
                                             fmt_num("%.0f%%", 100.0 * o.prune_n / o.prune_m) + ")"
                                       : fmt_num("%.0f%%", 100 * o.sparsity) + " (" + o.distribution + ")";
  if (o.quant) rep.settings["quantization"] = o.quant->describe() + ", fp16 scales";
  rep.settings["storage"] = st.storage;
  job.load(true, !st.is_structured);  // unstructured: bf16/f16 weights stay mapped, widened a layer at a time
  Model& model = *job.model;
  rep.title = fs::path(io.model).filename().string() + ": " + o.method + " " +
              (o.prune_n ? st.pattern : fmt_num("%.0f%%", 100 * o.sparsity)) + (o.quant ? " + " + o.quant->describe() : "");
  if (st.is_structured) check_structured(model, st.structured);  // before any data is read
  rep.plan = plan_stage(model, io.model, so);  // bad options and patterns fail before any data is read
  if (io.dry_run) return job.result();
  job.check_calibration(st.needs_calibration, st.calibration_for);  // before any data is read
  job.baseline();
  job.calibrate(st.needs_calibration, st.calibration_for, so.integer("calib-samples"),
                so.integer("calib-seqlen"));
  if (st.is_structured) return run_structured(job, st);

  job.check_disk(st.needs_calibration);  // before any work: the estimate from the plan and the calibration set
  if (st.needs_calibration) job.calibration_plan(o.method);
  job.start();
  o.progress = events.layer_progress(o.method);
  o.pass_progress = events.pass_progress(o.method);
  // Resume: each finished block goes to OUT/.resume; a rerun after an interruption restores them.
  // A directory this run created goes again if the run fails (bad input found while pruning).
  JobOutput out(io.out, job_identity(so, io), events);
  o.journal = &out.journal();
  // The output is written while pruning: each finished block's weights go to disk and the model's
  // copies are released, so memory stays that of one block (Model::set_low_memory).
  const std::string out_model = (fs::path(io.out) / "model.safetensors").string();
  PackedCheckpointWriter writer(out_model);
  std::set<std::string> written;
  model.set_low_memory(true);
  o.after_block = [&](int, PruneResult& partial) {
    for (auto& [key, p] : partial.pruned) {
      if (st.storage == "sparse") {
        SparseLayout layout;
        layout.n = o.prune_n, layout.m = o.prune_m;
        writer.add_sparse(key, p.weight, layout, p.quant ? &*p.quant : nullptr);
      } else if (p.quant) {
        writer.add_quantized(key, *p.quant);
      } else {
        writer.add_dense(key, p.weight.reshape(model.param(key).sizes()));
      }
      written.insert(key);
      model.release_param(key);
    }
    partial.pruned.clear();
  };
  PruneResult res = job.with_compute([&] { return prune_model(model, job.calib_x, o); });
  job.pass_done("prune " + std::to_string(res.layers.size()) + " layers (writing each block)", res.settings,
                res.layers, res.warnings);

  job.start();
  for (const auto& [k, v] : model.params())
    if (!written.count(k) && v.defined()) {
      writer.add_dense(k, job.as_stored(k, v));
      model.page_out_param(k);  // a mapped embedding / head read here does not stay resident
    }
  writer.finish(model.config_metadata());
  out.keep();
  rep.output = out_model;
  job.step("write");
  job.sizes(out_model);
  job.stored_bits(out_model, false);
  if (rep.size_after >= rep.size_before)
    rep.warnings.push_back("the output (" + human_size(rep.size_after) + ") is not smaller than the input (" +
                           human_size(rep.size_before) + "): this pattern and storage save no bytes");
  {
    // What the same values cost in the dense layout: the input's dtype, or the quantized grid.
    double dense_bits = rep.baseline_bits > 0 ? rep.baseline_bits : 32;
    if (o.quant) {
      const double g = o.quant->group_size > 0 ? double(o.quant->group_size) : 1e9;
      dense_bits = o.quant->bits + 16.0 / g + (o.quant->symmetric ? 0.0 : o.quant->bits / g);
    }
    double b = 0, n = 0;
    for (const auto& l : rep.layers) b += l.bits_per_weight * double(l.params), n += double(l.params);
    if (st.storage == "sparse" && n > 0 && b / n > 0.85 * dense_bits)
      rep.warnings.push_back("the sparse layout stores " + fmt_num("%.2f", b / n) + " bits per pruned weight against " +
                             fmt_num("%.2f", dense_bits) + " dense: the mask or indices eat most of the saving (2:4 or "
                             "a larger sparsity saves more)");
  }
  rep.settings["sparse kernels"] = "none: sparse weights run as dense matrices (smaller files, same speed)";
  if (st.storage == "dense" && !o.quant)
    rep.warnings.push_back("--storage dense keeps every zero: the file is as large as the input and no faster");
  rep.settings["achieved sparsity"] = fmt_num("%.2f%%", 100 * res.sparsity) + " of the pruned layers' weights";
  job.model.reset();
  job.evaluate_output(out_model, "evaluate pruned (reloaded from the file)");
  job.copy_companions();
  job.write_report();
  out.finish();
  return job.result();
}

}  // namespace mc
