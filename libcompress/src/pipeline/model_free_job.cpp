// `mcompress quantize --model-free`: the quantize stage's options -> ModelFreeOptions, the plan
// (--dry-run), per-tensor progress, and the report written into the output before it is renamed into
// place (export/model_free.h does the work).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/export/model_free.h"
#include "mcompress/job_data.h"
#include "mcompress/pipeline.h"
#include "mcompress/text_format.h"
#include "quantize_stage.h"

namespace mc {

namespace {

namespace fs = std::filesystem;

// The quantize options that mean something without a model.
const std::set<std::string> kModelFreeOptions = {"model-free", "method", "bits", "group-size", "per-channel",
                                                 "per-tensor", "sym", "asym", "mse-clip", "targets", "ignore",
                                                 "quantize-embeddings", "quantize-classifier", "format", "scheme"};
// With --scheme the integer grid's options mean nothing.
const std::set<std::string> kIntegerGridOptions = {"bits", "group-size", "per-channel", "per-tensor", "sym", "asym",
                                                   "mse-clip"};

double dtype_bits(DType d) { return double(dtype_info(d).block_bytes) * 8; }

// Stored bits per weight of a compressed-tensors weight [out, in] (packed codes, fp16 scales, packed
// zero points, the shape) or of our packed layout.
double estimated_bits(const QuantSpec& s, int64_t out, int64_t in, bool ct) {
  const int64_t g = s.n_groups(in);
  double bytes;
  if (ct) {
    const int64_t per_word = 32 / s.bits;
    bytes = double(out * ((in + per_word - 1) / per_word) * 4 + out * g * 2 + 16);
    if (!s.symmetric) bytes += double(((out + per_word - 1) / per_word) * g * 4);
  } else {
    bytes = double(out * ((in * s.bits + 7) / 8) + out * g * 2);
    if (!s.symmetric) bytes += double(out * ((g * s.bits + 7) / 8));
  }
  return bytes * 8 / double(out * in);
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

}  // namespace

ModelFreeOptions model_free_options(const StageOptions& so) {
  for (const auto& [name, value] : so.given())
    if (!kModelFreeOptions.count(name))
      so.fail(name, "does not apply to --model-free (no model runs: no calibration or evaluation; allowed: --bits, "
                    "--group-size, --per-channel, --per-tensor, --sym, --asym, --mse-clip, --targets, --ignore, "
                    "--quantize-embeddings, --quantize-classifier, --format)");
  if (so.text("method") != "rtn") so.fail("method", "'" + so.text("method") + "' needs a model; --model-free runs rtn only");
  ModelFreeOptions o;
  QuantSpec& s = o.spec;
  s.bits = int(so.integer("bits"));
  if (s.bits < 2 || s.bits > 8) so.fail("bits", std::to_string(s.bits) + " is not a bit width of 2..8");
  s.group_size = so.integer("group-size");
  if (s.group_size < -1)
    so.fail("group-size", std::to_string(s.group_size) + " is not allowed (>= 1 columns per scale; 0 or -1: per channel)");
  if (s.group_size == -1) s.group_size = 0;  // GPTQ / compressed-tensors spelling of per channel
  if (so.flag("per-channel") && so.flag("per-tensor")) so.fail("per-channel", "and --per-tensor exclude each other");
  if (so.flag("per-channel")) s.group_size = 0;
  if (so.flag("per-tensor")) s.group_size = -1;
  if (so.flag("sym") && so.flag("asym")) so.fail("sym", "and --asym exclude each other");
  s.symmetric = !so.flag("asym");
  s.mse_clip = so.flag("mse-clip");
  o.targets = so.list("targets"), o.ignore = so.list("ignore");
  o.embeddings = so.flag("quantize-embeddings"), o.classifier = so.flag("quantize-classifier");
  o.format = so.has("format") ? so.text("format") : "compressed-tensors";
  if (o.format != "compressed-tensors" && o.format != "mcompress")
    so.fail("format", "'" + o.format + "' is not a model-free output (allowed: compressed-tensors, mcompress)");
  if (so.has("scheme")) {
    o.fp = scheme_option(so);
    for (const auto& [name, value] : so.given())
      if (kIntegerGridOptions.count(name)) so.fail(name, "does not apply with --scheme (a floating-point format)");
    if (o.format != "compressed-tensors")
      so.fail("format", "'" + o.format + "' has no floating-point layout; --scheme writes compressed-tensors");
    if (*o.fp == FpScheme::mxfp8)
      so.fail("scheme", "mxfp8 has no compressed-tensors format (allowed with --model-free: fp8, fp8-channel, "
                        "fp8-block, mxfp4, nvfp4)");
  }
  return o;
}

JobResult run_model_free(const StageOptions& so, const JobIO& io, const EventSink& events) {
  const ModelFreeOptions o = model_free_options(so);
  const bool ct = o.format == "compressed-tensors";
  JobResult res;
  Report& rep = res.report;
  const std::string scheme = o.fp ? fp_scheme_name(*o.fp) : o.spec.describe();
  rep.title = fs::path(io.model).filename().string() + ": model-free " + (o.fp ? scheme : "RTN " + scheme);
  rep.model = io.model;
  rep.output = io.out;
  rep.method = o.fp ? scheme : "rtn";
  rep.command_line = io.command_line;
  rep.settings = {{"bits", std::to_string(o.spec.bits)},
                  {"grid", o.spec.symmetric ? "symmetric" : "asymmetric"},
                  {"groups", o.spec.group_size > 0 ? std::to_string(o.spec.group_size) + " columns"
                             : o.spec.group_size == 0 ? "per output channel" : "per tensor"},
                  {"scales", "fp16"},
                  {"format", o.format},
                  {"model-free", "yes: tensors selected by name, shape and dtype; errors are weight errors"}};
  if (o.spec.mse_clip) rep.settings["clip"] = "MSE search";
  if (o.fp) {
    for (const char* k : {"bits", "grid", "groups", "scales"}) rep.settings.erase(k);
    rep.settings["scheme"] = scheme + " (weights only; rounding to nearest, ties to even, saturating)";
  }
  rep.settings["targets"] = o.targets.empty() ? "default: 2-D floating-point *.weight tensors" : join(o.targets, ",");
  rep.settings["ignore"] = join(model_free_default_exclusions(o.embeddings, o.classifier), ",") +
                           (o.targets.empty() ? " (default exclusions)" : " (default exclusions, unused: --targets given)") +
                           (o.ignore.empty() ? "" : ", " + join(o.ignore, ","));
  if (io.dry_run) {
    auto reader = open_model_free_input(io.model);
    for (const ModelFreeTensor& t : model_free_plan(*reader, o)) {
      PlanRow p;
      p.name = t.name;
      p.params = shape_numel(t.shape);
      p.bits_before = p.bits_after = dtype_bits(t.dtype);
      p.what = t.quantize ? (o.fp ? scheme : "rtn " + scheme) : "copied (" + t.why + ")";
      if (t.quantize)
        p.bits_after = o.fp ? fp_scheme_bits_per_weight(*o.fp, t.shape[0], t.shape[1])
                            : estimated_bits(o.spec, t.shape[0], t.shape[1], ct);
      rep.plan.push_back(p);
    }
    return res;
  }

  const auto t0 = std::chrono::steady_clock::now();
  ModelFreeCallbacks cb;
  cb.progress = [&](const ModelFreeTensor& t, const ModelFreeRow* row, int64_t i, int64_t n, double secs) {
    const double mbs = secs > 0 ? double(t.nbytes) / 1e6 / secs : 0;
    if (events.json) {
      nlohmann::json j = {{"phase", "model-free"}, {"tensor", t.name}, {"i", i}, {"n", n}, {"mb_per_s", mbs},
                          {"quantized", row != nullptr}};
      if (row) j["rel_weight_error"] = row->rel_error;
      events.emit("progress", j.dump());
    }
    if (!events.text()) return;
    const std::string what = row ? scheme + fmt_num("  rel.err %.3e", row->rel_error) : "copied";
    char head[48];
    std::snprintf(head, sizeof head, "[%*lld/%lld] ", int(std::to_string(n).size()), static_cast<long long>(i),
                  static_cast<long long>(n));
    events.print(head + t.name + " " + shape_str(t.shape) + " " + dtype_name(t.dtype) + " -> " + what +
                 fmt_num("  %.1f MB/s", mbs));
  };
  cb.before_commit = [&](const std::string& tmp, const ModelFreeResult& r) {
    double in_bits = 0, params = 0;
    for (const ModelFreeRow& row : r.rows) {
      LayerRow l;
      l.name = row.name;
      l.shape = shape_str(row.shape);
      l.scheme = scheme;
      l.params = shape_numel(row.shape);
      l.bits_per_weight = double(row.bytes_out) * 8 / double(l.params);
      l.rel_weight_error = row.rel_error;
      l.max_abs_error = row.max_abs_error;
      l.note = std::string("input ") + dtype_name(row.dtype);
      rep.layers.push_back(l);
      in_bits += dtype_bits(row.dtype) * double(l.params), params += double(l.params);
    }
    rep.baseline_bits = params > 0 ? in_bits / params : 0;
    rep.size_before = r.size_in, rep.size_after = r.size_out;
    rep.settings["copied unchanged"] = std::to_string(r.copied) + " tensors (" + human_size(r.copied_bytes) + ")";
    rep.settings["output"] = join(r.notes, "; ");
    rep.warnings = r.warnings;
    StepRow st;
    st.name = "quantize " + std::to_string(r.rows.size()) + " tensors, copy " + std::to_string(r.copied);
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.peak_rss_mib = peak_rss_mib();  // the process's (not reset: time -v and getrusage keep seeing it)
    rep.steps.push_back(st);
    write_report(rep, tmp);
  };
  quantize_model_free(io.model, io.out, o, cb);
  return res;
}

}  // namespace mc
