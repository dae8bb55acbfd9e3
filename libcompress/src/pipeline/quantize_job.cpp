// The quantize stage: options -> PtqOptions, and the job (pipeline.h).
#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>

#include "job.h"
#include "mcompress/checkpoint.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/job_data.h"
#include "mcompress/lora.h"
#include "mcompress/model.h"
#include "mcompress/tensor.h"
#include "mcompress/error.h"
#include "mcompress/methods.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/imatrix_file.h"
#include "mcompress/quant/packed.h"
#include "quantize_stage.h"

namespace mc {

namespace fs = std::filesystem;

namespace {

// "PATTERN:bits=8,group-size=0,asym" -> an override of `base` for the layers PATTERN matches (the
// last ':' ends the pattern, so "re:..." patterns work).
PtqOptions::Override parse_override(const StageOptions& so, const std::string& text, const QuantSpec& base) {
  const size_t c = text.rfind(':');
  if (c == std::string::npos || c == 0 || (text.rfind("re:", 0) == 0 && c == 2))
    so.fail("override", "'" + text + "' is not PATTERN:SETTINGS (e.g. 'layers.0.*:bits=8')");
  PtqOptions::Override ov;
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
      so.fail("override", "'" + text + "': bad setting '" + item +
                              "' (allowed: bits=N, group-size=G, per-channel, per-tensor, sym, asym, mse-clip)");
    }
  }
  ov.spec.validate("override " + ov.patterns[0], 1 << 30);
  return ov;
}

// EoRA: the adapters beside the model as a PEFT LoRA (DIR/eora/adapter_model.safetensors and
// adapter_config.json: y = Ŵx + B(Ax), lora_alpha = r so PEFT's scaling is 1), float32 as fitted.
void write_eora_adapter(const std::map<std::string, LowRankAdapter>& adapters, int64_t rank,
                        const std::string& base_model, const std::string& dir) {
  fs::create_directories(dir);
  std::vector<HostTensor> tensors;
  std::set<std::string> modules;
  for (const auto& [layer, a] : adapters) {
    for (const auto& [part, t] : {std::pair{"lora_A", a.A}, std::pair{"lora_B", a.B}}) {
      const at::Tensor c = t.to(at::kFloat).contiguous();
      tensors.push_back(HostTensor::from_f32("base_model.model." + layer + "." + part + ".weight",
                                             Shape(c.sizes().begin(), c.sizes().end()), c.data_ptr<float>()));
    }
    modules.insert(layer.substr(layer.rfind('.') + 1));
  }
  write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors,
                    {{"format", "pt"}, {"method", "eora"}});
  const nlohmann::json cfg = {
      {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", rank}, {"lora_alpha", rank}, {"lora_dropout", 0.0},
      {"bias", "none"}, {"fan_in_fan_out", false}, {"inference_mode", true}, {"target_modules", modules},
      {"base_model_name_or_path", fs::path(base_model).filename().string()},
      {"comment", "EoRA correction fitted by mcompress to the quantized model in the parent directory"}};
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), cfg.dump(2) + "\n", "quantize");
}

}  // namespace

// The method from the table (methods.h); the error names where it came from.
const MethodInfo& method_of(const StageOptions& so, MethodKind kind) {
  const std::string name = so.text("method");
  for (const MethodInfo* m : methods_of(kind))
    if (name == m->name) return *m;
  so.fail("method", "'" + name + "' is not available (allowed: " + method_names(kind) + ")");
}

