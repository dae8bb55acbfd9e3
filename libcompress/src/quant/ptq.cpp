// quantize_model: layer selection, the per-block compressor shared by all methods, the mixed-precision
// scan and allocation (see ptq.h).
#include "mcompress/ptq.h"

#include <ATen/ATen.h>
#include <fnmatch.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <regex>
#include <set>

#include "mcompress/calib.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/prune/sparsegpt.h"
#include "mcompress/quant/awq.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/imatrix.h"
#include "mcompress/tensor.h"
#include "ptq_journal.h"

namespace mc {

namespace {

constexpr const char* kComp = "quantize";

std::string fmtd(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

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

double tr_dhd(const at::Tensor& D, const at::Tensor& H) { return (at::matmul(D, H) * D).sum().item<double>(); }

// H of the inputs after a scale fold: the layer now reads x / s, so H' = H / (s sᵀ).
at::Tensor scaled_hessian(const at::Tensor& H, const at::Tensor& s) {
  return H.div(s.unsqueeze(0)).div_(s.unsqueeze(1));
}

struct Quantized {
  QuantResult q;
  at::Tensor wq;  // float [out, in], what the model now holds (in the scaled space)
  std::string note;
  std::vector<std::string> warnings;
};

class Runner {
 public:
  Runner(Model& m, const PtqOptions& o, PtqResult& r) : m_(m), o_(o), r_(r) {}

  std::map<std::string, QuantSpec> spec_of;  // per layer name
  // Scan mode: errors[layer][candidate] instead of results.
  std::map<std::string, std::vector<double>>* scan = nullptr;
  int scan_candidate = 0;
  int64_t done = 0, total = 0;

  // Quantizes block k's `layers` (all share the statistics pass).
  void block(int k, const std::vector<const LayerInfo*>& layers, const BlockStats& stats) {
    std::set<std::string> in_block;
    for (const LayerInfo* l : layers) in_block.insert(l->name);
    std::map<std::string, at::Tensor> scale_in;  // layer -> s it now reads x / s with
    std::map<std::string, std::string> group_note;
    if (o_.method == "awq" || o_.method == "smoothquant") {
      std::vector<std::pair<ScaleGroup, at::Tensor>> folds;
      for (const ScaleGroup& g : m_.scale_groups(k)) {
        std::vector<const LayerInfo*> consumers;
        for (const auto& name : g.layers)
          if (in_block.count(name)) consumers.push_back(&m_.layer(name));
        if (consumers.empty() || consumers.size() != g.layers.size()) continue;  // all or nothing
        if (o_.method == "smoothquant" && !g.prev_is_norm) continue;
        const HessianAccumulator& st = *stats.at(consumers[0]->name);
        std::string note;
        at::Tensor s = o_.method == "awq" ? awq_search(g, consumers, st, note) : smooth_scales(consumers, st, note);
        if (!s.defined()) continue;
        folds.emplace_back(g, s);
        for (const LayerInfo* c : consumers) scale_in[c->name] = g.expand(s), group_note[c->name] = note;
      }
      for (const auto& [g, s] : folds) m_.apply_scale_group(g, s);
    }
    for (const LayerInfo* l : layers) {
      if (o_.progress) o_.progress(scan ? "scan" : "quantize", *l, ++done, total);
      const HessianAccumulator& st = *stats.at(l->name);
      at::Tensor H = st.hessian().to(at::kFloat);
      auto sit = scale_in.find(l->name);
      if (sit != scale_in.end()) H = scaled_hessian(H, sit->second);
      const at::Tensor w_full = m_.param(l->weight);
      const at::Tensor W = w_full.to(at::kFloat).reshape({w_full.size(0), -1});
      Quantized z = quantize_layer(*l, W, H, spec_of.at(l->name));
      const at::Tensor D = W - z.wq;
      const double err = tr_dhd(D, H);
      if (scan) {
        (*scan)[l->name][static_cast<size_t>(scan_candidate)] = err;
        m_.set_param(l->weight, z.wq.reshape(w_full.sizes()));
        continue;
      }
      const double den = tr_dhd(W, H);
      LayerRow row;
      row.name = l->name;
      row.shape = shape_str(w_full.sizes().vec());
      row.scheme = scheme_name(spec_of.at(l->name));
      row.params = W.numel();
      row.rel_output_error = den > 0 ? err / den : 0.0;
      row.note = z.note;
      if (group_note.count(l->name)) row.note += (row.note.empty() ? "" : "; ") + group_note[l->name];
      r_.layers.push_back(row);
      for (auto& w : z.warnings) r_.warnings.push_back(std::move(w));
      m_.set_param(l->weight, z.wq.reshape(w_full.sizes()));
      if (o_.method == "smoothquant" && l->kind == LayerKind::Linear) {
        use_w8a8(m_, l->name, z.q, o_.act_bits);
        r_.act_bits[l->name] = o_.act_bits;
      }
      if (w_full.dim() != 2) z.q.weight_shape = w_full.sizes().vec();
      r_.quantized.emplace(l->weight, std::move(z.q));
    }
  }

  std::string scheme_name(const QuantSpec& sp) const {
    std::string s = o_.method + " " + sp.describe();
    if (o_.method == "smoothquant") s += ", a" + std::to_string(o_.act_bits) + " per-token";
    return s;
  }

  Quantized quantize_layer(const LayerInfo& l, const at::Tensor& W, const at::Tensor& H, const QuantSpec& sp) {
    Quantized z;
    const double hmax = H.diagonal().max().item<double>();
    if (!(hmax > 0)) {
      // Reached, but every input was zero: nothing to calibrate on.
      z.q = rtn_quantize(W, sp, l.name);
      z.wq = z.q.dequantize();
      z.note = "inputs all zero: plain RTN";
      z.warnings.push_back(l.name + ": its calibration inputs are all zero; quantized with plain RTN");
      return z;
    }
    const std::string& m = o_.method;
    if (m == "rtn" || m == "smoothquant") {
      z.q = rtn_quantize(W, sp, l.name);
    } else if (m == "imatrix") {
      z.q = imatrix_quantize(W, sp, H.diagonal(), l.name);
    } else if (m == "awq") {
      z.q = rtn_quantize(o_.awq_clip ? awq_clip(W, H, sp, l.name) : W, sp, l.name);
    } else if (m == "gptq" && o_.keep_sparsity && W.eq(0).any().item<bool>()) {
      SparseGptOptions so;
      so.mask = W.ne(0);
      so.quant = &sp;
      so.damp = o_.damp;
      so.block_size = o_.block_size;
      SparseGptResult r = sparsegpt_prune(W, H, so, l.name);
      if (r.damp_retries)
        z.warnings.push_back(l.name + ": Cholesky needed " + std::to_string(r.damp_retries) + " retries");
      z.note = fmtd("%.1f%% zeros kept", 100.0 * (1.0 - so.mask.to(at::kDouble).mean().item<double>()));
      z.wq = r.weight;
      z.q = std::move(*r.quant);
      return z;
    } else if (m == "gptq") {
      GptqOptions go;
      go.spec = sp, go.damp = o_.damp, go.act_order = o_.act_order, go.static_groups = o_.static_groups;
      go.block_size = o_.block_size;
      GptqResult g = gptq_quantize(W, H, go, l.name);
      if (g.damp_retries)
        z.warnings.push_back(l.name + ": Cholesky needed " + std::to_string(g.damp_retries) +
                             " retries; damping raised to " + fmtd("%g", g.damp_rel) + " of mean(diag H)");
      if (g.dead_columns) z.note = std::to_string(g.dead_columns) + " dead input columns";
      z.wq = g.dequantize();
      z.q = std::move(g.quant);
      return z;
    } else {
      fail(kComp, "--method '", m, "' is not available (allowed: rtn, imatrix, gptq, awq, smoothquant)");
    }
    z.wq = z.q.dequantize();
    return z;
  }

  // AWQ: s = mean|x|^α (normalised), α minimising Σ_c tr(D H Dᵀ) with D = W - Q(W s)/s (quant/awq.h).
  // The returned s is per prev channel; the consumers read g.expand(s).
  at::Tensor awq_search(const ScaleGroup& g, const std::vector<const LayerInfo*>& consumers,
                        const HessianAccumulator& st, std::string& note) {
    const at::Tensor xm = g.reduce(st.mean_abs().to(at::kFloat).to(m_.device()));
    std::vector<at::Tensor> Ws;
    std::vector<QuantSpec> specs;
    std::vector<std::string> names;
    for (const LayerInfo* c : consumers) {
      Ws.push_back(m_.param(c->weight));
      specs.push_back(spec_of.at(c->name));
      names.push_back(c->name);
    }
    AwqSearchOptions ao;
    ao.expand = [&g](const at::Tensor& s) { return g.expand(s); };
    AwqScales r = awq_search_scales(xm, st.hessian(), Ws, specs, ao, names);
    if (r.scales.defined()) note = "awq alpha " + fmtd("%.2f", r.alpha);
    return r.scales;
  }

  // SmoothQuant: s_j = max|X_j|^α / max|W_j|^(1-α) over the group's weights.
  at::Tensor smooth_scales(const std::vector<const LayerInfo*>& consumers, const HessianAccumulator& st,
                           std::string& note) {
    const at::Tensor xmax = st.max_abs().to(at::kFloat).to(m_.device());
    if (!(xmax.max().item<double>() > 0)) return {};
    at::Tensor wmax;
    for (const LayerInfo* c : consumers) {
      at::Tensor a = m_.param(c->weight).to(at::kFloat).abs().amax(0);
      wmax = wmax.defined() ? at::maximum(wmax, a) : a;
    }
    const double a = o_.smooth_alpha;
    at::Tensor s = xmax.clamp_min(1e-5).pow(a).div_(wmax.clamp_min(1e-5).pow(1.0 - a));
    // A channel that never saw input keeps scale 1.
    s = at::where(xmax.gt(0), s, at::ones_like(s));
    note = "smoothed, alpha " + fmtd("%.2f", a);
    return s;
  }

 private:
  Model& m_;
  const PtqOptions& o_;
  PtqResult& r_;
};

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

std::vector<int> allocate_bits(const std::vector<std::vector<double>>& errors, const std::vector<int64_t>& params,
                               const std::vector<int>& bits, double target_bpw) {
  const size_t L = params.size(), C = bits.size();
  if (errors.size() != L || C == 0) fail(kComp, "allocate_bits: ", errors.size(), " error rows for ", L, " layers");
  for (size_t c = 1; c < C; ++c)
    if (bits[c] <= bits[c - 1]) fail(kComp, "candidate bits must be ascending");
  double total = 0, min_cost = 0;
  int64_t g = 0;
  for (size_t l = 0; l < L; ++l) {
    if (errors[l].size() != C) fail(kComp, "allocate_bits: layer ", l, " has ", errors[l].size(), " errors");
    total += double(params[l]);
    min_cost += double(params[l]) * bits[0];
    g = std::gcd(g, params[l]);
  }
  const double budget = target_bpw * total;
  if (min_cost > budget * (1 + 1e-12))
    fail(kComp, "--target-bpw ", target_bpw, " is below the smallest candidate (", bits[0], " bits)");
  // Extra cost over the all-smallest assignment, in units (exact when the unit divides every
  // layer's cost; otherwise rounded up, so the budget still holds).
  constexpr double kMaxUnits = 100000;
  double unit = std::max<double>(1.0, double(g));
  const double spare = budget - min_cost;
  if (spare / unit > kMaxUnits) unit = std::ceil(spare / kMaxUnits);
  const int64_t J = static_cast<int64_t>(std::floor(spare / unit + 1e-9));
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> dp(static_cast<size_t>(J + 1), 0.0), next;
  std::vector<std::vector<uint8_t>> choice(L, std::vector<uint8_t>(static_cast<size_t>(J + 1), 0));
  for (size_t l = 0; l < L; ++l) {
    next.assign(dp.size(), inf);
    for (size_t c = 0; c < C; ++c) {
      const int64_t cost = static_cast<int64_t>(std::ceil(double(params[l]) * (bits[c] - bits[0]) / unit - 1e-9));
      for (int64_t j = cost; j <= J; ++j) {
        const double v = dp[static_cast<size_t>(j - cost)] + errors[l][c];
        if (v < next[static_cast<size_t>(j)]) next[static_cast<size_t>(j)] = v, choice[l][static_cast<size_t>(j)] = uint8_t(c);
      }
    }
    dp.swap(next);
  }
  std::vector<int> pick(L);
  int64_t j = J;
  for (size_t l = L; l-- > 0;) {
    const int c = choice[l][static_cast<size_t>(j)];
    pick[l] = c;
    j -= static_cast<int64_t>(std::ceil(double(params[l]) * (bits[c] - bits[0]) / unit - 1e-9));
  }
  return pick;
}

PtqResult quantize_model(Model& model, const at::Tensor& calib, const PtqOptions& o) {
  static const std::set<std::string> methods = {"rtn", "imatrix", "gptq", "awq", "smoothquant"};
  if (!methods.count(o.method))
    fail(kComp, "--method '", o.method, "' is not available (allowed: rtn, imatrix, gptq, awq, smoothquant)");
  if (o.method == "smoothquant" && (o.act_bits < 2 || o.act_bits > 8))
    fail(kComp, "activation bits ", o.act_bits, " outside 2..8");
  if (o.method == "smoothquant" && !(o.smooth_alpha >= 0 && o.smooth_alpha <= 1))
    fail(kComp, "SmoothQuant alpha ", o.smooth_alpha, " outside [0, 1]");
  if (o.keep_sparsity && o.method == "gptq" && o.act_order)
    fail(kComp, "--keep-sparsity with gptq does not support --act-order");
  if (o.target_bpw > 0 && o.method == "smoothquant")
    fail(kComp, "--target-bpw (mixed precision) does not apply to smoothquant (W8A8)");
  const std::vector<const LayerInfo*> layers = select_layers(model, o);
  const bool calibrated = calib.defined();
  if (!calibrated && o.method != "rtn")
    fail(kComp, "--method ", o.method, " needs calibration data (--calib DATA)");
  if (!calibrated && o.target_bpw > 0) fail(kComp, "--target-bpw needs calibration data (--calib DATA)");

  PtqResult res;
  Runner run(model, o, res);
  std::set<std::string> in_blocks;
  std::vector<const LayerInfo*> outside;
  for (const LayerInfo* l : layers) {
    run.spec_of[l->name] = spec_for(o, l->name);
    if (l->block >= 0 && calibrated)
      in_blocks.insert(l->name);
    else
      outside.push_back(l);
  }
  run.total = static_cast<int64_t>(in_blocks.size());
  SequentialOptions so;
  so.batch = o.batch, so.fp64 = o.fp64;
  so.true_sequential = o.true_sequential && o.method != "awq" && o.method != "smoothquant";
  if (o.true_sequential && !so.true_sequential)
    res.warnings.push_back("--true-sequential does not apply to " + o.method +
                           " (its scales come from one statistics pass per block)");

  if (o.target_bpw > 0 && !in_blocks.empty()) {
    std::vector<int> bits = o.candidate_bits;
    std::sort(bits.begin(), bits.end());
    bits.erase(std::unique(bits.begin(), bits.end()), bits.end());
    for (int b : bits)
      if (b < 2 || b > 8) fail(kComp, "candidate bits ", b, " outside 2..8");
    // Scan: each block once per candidate on the unchanged model (weights restored after each).
    std::map<std::string, std::vector<double>> errors;
    for (const auto& n : in_blocks) errors[n].assign(bits.size(), 0.0);
    run.scan = &errors;
    run.total = static_cast<int64_t>(in_blocks.size() * bits.size());
    SequentialOptions scan_so = so;
    if (o.journal) {
      // Finished blocks of an interrupted scan: their errors from the journal, the scan goes on after them.
      scan_so.start_block = o.journal->finished("scan");
      for (int k = 0; k < scan_so.start_block; ++k)
        for (const auto& [key, v] : o.journal->load("scan", k).record.numbers) {
          const size_t hash = key.rfind('#');
          errors.at(key.substr(0, hash))[std::stoul(key.substr(hash + 1))] = v;
          ++run.done;
        }
      if (scan_so.start_block > 0) scan_so.start_hidden = o.journal->hidden("scan", model.device());
      scan_so.after_block = [&](int k, const std::vector<at::Tensor>& hidden) {
        BlockJournal::Record rec;
        for (const auto& l : model.layers())
          if (l.block == k && errors.count(l.name))
            for (size_t c = 0; c < bits.size(); ++c) rec.numbers[l.name + "#" + std::to_string(c)] = errors[l.name][c];
        o.journal->save("scan", k, {}, rec, hidden);
      };
    }
    compress_blocks(model, calib, in_blocks,
        [&](int k, const std::vector<const LayerInfo*>& ls, const BlockStats& st) {
          std::map<std::string, at::Tensor> saved;
          for (const auto& [key, t] : model.params()) saved[key] = t;
          for (size_t c = 0; c < bits.size(); ++c) {
            for (const LayerInfo* l : ls) run.spec_of[l->name].bits = bits[c];
            run.scan_candidate = static_cast<int>(c);
            run.block(k, ls, st);
            for (const auto& [key, t] : saved)
              if (!model.param(key).is_same(t)) model.set_param(key, t);
          }
        },
        scan_so);
    run.scan = nullptr;
    std::vector<std::vector<double>> errs;
    std::vector<int64_t> params;
    std::vector<std::string> names;
    for (const LayerInfo* l : layers)
      if (in_blocks.count(l->name)) {
        names.push_back(l->name);
        errs.push_back(errors.at(l->name));
        params.push_back(model.param(l->weight).numel());
      }
    const std::vector<int> pick = allocate_bits(errs, params, bits, o.target_bpw);
    double code_bits = 0, n = 0;
    std::map<int, int> histogram;
    for (size_t i = 0; i < names.size(); ++i) {
      run.spec_of[names[i]].bits = bits[static_cast<size_t>(pick[i])];
      code_bits += double(params[i]) * bits[static_cast<size_t>(pick[i])];
      n += double(params[i]);
      ++histogram[bits[static_cast<size_t>(pick[i])]];
    }
    std::string cand, hist;
    for (int b : bits) cand += (cand.empty() ? "" : ", ") + std::to_string(b);
    for (auto [b, c] : histogram) hist += (hist.empty() ? "" : ", ") + std::to_string(c) + " x int" + std::to_string(b);
    res.settings["mixed precision"] = "target " + fmtd("%.3g", o.target_bpw) + " code bits/weight over {" + cand +
                                      "}: chose " + fmtd("%.3f", code_bits / n) + " (" + hist + ")";
    run.done = 0;
    run.total = static_cast<int64_t>(in_blocks.size());
  }

  if (!in_blocks.empty()) {
    PtqBlockSaver saver(model);
    if (o.journal) {
      // Blocks finished by an interrupted run: back into the model and the result, handed to the
      // caller in the same order as when they were computed.
      so.start_block = o.journal->finished("quantize");
      for (int k = 0; k < so.start_block; ++k) {
        run.done += restore_ptq_block(*o.journal, k, model, res);
        if (o.after_block) o.after_block(k, res);
      }
      if (so.start_block > 0) so.start_hidden = o.journal->hidden("quantize", model.device());
      saver.snapshot(res);
    }
    so.after_block = [&](int k, const std::vector<at::Tensor>& hidden) {
      if (o.journal) saver.save(*o.journal, k, res, hidden);
      if (o.after_block) o.after_block(k, res);
      if (o.journal) saver.snapshot(res);
    };
    compress_blocks(model, calib, in_blocks,
                    [&](int k, const std::vector<const LayerInfo*>& ls, const BlockStats& st) { run.block(k, ls, st); },
                    so);
  }
  // Layers without calibration statistics (outside the blocks, or no calibration data): RTN.
  for (const LayerInfo* l : outside) {
    const at::Tensor w_full = model.param(l->weight);
    const at::Tensor W = w_full.to(at::kFloat).reshape({w_full.size(0), -1});
    const QuantSpec& sp = run.spec_of.at(l->name);
    QuantResult q = rtn_quantize(W, sp, l->name);
    if (w_full.dim() != 2) q.weight_shape = w_full.sizes().vec();
    LayerRow row;
    row.name = l->name;
    row.shape = shape_str(w_full.sizes().vec());
    row.scheme = "rtn " + sp.describe();
    row.params = W.numel();
    if (o.method != "rtn") row.note = "outside the blocks: plain RTN";
    if (sp.group_size > 0 && W.size(1) % sp.group_size)
      row.note += (row.note.empty() ? "" : "; ") + std::string("last group of ") +
                  std::to_string(W.size(1) % sp.group_size) + " columns";
    res.layers.push_back(row);
    model.set_param(l->weight, q.dequantize().reshape(w_full.sizes()));
    res.quantized.emplace(l->weight, std::move(q));
  }
  // Report rows in execution order.
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < model.layers().size(); ++i) order[model.layers()[i].name] = i;
  std::stable_sort(res.layers.begin(), res.layers.end(),
                   [&](const LayerRow& a, const LayerRow& b) { return order[a.name] < order[b.name]; });
  return res;
}

}  // namespace mc
