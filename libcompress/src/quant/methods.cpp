// The method table (methods.h). It lives beside the quantize passes; the prune entries point into
// prune/ (prune_methods.h).
#include "mcompress/methods.h"

#include "mcompress/error.h"
#include "prune/prune_methods.h"
#include "ptq_methods.h"

namespace mc {

namespace {

MethodInfo quantize(const char* name, bool calib, const char* description, const char* label, QuantizeLayerFn f) {
  MethodInfo m{name, MethodKind::Quantize, calib, description, label};
  m.quantize_layer = f;
  return m;
}

// A method that folds per-channel scales into each scale group before its per-layer step (one
// statistics pass per block: no true-sequential order).
MethodInfo with_group_scales(MethodInfo m, GroupScalesFn scales, UnscaledLabelFn without) {
  m.group_scales = scales;
  m.without_scales = without;
  m.true_sequential = false;
  return m;
}

MethodInfo prune(const char* name, bool calib, const char* description, PruneLayerFn f) {
  // Prune reports have always been titled with the method's own name.
  MethodInfo m{name, MethodKind::Prune, calib, description, name};
  m.prune_layer = f;
  return m;
}

std::vector<MethodInfo> make_table() {
  std::vector<MethodInfo> t;
  t.push_back(quantize("rtn", false, "round to nearest; calibration data, when given, only measures per-layer errors",
                       "RTN", rtn_layer));
  MethodInfo hqq = quantize("hqq", false, "half-quadratic zero points (Badri & Shaji, 2023): RTN's scale, each group's "
                            "zero point fitted to an lp error (p 0.7, --hqq-iters updates, default 20), stored as "
                            "float16; asymmetric only; no data needed",
                            "HQQ", hqq_layer);
  hqq.float_zeros = true;
  hqq.check_options = check_hqq_options;
  t.push_back(hqq);
  t.push_back(quantize("imatrix", true, "RTN with grids weighted by each input column's mean square (importance "
                       "matrix)",
                       "imatrix", imatrix_layer));
  MethodInfo gptq = quantize("gptq", true, "error compensation through the inverse Hessian (Frantar et al., 2022)",
                             "GPTQ", gptq_layer);
  gptq.check_options = check_gptq_options;
  t.push_back(gptq);
  t.push_back(with_group_scales(quantize("awq", true, "activation-aware per-channel scales folded into the previous "
                                         "op, then clip search and RTN (Lin et al., 2023)", "AWQ", awq_layer),
                                awq_group_scales, awq_without_scales));
  MethodInfo ar = quantize("autoround", true, "signed-gradient rounding offsets and range factors tuned against "
                            "each block's output (Cheng et al., 2023; --autoround-iters, default 200)",
                            "AutoRound", rtn_layer);
  ar.tune_block = autoround_block;
  ar.true_sequential = false;  // the block's layers are tuned together
  ar.check_options = check_autoround_options;
  t.push_back(ar);
  MethodInfo sq = with_group_scales(quantize("smoothquant", true, "W8A8: outliers moved from activations into weights "
                                             "at each norm, per-token int8 inputs (Xiao et al., 2023)", "SmoothQuant",
                                             rtn_layer),
                                    smoothquant_group_scales, smoothquant_without_scales);
  sq.scales_after_norm_only = true;
  sq.quantizes_activations = true;
  sq.mixed_precision = false;
  sq.check_options = check_smoothquant_options;
  t.push_back(sq);
  // In the order error messages have always listed them.
  MethodInfo mag = prune("magnitude", false, "|W| over the layer (or over all layers: --distribution global)",
                         magnitude_layer);
  mag.global_distribution = true;
  t.push_back(mag);
  t.push_back(prune("wanda", true, "|W| x input norm, per output row; no weight update (Sun et al., 2023)",
                    wanda_layer));
  t.push_back(prune("sparsegpt", true, "OBS weight update through the inverse Hessian; optional joint quantization "
                    "(Frantar & Alistarh, 2023)", sparsegpt_layer));
  return t;
}

}  // namespace

const char* kind_name(MethodKind kind) { return kind == MethodKind::Quantize ? "quantize" : "prune"; }

const std::vector<MethodInfo>& all_methods() {
  static const std::vector<MethodInfo> table = make_table();
  return table;
}

std::vector<const MethodInfo*> methods_of(MethodKind kind) {
  std::vector<const MethodInfo*> out;
  for (const MethodInfo& m : all_methods())
    if (m.kind == kind) out.push_back(&m);
  return out;
}

std::string method_names(MethodKind kind) {
  std::string s;
  for (const MethodInfo* m : methods_of(kind)) s += (s.empty() ? "" : ", ") + std::string(m->name);
  return s;
}

const MethodInfo* find_method(MethodKind kind, const std::string& name) {
  for (const MethodInfo* m : methods_of(kind))
    if (name == m->name) return m;
  fail(kind_name(kind), "--method '", name, "' is not available (allowed: ", method_names(kind), ")");
}

}  // namespace mc
