// JobRun: the steps around every compressing pass (job.h).
#include "job.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "export/free_space.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/throughput.h"

namespace mc {

namespace fs = std::filesystem;

std::string fmt_num(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string human_size(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

std::string commas(uint64_t n) {
  std::string s = std::to_string(n), out;
  int c = 0;
  for (auto it = s.rbegin(); it != s.rend(); ++it, ++c) {
    if (c && c % 3 == 0) out.push_back(',');
    out.push_back(*it);
  }
  return std::string(out.rbegin(), out.rend());
}

std::string job_identity(const StageOptions& so, const JobIO& io) {
  std::vector<std::string> opts = {io.model};
  for (const auto& a : so.args()) opts.push_back(a);
  std::vector<std::string> inputs = {io.model};
  for (const char* f : {"calib", "eval", "tokenizer", "arch"})
    if (so.has(f)) inputs.push_back(so.text(f));
  return run_identity(so.pass(), opts, inputs);
}

JobRun::JobRun(const StageOptions& o, const JobIO& i, const EventSink& e) : so(o), io(i), events(e) {
  rep.model = io.model;
  rep.command_line = io.command_line;
  lo.arch_file = so.text("arch");
  lo.device = so.text("device");
  have_eval = so.has("eval");
  eo.window = so.integer("window"), eo.truncate = so.flag("truncate"), eo.max_docs = so.integer("max-docs");
  if (so.has("compute")) {
    const std::string c = so.text("compute");
    if (c != "f32" && c != "bf16") so.fail("compute", "must be f32 or bf16, not '" + c + "'");
    bf16_compute_ = c == "bf16";
    if (bf16_compute_)
      compute_note_ = "bf16 matmuls (--compute bf16): inputs and weights rounded to bf16; float32 accumulation, "
                      "outputs, Hessians and evaluations";
  }
}

void JobRun::step(const std::string& name) {
  rep.steps.push_back({name, std::chrono::duration<double>(std::chrono::steady_clock::now() - t_).count(),
                       take_peak_rss_mib()});
}

void JobRun::load(bool int8_kernel, bool keep_dtype) {
  start();
  lo.int8_kernel = int8_kernel;
  lo.keep_dtype = keep_dtype;
  model = load_model(io.model, lo);
  step("load model");
}

void JobRun::baseline() {
  if (!have_eval) return;
  start();
  ed = load_eval_data(*model, io.model, {so.text("eval"), so.text("tokenizer"), so.text("separator")});
  if (so.has("eval-range")) {
    slice_eval_data(ed, so.text("eval-range"), "--eval-range");
    rep.settings["evaluation data"] = so.text("eval") + " [" + so.text("eval-range") + "]";
  }
  evaluate_into(*model, nullptr, ed, eo, false, rep.metrics, rep.eval_protocol);
  step("evaluate baseline");
}

void JobRun::check_calibration(bool needed, const std::string& why) const {
  const bool from_eval = so.flag("calib-from-eval");
  if (from_eval && so.has("calib")) so.fail("calib-from-eval", "and --calib exclude each other");
  if (from_eval && !have_eval) so.fail("calib-from-eval", "needs --eval DATA");
  if (needed && !so.has("calib") && !from_eval)
    fail("pipeline", so.where(), ": ", why, " needs calibration data: --calib DATA (text other than the evaluation "
         "data), or --calib-from-eval to calibrate on the --eval data (the report then says it is not held out)");
}

void JobRun::calibrate(bool needed, const std::string& why, int64_t samples, int64_t seqlen, bool allow_short) {
  check_calibration(needed, why);
  const bool from_eval = so.flag("calib-from-eval");
  if (!so.has("calib") && !from_eval) return;
  EvalData calib = from_eval ? ed : load_eval_data(*model, io.model, {so.text("calib"), so.text("tokenizer"), so.text("separator")});
  if (so.has("calib-range")) slice_eval_data(calib, so.text("calib-range"), "--calib-range");
  calib_x = calibration_inputs(calib, samples, seqlen, so.unsigned_integer("seed"), allow_short);
  calib_path = from_eval ? so.text("eval") : so.text("calib");
  calib_is_eval = from_eval;
  const uint64_t seed = so.unsigned_integer("seed");
  rep.settings["calibration"] = std::to_string(calib_x.size(0)) +
                                (calib.labeled ? " examples" : " x " + std::to_string(calib_x.size(1)) + " tokens") +
                                " (seed " + std::to_string(seed) + ")";
  rep.settings["calibration data"] =
      calib_path + (so.has("calib-range") ? " [" + so.text("calib-range") + "]" : "") + " (sha256 " +
      sha256_file(calib_path).substr(0, 16) + ")" +
      (from_eval ? ": the evaluation data, NOT held out (--calib-from-eval)" : "");
  rep.seed = std::to_string(seed);
  if (from_eval)
    rep.warnings.push_back("calibrated on the evaluation data (--calib-from-eval): the figures are not held out and "
                           "read better than they would on unseen text");
  std::error_code ec;
  if (!from_eval && have_eval && fs::equivalent(so.text("calib"), so.text("eval"), ec)) {
    // One file for both: held out only where the two ranges do not overlap.
    bool overlap = !so.has("calib-range") || !so.has("eval-range");
    if (!overlap) {
      const auto [ca, cb] = parse_range(so.text("calib-range"), INT64_MAX, "--calib-range");  // checked when sliced
      const auto [ea, eb] = parse_range(so.text("eval-range"), INT64_MAX, "--eval-range");
      overlap = ca < eb && ea < cb;
    }
    if (overlap)
      rep.warnings.push_back("--calib and --eval are the same file and their ranges overlap: the figures are not "
                             "held out (split it with --calib-range and --eval-range)");
  }
}

void JobRun::sizes(const std::string& out_model) {
  rep.size_before = model_bytes(io.model);
  rep.size_after = fs::file_size(out_model);
  // The input's stored bits per weight of the compressed layers, from its dtypes (the plan read them
  // before any weight was released).
  std::map<std::string, double> before;
  for (const auto& p : rep.plan) before[p.name] = p.bits_before;
  double bits = 0, n = 0;
  for (const auto& row : rep.layers) {
    auto it = before.find(row.name);
    bits += (it == before.end() ? 32.0 : it->second) * double(row.params), n += double(row.params);
  }
  if (n > 0) rep.baseline_bits = bits / n;
}

void JobRun::stored_bits(const std::string& out_model, bool exact_parts_only) {
  auto r = open_checkpoint(out_model);
  for (auto& row : rep.layers) {
    const std::string key = model->layer(row.name).weight;
    uint64_t bytes = 0;
    if (exact_parts_only) {
      for (const char* part : {".qweight", ".scales", ".zeros", ".mins"})
        if (r->contains(key + part)) bytes += r->info(key + part).nbytes;
    } else {
      for (const auto& ti : r->tensors())
        if (ti.name == key || ti.name.rfind(key + ".", 0) == 0) bytes += ti.nbytes;
    }
    row.bits_per_weight = 8.0 * double(bytes) / double(row.params);
  }
}

void JobRun::check_disk(bool calibrated) {
  double out = double(model_bytes(io.model)), codes = 0;
  for (const auto& p : rep.plan) {
    out += double(p.params) * (p.bits_after - p.bits_before) / 8;
    // The journal keeps a block's codes: two a byte up to 4 bits, a byte each above (journal.h).
    codes += double(p.params) * (p.code_bits > 0 && p.code_bits <= 4 ? 0.5 : 1.0);
  }
  double hidden = 0;
  if (calibrated && calib_x.defined() && calib_x.dim() == 2)
    for (const auto& l : model->layers())
      if (l.block == 0 && l.in_features > 0) {  // the block's input width: the hidden size
        hidden = 2.0 * double(calib_x.numel()) * double(l.in_features) * 4;
        break;
      }
  const auto need = static_cast<uint64_t>(2 * std::max(0.0, out) + (calibrated ? codes + hidden : 0));
  require_free_space(io.out, need, "pipeline",
                     calibrated ? "the output written and assembled, and the resume journal"
                                : "the output written and assembled");
}

void JobRun::calibration_plan(const std::string& method) {
  if (!calib_x.defined() || calib_x.dim() != 2 || (events.quiet && !events.json) || model->num_blocks() == 0) return;
  const int64_t seqs = calib_x.size(0), len = calib_x.size(1), tokens = seqs * len;
  const TokenCost c = token_cost(*model, len);
  // Per block: a statistics pass and an output pass over every sequence (and one batch to find which
  // layers share an input), plus XᵀX for each distinct input (q/k/v and gate/up share one).
  double hessian = 0;
  std::set<std::string> shared;  // layers after a norm read its output together (one H)
  for (const ScaleGroup& g : model->scale_groups(0))
    if (g.prev_is_norm && !g.layers.empty()) {
      const double in = double(model->layer(g.layers[0]).in_features);
      hessian += 2.0 * in * in;
      shared.insert(g.layers.begin(), g.layers.end());
    }
  for (const auto& l : model->layers())
    if (l.block == 0 && l.kind == LayerKind::Linear && !shared.count(l.name))
      hessian += 2.0 * double(l.in_features) * double(l.in_features);
  // The passes stop after the last block holding a selected layer (compress_blocks).
  // A plan row that is not one layer ("(all blocks)": structured pruning) means every block.
  int last = -1;
  for (const auto& p : rep.plan) {
    const auto& ls = model->layers();
    auto it = std::find_if(ls.begin(), ls.end(), [&](const LayerInfo& l) { return l.name == p.name; });
    last = std::max(last, it == ls.end() ? model->num_blocks() - 1 : it->block);
  }
  if (last < 0) return;  // nothing inside the blocks: no calibration forward
  const double blocks = last + 1, share = blocks / double(model->num_blocks());
  const double forward = double(tokens) * (c.block_linear_flops + c.attn_flops_per_pos * double(len)) * 2.0 * share;
  const double flops = forward + double(tokens) * hessian * blocks;
  const double probe = matmul_gflops(c.block_shapes, std::min<int64_t>(tokens, 2048), model->device(), bf16_compute_);
  const double eta = probe > 0 ? flops / (probe * 1e9) : 0;
  const std::string line = "calibration: " + commas(uint64_t(tokens)) + " tokens (" + std::to_string(seqs) + " x " +
                           std::to_string(len) + ") through " + std::to_string(last + 1) +
                           (last + 1 < model->num_blocks() ? " of " + std::to_string(model->num_blocks()) : "") +
                           " blocks, two passes each plus Hessians: " +
                           (flops >= 1e11 ? fmt_num("%.1f TFLOP", flops / 1e12) : fmt_num("%.1f GFLOP", flops / 1e9)) +
                           ", about " + eta_text(eta) + " at this machine's matmul speed (" +
                           fmt_num("%.0f", probe) + " GFLOP/s" + (bf16_compute_ ? ", bf16" : "") + "), plus " +
                           method + "'s own work per layer";
  if (events.json)
    events.emit("plan", nlohmann::json({{"tokens", tokens}, {"blocks", last + 1}, {"flops", flops},
                                        {"matmul_gflops", probe}, {"eta_s", eta}}).dump());
  else
    events.print(line);
}

void JobRun::evaluate_output(const std::string& out_model, const std::string& step_name) {
  if (!have_eval) return;
  start();
  LoadOptions narrow = lo;  // evaluated only: bf16/f16 weights stay as stored (half the memory, same scores)
  narrow.keep_dtype = true;
  reloaded = load_model(out_model, narrow);
  auto base = load_model(io.model, narrow);
  evaluate_into(*reloaded, base.get(), ed, eo, true, rep.metrics, rep.eval_protocol);
  step(step_name);
}

void JobRun::pass_done(const std::string& step_name, const std::map<std::string, std::string>& settings,
                       const std::vector<LayerRow>& layers, const std::vector<std::string>& warnings) {
  events.end_progress();
  for (const auto& [k, v] : settings) rep.settings[k] = v;
  rep.layers = layers;
  rep.warnings.insert(rep.warnings.end(), warnings.begin(), warnings.end());
  step(step_name);
}

at::Tensor JobRun::as_stored(const std::string& key, const at::Tensor& t) {
  if (!input_dtypes_) input_dtypes_ = stored_dtypes(io.model);
  auto it = input_dtypes_->find(key);
  if (it == input_dtypes_->end() || !t.is_floating_point()) return t;
  if (it->second == DType::BF16) return t.to(at::kBFloat16);
  if (it->second == DType::F16) return t.to(at::kHalf);
  return t;
}

void JobRun::copy_companions() const {
  copy_companion_files(io.model, ed.tokenizer_path.empty() ? so.text("tokenizer") : ed.tokenizer_path, io.out);
}

void JobRun::write_report() { mc::write_report(rep, io.out); }

JobResult JobRun::result() const {
  JobResult r;
  r.report = rep;
  r.labeled = ed.labeled;
  return r;
}

}  // namespace mc