QuantizeStage quantize_stage(const StageOptions& so) {
  QuantizeStage st;
  PtqOptions& o = st.ptq;
  const MethodInfo& method = method_of(so, MethodKind::Quantize);
  o.method = method.name;
  QuantSpec& spec = o.spec;
  spec.bits = int(so.integer("bits"));
  spec.group_size = so.integer("group-size");
  spec.mse_clip = so.flag("mse-clip");
  bool per_channel = so.flag("per-channel");
  const bool per_tensor = so.flag("per-tensor");
  st.calibrated = method.needs_calibration;
  const int64_t samples = so.integer("calib-samples");
  if (samples < 0 || so.integer("calib-seqlen") < 1) so.fail("calib-samples", "must be >= 0, --calib-seqlen >= 1");
  o.target_bpw = so.real("target-bpw");
  st.needs_calibration = st.calibrated || o.target_bpw > 0;
  st.calibration_for = "--method " + o.method + (o.target_bpw > 0 ? " with --target-bpw" : "");
  st.w8a8 = method.quantizes_activations;
  st.calib_samples = samples == 0 ? (st.needs_calibration ? 128 : 8) : samples;
  if (so.flag("sym") && so.flag("asym")) so.fail("sym", "and --asym exclude each other");
  if (so.has("format"))
    so.fail("format", "applies to --model-free only (a quantized model is exported with mcompress export --format)");
  if (per_channel && per_tensor) so.fail("per-channel", "and --per-tensor exclude each other");
  if (st.w8a8) {  // W8A8: int8 per channel unless the grid is given explicitly
    if (!so.has("bits")) spec.bits = 8;
    if (!so.has("group-size") && !per_tensor) per_channel = true;
  }
  if (spec.group_size < 1)
    so.fail("group-size", std::to_string(spec.group_size) + " must be >= 1 (use --per-channel or --per-tensor)");
  if (per_channel) spec.group_size = 0;
  if (per_tensor) spec.group_size = -1;
  if (per_tensor && o.method != "rtn") so.fail("per-tensor", "is only available with --method rtn");
  spec.symmetric = !so.flag("asym");
  if (method.float_zeros) {  // fractional zero points: asymmetric grids only
    if (so.flag("sym"))
      so.fail("sym", "does not apply to --method " + o.method + ": it fits each group's zero point (asymmetric, "
              "its default)");
    spec.symmetric = false;
  }
  spec.validate("(all layers)", 1 << 30);  // bits and group size, before any work
  if (o.target_bpw < 0) so.fail("target-bpw", "must be > 0");
  for (const auto& ov : so.repeated("override")) o.overrides.push_back(parse_override(so, ov, spec));
  o.awq_clip = !so.flag("no-clip");
  o.hqq_iters = int(so.integer("hqq-iters"));
  if (o.hqq_iters < 0 || o.hqq_iters > 1000) so.fail("hqq-iters", std::to_string(o.hqq_iters) + " outside 0..1000");
  o.autoround_iters = int(so.integer("autoround-iters"));
  if (o.autoround_iters < 1 || o.autoround_iters > 100000)
    so.fail("autoround-iters", std::to_string(o.autoround_iters) + " outside 1..100000");
  o.autoround_lr = so.real("autoround-lr");
  if (!(o.autoround_lr >= 0)) so.fail("autoround-lr", "must be >= 0 (0: 1 / iterations)");
  o.autoround_batch = so.integer("autoround-batch");
  if (o.autoround_batch < 1) so.fail("autoround-batch", "must be >= 1");
  o.autoround_minmax = !so.flag("autoround-no-minmax");
  o.autoround_kquant = so.flag("autoround-kquant");
  if (o.autoround_kquant) {
    if (o.method != "autoround") so.fail("autoround-kquant", "applies to --method autoround only, not " + o.method);
    if ((o.spec.bits != 4 && o.spec.bits != 5) || o.spec.symmetric || o.spec.group_size != 32)
      so.fail("autoround-kquant", "needs --bits 4 or 5, --asym and --group-size 32 (the Q4_K / Q5_K lattice), not " +
              o.spec.describe());
  }
  o.targets = so.list("targets"), o.ignore = so.list("ignore");
  o.embeddings = so.flag("quantize-embeddings"), o.classifier = so.flag("quantize-classifier");
  o.conv = so.flag("quantize-conv"), o.true_sequential = so.flag("true-sequential"), o.fp64 = so.flag("fp64");
  o.act_order = so.flag("act-order"), o.static_groups = so.flag("static-groups"), o.damp = so.real("damp");
  o.keep_sparsity = so.flag("keep-sparsity");
  if (method.float_zeros && o.keep_sparsity)
    so.fail("keep-sparsity", "does not apply to --method " + o.method + ": a fractional zero point cannot hold a "
            "pruned weight's exact 0");
  o.smooth_alpha = so.real("alpha"), o.act_bits = int(so.integer("act-bits"));
  o.eora_rank = so.integer("eora");
  if (o.eora_rank < 0) so.fail("eora", std::to_string(o.eora_rank) + " must be >= 1 (the adapter's rank), or 0 for none");
  if (o.eora_rank > 0) {
    if (st.w8a8)
      so.fail("eora", "does not apply to --method " + o.method + ": its layers quantize their inputs, an adapter "
              "beside them would not");
    st.needs_calibration = true;  // the adapter is fitted to the calibration inputs
    st.calibration_for = "--eora";
  }
  const std::string act_format = so.text("act-format");
  if (act_format != "int") {  // FP activations: their bits are the format's
    ActQuant a;
    try {
      a = parse_act_quant(act_format);
    } catch (const InputError&) {
    }
    if (a.format == ActFormat::int_)  // unknown, or an int spelling, which --act-bits gives
      so.fail("act-format", "'" + act_format + "' is not an activation format (allowed: int, fp8, mxfp8, mxfp4, nvfp4)");
    if (so.has("act-bits") && o.act_bits != a.bits)
      so.fail("act-bits", std::to_string(o.act_bits) + " does not match --act-format " + act_format + " (" +
              std::to_string(a.bits) + " bits)");
    if (st.w8a8) so.fail("act-format", act_format + " does not apply to --method " + o.method + " (int8 activations)");
    o.act_format = a.format, o.act_bits = a.bits;
  }
  if ((so.has("act-bits") || o.act_format != ActFormat::int_) && !st.w8a8) {  // W4A8, W4A4: any weight method
    if (o.act_bits < 2 || o.act_bits > 8) so.fail("act-bits", std::to_string(o.act_bits) + " outside 2..8");
    if (o.eora_rank > 0)
      so.fail(so.has("act-bits") ? "act-bits" : "act-format",
              "does not apply with --eora: an adapter beside the layers would not quantize its input");
    o.quantize_activations = true;
  }
  st.rotate = so.text("rotate");
  if (st.rotate != "none" && st.rotate != "hadamard" && st.rotate != "hadamard-online")
    so.fail("rotate", "'" + st.rotate + "' is not a rotation (allowed: none, hadamard, hadamard-online)");
  st.rotation.online = st.rotate == "hadamard-online";
  st.rotation.seed = so.unsigned_integer("rotate-seed");
  if (st.rotation.online && o.eora_rank > 0)
    so.fail("rotate", "hadamard-online does not apply with --eora: a LoRA runtime would not rotate down_proj's input");
  o.kv_bits = int(so.integer("kv-bits"));
  if (o.kv_bits != 0 && o.kv_bits != 8) so.fail("kv-bits", std::to_string(o.kv_bits) + ": 8 or 0 (off)");
  o.kv_format = so.text("kv-format");
  if (o.kv_format != "int8" && o.kv_format != "fp8") so.fail("kv-format", "'" + o.kv_format + "': int8 or fp8");
  if (so.has("kv-format") && o.kv_bits == 0) so.fail("kv-format", "needs --kv-bits 8");
  o.kv_hadamard = so.flag("kv-hadamard");
  if (o.kv_hadamard && o.kv_bits == 0) so.fail("kv-hadamard", "needs --kv-bits 8");
  if (o.kv_bits > 0 && !st.needs_calibration) {
    st.needs_calibration = true;  // static scales come from the calibration data
    st.calibration_for = "--kv-bits";
  }
  if (so.has("imatrix")) {  // llama.cpp's importance file instead of calibration (applied in run_quantize)
    if (o.method != "imatrix") so.fail("imatrix", "applies to --method imatrix only, not " + o.method);
    if (o.target_bpw > 0 || o.eora_rank > 0 || o.kv_bits > 0)
      so.fail("imatrix", "replaces calibration data, which --target-bpw, --eora and --kv-bits need");
    if (so.has("calib")) so.fail("imatrix", "and --calib exclude each other (the file replaces calibration)");
    o.importance_source = so.text("imatrix");
    st.calibrated = st.needs_calibration = false;
  }
  st.simulate_int8 = so.flag("simulate-int8");
  o.candidate_bits.clear();
  for (const auto& b : so.list("bits-candidates")) {
    try {
      o.candidate_bits.push_back(std::stoi(b));
    } catch (const std::exception&) {
      so.fail("bits-candidates", "'" + b + "' is not a number");
    }
  }
  st.label = method.report_label;
  return st;
}

