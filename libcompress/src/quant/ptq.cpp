// quantize_model: layer selection and the per-block quantizer shared by all methods (see ptq.h). The
// methods come from the method table (methods.h), the block loop and its journal from block_driver.h,
// mixed precision from quant/mixed_precision.h.
#include "mcompress/ptq.h"
#include "mcompress/quant/imatrix.h"

#include <ATen/ATen.h>
#include <fnmatch.h>

#include <regex>
#include <set>

#include "mcompress/block_driver.h"
#include "mcompress/error.h"
#include "mcompress/methods.h"
#include "mcompress/model.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/kv_cache.h"
#include "mcompress/tensor.h"
#include "mcompress/text_format.h"
#include "ptq_journal.h"

namespace mc {

namespace {

constexpr const char* kComp = "quantize";

bool matches(const std::string& pat, const std::string& name) {
  if (pat.rfind("re:", 0) == 0) {
    try {
      return std::regex_match(name, std::regex(pat.substr(3)));
    } catch (const std::regex_error& e) {
      fail(kComp, "pattern '", pat, "' is not a valid regular expression: ", e.what());
    }
  }
  return fnmatch(pat.c_str(), name.c_str(), 0) == 0;
}

}  // namespace

bool matches_any(const std::vector<std::string>& pats, const std::string& name) {
  for (const auto& p : pats)
    if (matches(p, name)) return true;
  return false;
}

namespace {

// The grid of a layer: the first override matching it, else the default.
const QuantSpec& spec_for(const PtqOptions& o, const std::string& name) {
  for (const auto& ov : o.overrides)
    if (matches_any(ov.patterns, name)) return ov.spec;
  return o.spec;
}

bool quantizable(const Model& m, const LayerInfo& l) {
  if (l.kind == LayerKind::Norm) return false;
  const int64_t dims = m.param(l.weight).dim();
  return dims == 2 || (l.kind == LayerKind::Conv2d && dims == 4);
}

// H of the inputs after a scale fold: the layer now reads x / s, so H' = H / (s sᵀ).
at::Tensor scaled_hessian(const at::Tensor& H, const at::Tensor& s) {
  return H.div(s.unsqueeze(0)).div_(s.unsqueeze(1));
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// A block's scale groups after the method's group_scales (AWQ, SmoothQuant) ran on them.
struct BlockScales {
  std::map<std::string, at::Tensor> scale_in;  // layer -> s it now reads x / s with
  std::map<std::string, std::string> note;     // layer -> the group's note ("awq alpha 0.35")
  std::map<std::string, std::string> skipped;  // layer -> why its group got no scales
};

class Runner {
 public:
  Runner(Model& m, const PtqOptions& o, const MethodInfo& method, PtqResult& r)
      : m_(m), o_(o), method_(method), r_(r) {}

  std::map<std::string, QuantSpec> spec_of;  // per layer name
  int64_t done = 0, total = 0;
  const std::vector<at::Tensor>* inputs = nullptr;  // the current block's calibration inputs (tune_block methods)

  // Quantizes block k's `layers` (all share the statistics pass). With `errors`, a scan: only each
  // layer's output error is appended (the model keeps the codes, the caller restores it), nothing reported.
  void block(int k, const std::vector<const LayerInfo*>& layers, const BlockStats& stats,
             std::vector<double>* errors = nullptr) {
    const BlockScales sc = method_.group_scales ? fold_scales(k, layers, stats, !errors) : BlockScales{};
    // Layers reading one input share its accumulator, and (with the same folded scales) the H they read:
    // computed once, dropped after its last reader. Outside a scan (which runs the block again on the
    // same statistics) that reader takes H from the accumulator, so a scale fold divides it in place
    // instead of copying it (822 MB for an 8B down_proj, AWQ's peak).
    std::map<const HessianAccumulator*, int> readers;
    for (const LayerInfo* l : layers) ++readers[stats.at(l->name)];
    struct SharedH {
      at::Tensor H, s;
    };
    std::map<const HessianAccumulator*, SharedH> shared;
    // A method tuning the block as a whole (AutoRound) quantizes every layer before the loop reports them.
    std::map<std::string, LayerOutcome> tuned;
    if (method_.tune_block) {
      if (!inputs) fail(kComp, "internal: block ", k, " has no calibration inputs for ", method_.name);
      std::vector<QuantSpec> specs;
      for (const LayerInfo* l : layers) specs.push_back(spec_of.at(l->name));
      std::vector<LayerOutcome> outs = method_.tune_block({m_, k, layers, specs, *inputs}, o_);
      for (size_t i = 0; i < layers.size(); ++i) tuned.emplace(layers[i]->name, std::move(outs.at(i)));
    }
    for (const LayerInfo* l : layers) {
      if (o_.progress) o_.progress(errors ? "scan" : "quantize", *l, ++done, total);
      HessianAccumulator& st = *stats.at(l->name);
      const bool last = --readers[&st] == 0;
      auto sit = sc.scale_in.find(l->name);
      const at::Tensor s = sit != sc.scale_in.end() ? sit->second : at::Tensor();
      at::Tensor H;
      auto hit = shared.find(&st);
      if (hit != shared.end() && hit->second.s.defined() == s.defined() && (!s.defined() || at::equal(hit->second.s, s))) {
        H = hit->second.H;
      } else {
        const bool own = !errors && last && hit == shared.end();
        H = (own ? st.take_hessian() : st.hessian()).to(at::kFloat);
        if (s.defined()) {
          H = own ? H.div_(s.unsqueeze(0)).div_(s.unsqueeze(1)) : scaled_hessian(H, s);  // the same divisions
        }
        if (!last) shared[&st] = {H, s};
      }
      if (last) shared.erase(&st);
      const at::Tensor w_full = m_.param(l->weight);
      const at::Tensor W = w_full.to(at::kFloat).reshape({w_full.size(0), -1});
      const QuantSpec& sp = spec_of.at(l->name);
      bool plain_rtn = false;
      auto tit = tuned.find(l->name);
      LayerOutcome z = tit != tuned.end() ? std::move(tit->second) : quantize_layer({l->name, W, &st, H}, sp, plain_rtn);
      double err = output_error(W - z.weight, H);
      if (errors) {
        errors->push_back(err);
        m_.set_param(l->weight, z.weight.reshape(w_full.sizes()));
        continue;
      }
      // The row says what ran: the method, or what replaced it (inputs all zero, scales skipped).
      std::string ran = method_.name;
      std::string note = z.note;
      auto add_note = [&](const std::string& n) { note += (note.empty() ? "" : "; ") + n; };
      if (sc.note.count(l->name)) add_note(sc.note.at(l->name));
      if (sc.skipped.count(l->name)) ran = method_.without_scales(o_), add_note(sc.skipped.at(l->name));
      if (plain_rtn) ran = "rtn";
      at::Tensor held = z.weight;  // what the model computes with from now on
      if (o_.eora_rank > 0) {
        LowRankAdapter a = eora_fit(W - z.weight, H, o_.eora_rank, l->name);
        held = z.weight + a.B.mm(a.A);
        const double corrected = output_error(W - held, H);
        // The row's error is the corrected one; the note keeps the error without the adapter.
        add_note("eora rank " + std::to_string(a.rank()) + " (relative output error " +
                 fmt_num("%.4g", relative_output_error(err, W, H)) + " without it)");
        err = corrected;
        r_.adapters[l->name] = std::move(a);
      }
      const bool w8a8 = quantizes_input(*l);
      std::string scheme = ran + " " + sp.describe();
      if (w8a8) scheme += act_scheme();
      LayerRow row = layer_row(*l, w_full, scheme, note);
      row.rel_output_error = relative_output_error(err, W, H);
      r_.layers.push_back(row);
      for (auto& w : z.warnings) r_.warnings.push_back(std::move(w));
      store(*l, w_full, std::move(*z.quant), held);
      if (w8a8) {
        use_w8a8(m_, l->name, r_.quantized.at(l->weight), act());
        r_.act_bits[l->name] = o_.act_bits;
      }
    }
  }

  // A layer without calibration statistics (outside the blocks, or no calibration data): RTN, or a
  // calibration-free method itself (hqq), except on the embedding and the classifier (RTN, as the plan says).
  void outside(const LayerInfo& l) {
    if (o_.progress) o_.progress("quantize", l, ++done, total);
    const at::Tensor w_full = m_.param(l.weight);
    const at::Tensor W = w_full.to(at::kFloat).reshape({w_full.size(0), -1});
    const QuantSpec& sp = spec_of.at(l.name);
    const auto imp = o_.importance.find(l.name);  // imatrix from a file instead of calibration
    const bool from_file = imp != o_.importance.end();
    const bool own = from_file || (!method_.needs_calibration && l.kind != LayerKind::Embedding && !l.is_classifier);
    const at::Tensor no_h;
    LayerOutcome z;
    if (from_file) {
      z.quant = imatrix_quantize(W, sp, imp->second, l.name);
      z.weight = z.quant->dequantize();
    } else if (own) {
      z = method_.quantize_layer({l.name, W, nullptr, no_h}, sp, o_);
    } else {
      z.quant = rtn_quantize(W, sp, l.name);
      z.weight = z.quant->dequantize();
    }
    std::string note = from_file ? "importance from " + o_.importance_source
                       : method_.needs_calibration ? "outside the blocks: plain RTN" : "";
    if (sp.group_size > 0 && W.size(1) % sp.group_size)
      note += (note.empty() ? "" : "; ") + std::string("last group of ") + std::to_string(W.size(1) % sp.group_size) +
              " columns";
    std::string scheme = std::string(own ? method_.name : "rtn") + " " + sp.describe();
    if (quantizes_input(l)) scheme += act_scheme();
    r_.layers.push_back(layer_row(l, w_full, scheme, note));
    store(l, w_full, std::move(*z.quant), z.weight);
    if (quantizes_input(l)) {
      use_w8a8(m_, l.name, r_.quantized.at(l.weight), act());
      r_.act_bits[l.name] = o_.act_bits;
    }
  }

 private:
  ActQuant act() const { return {o_.act_format, o_.act_bits}; }
  std::string act_scheme() const {
    return o_.act_format == ActFormat::int_ ? ", a" + std::to_string(o_.act_bits) + " per-token" : ", a " + act_quant_name(act());
  }
  bool quantizes_input(const LayerInfo& l) const {
    return (method_.quantizes_activations || o_.quantize_activations) && l.kind == LayerKind::Linear && !l.is_classifier;
  }
  // The model holds wq from now on, the result its codes.
  void store(const LayerInfo& l, const at::Tensor& w_full, QuantResult q, const at::Tensor& wq) {
    m_.set_param(l.weight, wq.reshape(w_full.sizes()));
    if (w_full.dim() != 2) q.weight_shape = w_full.sizes().vec();
    r_.quantized.emplace(l.weight, std::move(q));
  }

  LayerOutcome quantize_layer(const LayerInputs& in, const QuantSpec& sp, bool& plain_rtn) {
    const double hmax = in.H.diagonal().max().item<double>();
    if (!(hmax > 0)) {
      // Reached, but every input was zero: nothing to calibrate on.
      LayerOutcome z;
      z.quant = rtn_quantize(in.W, sp, in.name);
      z.weight = z.quant->dequantize();
      z.note = "inputs all zero: plain RTN";
      z.warnings.push_back(in.name + ": its calibration inputs are all zero; quantized with plain RTN");
      plain_rtn = true;
      return z;
    }
    return method_.quantize_layer(in, sp, o_);
  }

  // Runs the method's group_scales on every scale group of block k whose layers are all in `layers` and
  // folds the scales into the model. A group only partly selected (scales would change the unselected
  // layers' inputs too), or not after a norm where the method needs one, gets none; nor does a layer in
  // no scale group (classifier models have none): those layers are marked skipped, with a warning when
  // `report`.
  BlockScales fold_scales(int k, const std::vector<const LayerInfo*>& layers, const BlockStats& stats, bool report) {
    std::set<std::string> in_block;
    for (const LayerInfo* l : layers) in_block.insert(l->name);
    BlockScales sc;
    // Layers `names` of `what` get no scales: why, for the warning, and row_why, for their rows.
    auto skip = [&](const std::vector<std::string>& names, const std::string& what, const std::string& why,
                    const std::string& row_why) {
      const std::string skipped = std::string(method_.name) + " scales skipped";
      for (const auto& n : names) sc.skipped[n] = skipped + ": " + row_why;
      if (report)
        r_.warnings.push_back(skipped + " for " + what + ": " + why + "; quantized with " + method_.without_scales(o_));
    };
    std::vector<std::pair<ScaleGroup, at::Tensor>> folds;
    std::set<std::string> grouped;
    for (const ScaleGroup& g : m_.scale_groups(k)) {
      std::vector<const LayerInfo*> consumers;
      std::vector<std::string> names;
      for (const auto& name : g.layers)
        if (in_block.count(name)) consumers.push_back(&m_.layer(name)), names.push_back(name), grouped.insert(name);
      if (consumers.empty()) continue;
      if (consumers.size() != g.layers.size()) {  // all or nothing
        skip(names, "the group " + join(g.layers), "only " + join(names) + " is selected",
             "only " + join(names) + " of the group " + join(g.layers) + " is selected");
        continue;
      }
      if (method_.scales_after_norm_only && !g.prev_is_norm) {
        const std::string why = "its input comes from " + g.prev + ", not a norm";
        skip(names, "the group " + join(g.layers), why, why);
        continue;
      }
      std::vector<at::Tensor> weights;
      std::vector<QuantSpec> specs;
      for (const LayerInfo* c : consumers) weights.push_back(m_.param(c->weight)), specs.push_back(spec_of.at(c->name));
      std::string note;
      const at::Tensor s = method_.group_scales({g, weights, specs, names, *stats.at(consumers[0]->name), m_.device()},
                                                o_, note);
      if (!s.defined()) continue;  // inputs all zero: the layers say so
      folds.emplace_back(g, s);
      for (const LayerInfo* c : consumers) sc.scale_in[c->name] = g.expand(s), sc.note[c->name] = note;
    }
    for (const auto& [g, s] : folds) m_.apply_scale_group(g, s);
    for (const LayerInfo* l : layers)
      if (!grouped.count(l->name)) {
        const std::string why = "the model has no op before it to fold scales into";
        skip({l->name}, l->name, why, why);
      }
    return sc;
  }

  Model& m_;
  const PtqOptions& o_;
  const MethodInfo& method_;
  PtqResult& r_;
};

// Mixed precision: the sensitivity scan over the candidate bits, then the allocation into run.spec_of.
void choose_bits(Model& model, const at::Tensor& calib, const std::vector<const LayerInfo*>& layers,
                 const std::set<std::string>& in_blocks, const SequentialOptions& so, const PtqOptions& o, Runner& run,
                 PtqResult& res) {
  const std::vector<int> bits = candidate_bit_widths(o.candidate_bits);
  run.total = static_cast<int64_t>(in_blocks.size() * bits.size());
  SensitivityScan scan;
  scan.candidates = bits.size();
  scan.quantize_at = [&](int k, const std::vector<const LayerInfo*>& ls, const BlockStats& st, size_t c) {
    for (const LayerInfo* l : ls) run.spec_of[l->name].bits = bits[c];
    std::vector<double> errors;
    run.block(k, ls, st, &errors);
    return errors;
  };
  scan.restored = [&](int64_t n) { run.done += n; };
  const auto errors = sensitivity_scan(model, calib, in_blocks, so, o.journal, scan);
  std::vector<std::vector<double>> errs;
  std::vector<int64_t> params;
  std::vector<std::string> names;
  for (const LayerInfo* l : layers)
    if (in_blocks.count(l->name)) {
      names.push_back(l->name);
      errs.push_back(errors.at(l->name));
      params.push_back(model.param(l->weight).numel());
    }
  const BitAllocation a = allocate_layer_bits(errs, params, bits, o.target_bpw);
  for (size_t i = 0; i < names.size(); ++i) run.spec_of[names[i]].bits = a.bits[i];
  res.settings["mixed precision"] = a.summary;
  run.done = 0;
  run.total = static_cast<int64_t>(layers.size());  // the blocks' layers, then any outside them
}

}  // namespace

std::vector<const LayerInfo*> select_layers(const Model& model, const PtqOptions& o) {
  for (const auto& pats : {o.targets, o.ignore})
    for (const auto& p : pats) {
      bool hit = false;
      for (const auto& l : model.layers()) hit = hit || (quantizable(model, l) && matches(p, l.name));
      if (!hit) {
        std::string names;
        int shown = 0;
        for (const auto& l : model.layers())
          if (quantizable(model, l) && shown++ < 4) names += (names.empty() ? "" : ", ") + l.name;
        fail(kComp, "pattern '", p, "' matches no quantizable layer (layers are named like ", names, ")");
      }
    }
  std::vector<const LayerInfo*> out;
  std::set<std::string> keys;
  for (const auto& l : model.layers()) {
    if (!quantizable(model, l)) continue;
    bool take = (o.embeddings && l.kind == LayerKind::Embedding) || (o.classifier && l.is_classifier) ||
                (o.conv && l.kind == LayerKind::Conv2d);
    if (o.targets.empty())
      take = take || (l.kind == LayerKind::Linear && !l.is_classifier);
    else
      take = take || matches_any(o.targets, l.name);
    if (!take || matches_any(o.ignore, l.name) || !keys.insert(l.weight).second) continue;
    spec_for(o, l.name).validate(l.name, l.in_features);
    out.push_back(&l);
  }
  if (out.empty()) fail(kComp, model.arch(), " model: no layer selected for quantization");
  for (const auto& ov : o.overrides)
    for (const auto& p : ov.patterns) {
      bool hit = false;
      for (const LayerInfo* l : out) hit = hit || matches_any({p}, l->name);
      if (!hit) fail(kComp, "override pattern '", p, "' matches no selected layer");
    }
  return out;
}

PtqResult quantize_model(Model& model, const at::Tensor& calib, const PtqOptions& o) {
  const MethodInfo& method = *find_method(MethodKind::Quantize, o.method);
  if (method.check_options) method.check_options(o);
  if (o.target_bpw > 0 && !method.mixed_precision)
    fail(kComp, "--target-bpw (mixed precision) does not apply to ", o.method,
         method.quantizes_activations ? " (W8A8)" : "");
  const std::vector<const LayerInfo*> layers = select_layers(model, o);
  const bool calibrated = calib.defined();
  if (!o.importance.empty() && o.method != "imatrix")
    fail(kComp, "importance from an imatrix file applies to --method imatrix, not ", o.method);
  if (!o.importance.empty() && calibrated)
    fail(kComp, "--imatrix replaces calibration: pass --calib or --imatrix, not both");
  if (!calibrated && method.needs_calibration && o.importance.empty())
    fail(kComp, "--method ", o.method, " needs calibration data (--calib DATA) or, for imatrix, --imatrix FILE");
  if (!calibrated && o.target_bpw > 0) fail(kComp, "--target-bpw needs calibration data (--calib DATA)");
  if (o.eora_rank < 0) fail(kComp, "EoRA rank ", o.eora_rank, " must be >= 1, or 0 for none");
  if (!calibrated && o.eora_rank > 0) fail(kComp, "--eora needs calibration data (--calib DATA): it fits the inputs");
  if (o.kv_bits != 0 && o.kv_bits != 8) fail(kComp, "--kv-bits ", o.kv_bits, ": 8 is the one width (int8 or fp8)");
  if (o.kv_bits > 0 && !calibrated) fail(kComp, "--kv-bits needs calibration data (--calib DATA): its scales are static");
  if (o.kv_bits > 0 && !model.has_attention())
    fail(kComp, "--kv-bits: this ", model.arch(), " model has no attention layers (no KV cache)");
  const KVFormat kv_format = parse_kv_format(o.kv_format);
  if (o.eora_rank > 0 && method.quantizes_activations)
    fail(kComp, "--eora does not apply to ", o.method, ": its layers quantize their inputs, an adapter would not");
  if (o.quantize_activations && (o.act_bits < 2 || o.act_bits > 8))
    fail(kComp, "activation bits ", o.act_bits, " outside 2..8");
  if (o.act_format != ActFormat::int_) {
    const ActQuant act{o.act_format, o.act_bits};
    if (!o.quantize_activations || method.quantizes_activations)
      fail(kComp, act_quant_name(act), " activations apply to a weight method with quantized inputs (not ", o.method, ")");
    if (o.act_bits != act_format_bits(o.act_format))
      fail(kComp, act_quant_name(act), " activations have ", act_format_bits(o.act_format), " bits, not ", o.act_bits);
  }
  if (o.eora_rank > 0 && o.quantize_activations)
    fail(kComp, "--eora does not apply with --act-bits: the layers quantize their inputs, an adapter would not");

  PtqResult res;
  res.act_format = o.act_format;
  Runner run(model, o, method, res);
  for (const LayerInfo* l : layers) run.spec_of[l->name] = spec_for(o, l->name);
  const LayerSplit split = split_layers(layers, calibrated);
  run.total = static_cast<int64_t>(layers.size());
  SequentialOptions so;
  so.batch = o.batch, so.fp64 = o.fp64, so.pass_progress = o.pass_progress;
  so.true_sequential = o.true_sequential && method.true_sequential;
  if (method.tune_block) so.before_compress = [&](int, const std::vector<at::Tensor>& h) { run.inputs = &h; };
  if (o.true_sequential && !so.true_sequential)
    res.warnings.push_back("--true-sequential does not apply to " + o.method +
                           " (its scales come from one statistics pass per block)");
  if (o.target_bpw > 0 && !split.in_blocks.empty())
    choose_bits(model, calib, layers, split.in_blocks, so, o, run, res);

  // KV-cache scales: each block's keys and values observed on its output pass, turned into scales (and set on
  // the model) once the block is done; journaled with it.
  struct KVAmax {
    at::Tensor k, v;
  };
  std::map<int, KVAmax> kv_amax;
  int kv_block = -1;
  struct ObserverOff {
    Model& m;
    ~ObserverOff() { m.set_kv_observer({}); }
  } observer_off{model};
  if (o.kv_hadamard && o.kv_bits == 0) fail(kComp, "the KV-cache Hadamard rotation needs --kv-bits 8");
  if (o.kv_bits > 0) {
    model.set_kv_hadamard(o.kv_hadamard);
    so.before_output = [&](int k) { kv_block = k, kv_amax.erase(k); };
    model.set_kv_observer([&](int b, const at::Tensor& keys, const at::Tensor& values) {
      if (b != kv_block) return;
      const at::Tensor ka = keys.detach().abs().amax({0, 2, 3}).to(at::kFloat);
      const at::Tensor va = values.detach().abs().amax({0, 2, 3}).to(at::kFloat);
      auto it = kv_amax.find(b);
      if (it == kv_amax.end())
        kv_amax[b] = {ka, va};
      else
        it->second.k = at::maximum(it->second.k, ka), it->second.v = at::maximum(it->second.v, va);
    });
  }
  auto kv_finish = [&](int k) {
    auto it = kv_amax.find(k);
    if (res.kv_scales.count(k) || it == kv_amax.end()) return;
    at::Tensor ks = kv_scales(it->second.k, kv_format).cpu(), vs = kv_scales(it->second.v, kv_format).cpu();
    model.set_kv_quant(k, ks, vs, o.kv_format);
    res.kv_scales[k] = {ks, vs};
    kv_amax.erase(it);
  };

  BlockPass pass;
  pass.phase = "quantize";
  pass.compress = [&](int k, const std::vector<const LayerInfo*>& ls, const BlockStats& st) { run.block(k, ls, st); };
  pass.rows = &res.layers, pass.warnings = &res.warnings;
  PtqBlockSaver saver(model);
  if (o.journal) saver.snapshot();
  pass.save = [&](int k, BlockJournal::Entry& e) {
    kv_finish(k);
    saver.save(k, res, e);
    auto kv = res.kv_scales.find(k);
    if (kv != res.kv_scales.end()) e.tensors["kv:k"] = kv->second.first, e.tensors["kv:v"] = kv->second.second;
  };
  pass.restore = [&](int k, const BlockJournal::Entry& e) {
    run.done += restore_ptq_block(e, model, res);
    auto ks = e.tensors.find("kv:k");
    if (ks != e.tensors.end()) {
      const at::Tensor vs = e.tensors.at("kv:v");
      model.set_kv_quant(k, ks->second, vs, o.kv_format);
      res.kv_scales[k] = {ks->second, vs};
    }
  };
  pass.after_block = [&](int k) {
    kv_finish(k);
    if (o.after_block) o.after_block(k, res);
    if (o.journal) saver.snapshot();
  };
  run_block_pass(model, calib, split.in_blocks, so, o.journal, pass);
  if (o.kv_bits > 0 && static_cast<int>(res.kv_scales.size()) < model.num_blocks())
    res.warnings.push_back("KV-cache scales for " + std::to_string(res.kv_scales.size()) + " of " +
                           std::to_string(model.num_blocks()) + " blocks: the blocks after the last quantized one " +
                           "are not run on the calibration data, their caches stay float");
  for (const LayerInfo* l : split.outside) {
    run.outside(*l);
    if (o.after_block) o.after_block(-1, res);  // written and released one layer at a time
  }
  sort_rows(model, res.layers);  // report rows in execution order
  return res;
}

}  // namespace mc
