// `mcompress quantize --scheme fp8|fp8-channel|fp8-block|mxfp4|mxfp8|nvfp4 MODEL -o DIR`: floating-point
// weight formats (quant/fp_formats.h) on a model. The selected layers' weights are replaced by their
// dequantized values and the model is evaluated in this process against the baseline (weights only:
// activations stay float32; no calibration, the scales come from the weights). The output is a
// compressed-tensors directory (export_compressed_tensors_fp: float-quantized, mxfp4-pack-quantized,
// nvfp4-pack-quantized) with the report beside it. mxfp8, which compressed-tensors cannot hold, is refused
// before anything is loaded.
#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "export/fp_ct.h"
#include "job.h"
#include "quantize_stage.h"
#include "mcompress/error.h"
#include "mcompress/export/hf.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/fp_formats.h"

namespace mc {

namespace fs = std::filesystem;

namespace {

// The options that mean something with --scheme (besides the evaluation data ones).
const std::set<std::string> kFpOptions = {"scheme", "targets", "ignore", "eval", "tokenizer", "arch", "window",
                                          "truncate", "separator", "max-docs", "device"};

std::string describe(FpScheme s) {
  switch (s) {
    case FpScheme::fp8: return "fp8 e4m3, float32 scale per tensor";
    case FpScheme::fp8_channel: return "fp8 e4m3, float32 scale per output channel";
    case FpScheme::fp8_block: return "fp8 e4m3, float32 scale per 128x128 block";
    case FpScheme::mxfp8: return "mxfp8 (e4m3, e8m0 scale per 32)";
    case FpScheme::mxfp4: return "mxfp4 (e2m1, e8m0 scale per 32)";
    case FpScheme::nvfp4: return "nvfp4 (e2m1, e4m3 scale per 16, float32 tensor scale)";
  }
  return "?";
}

}  // namespace

FpScheme scheme_option(const StageOptions& so) {
  try {
    return parse_fp_scheme(so.text("scheme"));
  } catch (const InputError&) {
    so.fail("scheme", "'" + so.text("scheme") + "' is not a floating-point format (allowed: fp8, fp8-channel, fp8-block, "
                      "mxfp4, mxfp8, nvfp4)");
  }
}

FpScheme fp_scheme_options(const StageOptions& so) {
  const FpScheme s = scheme_option(so);
  for (const auto& [name, value] : so.given())
    if (!kFpOptions.count(name))
      so.fail(name, "does not apply with --scheme (a floating-point format has no bits, groups or method to "
                    "choose; allowed: --targets, --ignore and the evaluation options)");
  hfx::fp_ct_format(s, "--scheme");  // a scheme without an output format fails here
  return s;
}

JobResult run_quantize_fp(const StageOptions& so, const JobIO& io, const EventSink& events) {
  const FpScheme scheme = fp_scheme_options(so);
  JobRun job(so, io, events);
  Report& rep = job.rep;
  rep.method = fp_scheme_name(scheme);
  rep.settings = {{"scheme", describe(scheme)},
                  {"rounding", "to nearest, ties to even, saturating"},
                  {"activations", "float32 (weights only)"},
                  {"calibration", "none: every scale comes from the weights"},
                  {"format", "compressed-tensors " + hfx::fp_ct_format(scheme, io.model)}};
  if (so.has("targets")) rep.settings["targets"] = so.text("targets");
  if (so.has("ignore")) rep.settings["ignore"] = so.text("ignore");
  job.load(true, true);
  Model& model = *job.model;
  rep.title = fs::path(io.model).filename().string() + ": " + describe(scheme);
  PtqOptions po;
  po.targets = so.list("targets"), po.ignore = so.list("ignore");
  const std::vector<const LayerInfo*> layers = select_layers(model, po);
  std::set<std::string> keys;
  for (const LayerInfo* l : layers) {
    const at::Tensor& w = model.param(l->weight);
    PlanRow p;
    p.name = l->name;
    p.params = w.numel();
    p.bits_before = double(w.element_size() * 8);
    p.what = fp_scheme_name(scheme);
    p.bits_after = fp_scheme_bits_per_weight(scheme, w.size(0), w.size(1));
    rep.plan.push_back(p);
    keys.insert(l->weight);
  }
  if (io.dry_run) return job.result();
  job.baseline();

  job.start();
  std::vector<LayerRow> rows;
  for (const LayerInfo* l : layers) {
    const at::Tensor w = model.param(l->weight).to(at::kFloat);
    const FpQuantResult q = fp_quantize(w, scheme, l->name);
    const at::Tensor dq = q.dequantize();
    const at::Tensor d = dq - w;
    const double norm = at::sum(w.square(), at::kDouble).item<double>();
    LayerRow r;
    r.name = l->name;
    r.shape = "[" + std::to_string(w.size(0)) + ", " + std::to_string(w.size(1)) + "]";
    r.scheme = fp_scheme_name(scheme);
    r.params = w.numel();
    r.bits_per_weight = fp_scheme_bits_per_weight(scheme, w.size(0), w.size(1));
    r.rel_weight_error = norm > 0 ? std::sqrt(at::sum(d.square(), at::kDouble).item<double>() / norm) : 0.0;
    r.max_abs_error = double(d.abs().max().item<float>());
    rows.push_back(r);
    model.set_param(l->weight, dq);
  }
  job.pass_done("quantize " + std::to_string(rows.size()) + " layers to " + fp_scheme_name(scheme), {}, rows, {});

  if (job.have_eval) {
    job.start();
    LoadOptions narrow = job.lo;
    narrow.keep_dtype = true;
    auto base = load_model(io.model, narrow);
    evaluate_into(model, base.get(), job.ed, job.eo, true, rep.metrics, rep.eval_protocol);
    job.step("evaluate compressed (dequantized weights, in process)");
  }
  job.model.reset();
  job.start();
  const ExportSummary s =
      export_compressed_tensors_fp(io.model, io.out, scheme, [&](const std::string& k) { return keys.count(k) > 0; });
  rep.output = (fs::path(io.out) / "model.safetensors").string();
  for (const std::string& n : s.notes) {
    if (n.rfind("groups of", 0) == 0) rep.warnings.push_back(n);
    else rep.settings["output"] += (rep.settings["output"].empty() ? "" : "; ") + n;
  }
  job.step("write compressed-tensors directory");
  job.sizes(rep.output);
  job.write_report();
  return job.result();
}

}  // namespace mc