std::string quantize_title(const QuantizeStage& st, const std::string& model_path) {
  const PtqOptions& o = st.ptq;
  return fs::path(model_path).filename().string() + ": " + st.label + " " + o.spec.describe() +
         (st.w8a8 || o.quantize_activations
              ? (o.act_format == ActFormat::int_ ? ", a" + std::to_string(o.act_bits) : ", a " + act_quant_name({o.act_format, o.act_bits}))
              : "") +
         (st.rotate != "none" ? ", rotated (" + st.rotate + ")" : "") +
         (o.target_bpw > 0 ? ", mixed " + fmt_num("%g", o.target_bpw) + " bits" : "");
}

JobResult run_quantize(const StageOptions& so, const JobIO& io, const EventSink& events) {
  QuantizeStage st = quantize_stage(so);
  PtqOptions& po = st.ptq;
  const QuantSpec& spec = po.spec;
  const std::string& method = po.method;
  JobRun job(so, io, events);
  Report& rep = job.rep;
  rep.method = method;
  rep.settings = {{"bits", std::to_string(spec.bits)},
                  {"grid", spec.symmetric ? "symmetric" : "asymmetric"},
                  {"groups", spec.group_size > 0 ? std::to_string(spec.group_size) + " columns"
                             : spec.group_size == 0 ? "per output channel" : "per tensor"},
                  {"scales", "fp16"}};
  if (spec.mse_clip) rep.settings["clip"] = "MSE search";
  if (method == "gptq") {
    rep.settings["damp"] = fmt_num("%g", po.damp);
    if (po.act_order) rep.settings["act-order"] = po.static_groups ? "yes, static groups" : "yes";
  }
  if (method == "hqq")
    rep.settings["zero points"] = "HQQ, " + std::to_string(po.hqq_iters) +
                                  " updates (p 0.7, beta 10, kappa 1.01), float16 where fractional";
  if (method == "autoround")
    rep.settings["tuning"] = std::to_string(po.autoround_iters) + " signed-gradient steps per block, first step " +
                             fmt_num("%g", po.autoround_lr > 0 ? po.autoround_lr : 1.0 / po.autoround_iters) +
                             " decaying to 0, " + std::to_string(po.autoround_batch) + " sequences per step, " +
                             (po.autoround_minmax ? "rounding offsets and range factors" : "rounding offsets only") +
                             ", against each block's float output; best step kept" +
                             (po.autoround_kquant ? "; on the Q" + std::to_string(spec.bits) +
                                                        "_K lattice (6-bit group scales and mins, float16 super-block "
                                                        "scales of 5 significant bits) where rows allow"
                                                  : "");
  if (method == "awq") rep.settings["clip search"] = po.awq_clip ? "yes" : "no";
  if (st.w8a8)
    rep.settings["activations"] = "int" + std::to_string(po.act_bits) + " per token, dynamic, symmetric (alpha " +
                                  fmt_num("%g", po.smooth_alpha) + ")";
  if (po.quantize_activations)
    rep.settings["activations"] = act_quant_description({po.act_format, po.act_bits}) +
                                  (po.act_format == ActFormat::int_ ? ", every quantized linear's input"
                                                                     : ", every quantized linear's input, simulated in float");
  if (st.rotate != "none") rep.settings["rotation"] = st.rotate;  // the pass's summary replaces it
  if (po.true_sequential) rep.settings["order"] = "true-sequential";
  if (po.kv_bits > 0)
    rep.settings["KV cache"] = po.kv_format + (po.kv_format == "fp8" ? " (E4M3, scale amax/448)" : " (scale amax/127)") +
                               ", static per kv head, keys after RoPE; scales from each block's quantized outputs on "
                               "the calibration data; the compressed evaluation runs with it" +
                               (po.kv_hadamard ? "; each head's keys and values rotated by a Hadamard first" : "");
  if (po.eora_rank > 0)
    rep.settings["EoRA"] = "rank " + std::to_string(po.eora_rank) + " correction of each calibrated layer, fitted in "
                           "the eigenspace of its calibration inputs; written as a LoRA adapter in eora/ (the model "
                           "file alone is Ŵ; layer errors are with the adapter)";
  if (so.has("targets")) rep.settings["targets"] = so.text("targets");
  if (so.has("ignore")) rep.settings["ignore"] = so.text("ignore");

  const bool needs = st.needs_calibration;
  job.load(!st.simulate_int8, true);  // bf16/f16 weights stay mapped: widened a layer at a time
  Model& model = *job.model;
  rep.title = quantize_title(st, io.model);
  rep.plan = plan_stage(model, io.model, so);  // bad patterns fail here, before any data is read
  if (io.dry_run) return job.result();
  job.check_calibration(needs, st.calibration_for);  // before any data is read
  if (!po.importance_source.empty()) {  // every selected block layer needs its entry, checked before any work
    const ImatrixData im = read_imatrix(po.importance_source);
    const std::map<std::string, std::string> names = gguf_names_by_layer(model);
    for (const LayerInfo* l : select_layers(model, po)) {
      const auto n = names.find(l->name);
      if (n == names.end() || (l->block < 0 && !im.entries.count(n->second))) continue;  // RTN, as the plan says
      po.importance[l->name] = imatrix_importance(im, po.importance_source, n->second, l->in_features, l->name);
    }
    rep.settings["importance"] = "llama.cpp imatrix " + po.importance_source + " (" + im.format + ", " +
                                 std::to_string(im.entries.size()) + " entries)";
  }
  {
    // A pruned input without --keep-sparsity is worth a word. The first block's layers tell (a pruned
    // model is pruned throughout): reading every weight would be a pass over the whole file.
    double zeros = 0, n = 0;
    int first = -2;
    for (const LayerInfo* l : select_layers(model, po)) {
      if (first == -2) first = l->block;
      if (l->block != first) continue;
      const at::Tensor& w = model.param(l->weight);
      zeros += double(w.numel() - at::count_nonzero(w).item<int64_t>()), n += double(w.numel());
      model.page_out_param(l->weight);  // a mapped weight read here is not kept resident
    }
    if (!po.keep_sparsity && n > 0 && zeros / n >= 0.25)
      rep.warnings.push_back(fmt_num("%.0f%% of the selected weights are exactly zero (a pruned model?): ", 100 * zeros / n) +
                             " --keep-sparsity keeps them zero and stores the sparse layout");
  }
  job.baseline();
  // rtn only measures per-layer errors: a short text gives shorter sequences instead of an error.
  job.calibrate(needs, st.calibration_for, st.calib_samples,
                needs ? so.integer("calib-seqlen") : so.integer("window"), !needs);

  job.check_disk(needs);  // before any work: the estimate from the plan and the calibration set
  if (st.calibrated) job.calibration_plan(method);
  RotateResult rotation;
  if (st.rotate != "none") {  // deterministic: a resumed run rotates again to the same weights
    job.start();
    rotation = rotate_model(model, st.rotation);
    rep.settings["rotation"] = rotation.summary;
    job.step("rotate (" + st.rotate + ")");
  }
  job.start();
  po.progress = events.layer_progress(method);
  po.pass_progress = events.pass_progress(method);
  // The output is written while quantizing: each finished block's packed weights go to disk and the
  // model's copies are released, so memory stays that of one block (Model::set_low_memory).
  JobOutput out(io.out, job_identity(so, io), events);
  po.journal = &out.journal();
  const std::string out_model = (fs::path(io.out) / "model.safetensors").string();
  PackedCheckpointWriter writer(out_model);
  std::set<std::string> written;
  model.set_low_memory(true);
  int64_t sparse_layers = 0;
  auto add = [&](const std::string& key, const QuantResult& q) {
    if (po.keep_sparsity && add_sparse_if_smaller(writer, key, q)) ++sparse_layers;
    else writer.add_quantized(key, q);
  };
  po.after_block = [&](int, PtqResult& partial) {
    for (auto& [key, q] : partial.quantized) {
      add(key, q);
      written.insert(key);
      model.release_param(key);
    }
    partial.quantized.clear();
  };
  PtqResult res = job.with_compute([&] { return quantize_model(model, job.calib_x, po); });
  job.pass_done("quantize " + std::to_string(res.layers.size()) + " layers (writing each block)", res.settings,
                res.layers, res.warnings);

  // The rest: layers quantized after the blocks, then dense parameters as they are.
  job.start();
  for (const auto& [key, q] : res.quantized) add(key, q), written.insert(key);
  if (po.keep_sparsity) rep.settings["sparsity"] = std::to_string(sparse_layers) + " layers kept sparse (sparse layout)";
  for (const auto& [k, v] : model.params())
    if (!written.count(k) && v.defined()) {
      writer.add_dense(k, job.as_stored(k, v));
      model.page_out_param(k);  // a mapped embedding / head read here does not stay resident
    }
  auto meta = model.config_metadata();
  if (!res.act_bits.empty()) meta[kActivationMetadataKey] = activation_metadata(res.act_bits, res.act_format);
  if (st.rotate != "none") meta[kRotationMetadataKey] = rotation.metadata();
  if (!res.kv_scales.empty()) meta[kKVCacheMetadataKey] = kv_cache_metadata(po.kv_format, res.kv_scales, po.kv_hadamard);
  writer.finish(meta);
  out.keep();
  rep.output = out_model;
  job.step("write packed checkpoint");
  job.sizes(out_model);
  if (rep.size_after >= rep.size_before)
    rep.warnings.push_back("the output (" + human_size(rep.size_after) + ") is not smaller than the input (" +
                           human_size(rep.size_before) + "): for a model this small, metadata and scales outweigh the savings");
  job.stored_bits(out_model, true);

  if (!res.adapters.empty()) {
    job.start();
    write_eora_adapter(res.adapters, po.eora_rank, io.model, (fs::path(io.out) / "eora").string());
    const auto bytes = fs::file_size(fs::path(io.out) / "eora" / "adapter_model.safetensors");
    int64_t adapted = 0;
    for (const auto& row : res.layers)
      if (res.adapters.count(row.name)) adapted += row.params;
    rep.settings["EoRA adapter"] = human_size(bytes) + " in float32: " +
                                   fmt_num("%.3f", 8.0 * double(bytes) / double(std::max<int64_t>(1, adapted))) +
                                   " bits per adapted weight on top of the model file's";
    job.step("write EoRA adapter");
  }

  job.model.reset();  // what is left of it; the evaluation reloads the written file
  job.evaluate_output(out_model, "evaluate compressed (reloaded from the file)");
  if (!res.adapters.empty() && job.have_eval) {
    // The same file with the adapter added: what a runtime applying the LoRA computes.
    job.start();
    apply_lora_adapter(*job.reloaded, (fs::path(io.out) / "eora").string());  // read back from the written files
    LoadOptions narrow = job.lo;
    narrow.keep_dtype = true;
    auto base = load_model(io.model, narrow);
    std::vector<MetricRow> rows;
    std::string proto;
    evaluate_into(*job.reloaded, base.get(), job.ed, job.eo, true, rows, proto);
    const std::string suffix = " (with the EoRA rank-" + std::to_string(po.eora_rank) + " adapter)";
    for (auto& m : rows) {
      for (const auto& b : rep.metrics)  // the baseline column is the same model's
        if (b.name == m.name) m.baseline = b.baseline;
      m.name += suffix;
      m.is_primary = false;
      rep.metrics.push_back(m);
    }
    job.step("evaluate compressed + EoRA adapter");
  }
  if (!res.act_bits.empty()) w8a8_runtime_rows(job, out_model, st.simulate_int8);
  job.copy_companions();
  job.write_report();
  out.finish();
  return job.result();
}

}  // namespace mc
