// The plan of a stage (pipeline.h): the layers the stage's own selection code picks (select_layers,
// prune_layers), what happens to each, and the stored bits before and after.
#include <ATen/ATen.h>

#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "job.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/methods.h"
#include "mcompress/ptq.h"
#include "prune_stage.h"
#include "quantize_stage.h"

namespace mc {

namespace {

// Stored bits per weight of a tensor in the input file, else of the loaded parameter.
class InputBits {
 public:
  InputBits(const Model& m, const std::string& path) : m_(m), dtypes_(stored_dtypes(path)) {
    try {
      in_ = open_checkpoint(path);
    } catch (const Error&) {
    }
  }
  double operator()(const std::string& key) const {
    const at::Tensor& w = m_.param(key);
    const double n = double(std::max<int64_t>(1, w.numel()));
    if (in_ && in_->contains(key)) return 8.0 * double(in_->info(key).nbytes) / n;
    if (in_) {  // a packed input: the weight's parts (codes, scales, mask, ...)
      uint64_t bytes = 0;
      for (const auto& t : in_->tensors())
        if (t.name.rfind(key + ".", 0) == 0) bytes += t.nbytes;
      if (bytes) return 8.0 * double(bytes) / n;
    }
    auto it = dtypes_.find(key);  // a Hugging Face directory: the shard's dtype
    if (it != dtypes_.end() && !is_block(it->second)) return 8.0 * double(dtype_info(it->second).block_bytes);
    return 8.0 * double(w.element_size());
  }

 private:
  const Model& m_;
  std::map<std::string, DType> dtypes_;
  std::unique_ptr<CheckpointReader> in_;
};

// Stored bits per weight of a grid: the codes, fp16 scales and the zero points (packed codes, or float16
// when the method fits fractional ones: an upper bound, a layer whose zeros all stay integers stores codes).
double grid_bits(const QuantSpec& s, int64_t in_features, bool float_zeros = false) {
  const double g = s.group_size > 0 ? double(s.group_size) : s.group_size == 0 ? double(in_features) : 1e12;
  return s.bits + 16.0 / g + (s.symmetric ? 0.0 : (float_zeros ? 16.0 : double(s.bits)) / g);
}

}  // namespace

std::vector<PlanRow> plan_stage(const Model& model, const std::string& model_path, const StageOptions& so) {
  std::vector<PlanRow> plan;
  const InputBits input_bits(model, model_path);
  if (so.pass() == "quantize") {
    const QuantizeStage st = quantize_stage(so);
    const PtqOptions& o = st.ptq;
    const bool float_zeros = find_method(MethodKind::Quantize, o.method)->float_zeros;
    if (st.rotate != "none") {  // a model that cannot be rotated fails here, before any weight is read
      PlanRow row;
      row.name = "(whole model, first)";
      row.what = "rotate " + rotation_plan(model, st.rotation);
      plan.push_back(row);
    }
    for (const LayerInfo* l : select_layers(model, o)) {
      const at::Tensor& w = model.param(l->weight);
      const int64_t in_f = w.numel() / w.size(0);
      const QuantSpec* spec = &o.spec;
      bool override = false;
      for (const auto& ov : o.overrides)
        if (matches_any(ov.patterns, l->name)) {
          spec = &ov.spec, override = true;
          break;
        }
      PlanRow row;
      row.name = l->name;
      row.params = w.numel();
      row.bits_before = input_bits(l->weight);
      const bool rtn_only = l->kind == LayerKind::Embedding || l->is_classifier;
      const std::string method = rtn_only && o.method != "rtn" ? "rtn" : o.method;
      if (o.target_bpw > 0 && !override) {
        row.what = method + " mixed precision, bits from {" + so.text("bits-candidates") + "} by sensitivity (mean " +
                   fmt_num("%g", o.target_bpw) + ")";
        QuantSpec mean = *spec;
        row.bits_after = grid_bits(mean, in_f, float_zeros && !rtn_only) - mean.bits + o.target_bpw;
      } else {
        row.what = method + " " + spec->describe() + (override ? " (override)" : "");
        row.bits_after = grid_bits(*spec, in_f, float_zeros && !rtn_only);
      }
      // Mixed precision may pick any candidate for a layer: counted at 8 bits (a larger estimate only asks
      // for more room).
      row.code_bits = o.target_bpw > 0 && !override ? 8 : spec->bits;
      if ((st.w8a8 || o.quantize_activations) && l->kind == LayerKind::Linear && !rtn_only)
        row.what += o.act_format == ActFormat::int_ ? ", activations int" + std::to_string(o.act_bits) + " per token"
                                                     : ", activations " + act_quant_name({o.act_format, o.act_bits});
      plan.push_back(row);
    }
  } else if (so.pass() == "prune") {
    const PruneStage st = prune_stage(so);
    if (st.is_structured) {
      PlanRow row;
      row.name = "(all blocks)";
      row.what = "structured " + describe(st.structured) + ": channels, heads and blocks ranked on calibration data";
      plan.push_back(row);
      return plan;
    }
    const PruneOptions& o = st.prune;
    for (const LayerInfo* l : prune_layers(model, o)) {
      const at::Tensor& w = model.param(l->weight);
      const int64_t in_f = w.numel() / w.size(0);
      PlanRow row;
      row.name = l->name;
      row.params = w.numel();
      row.bits_before = input_bits(l->weight);
      const double keep = o.prune_m ? 1.0 - double(o.prune_n) / o.prune_m : 1.0 - o.sparsity;
      row.what = o.method + " " + (o.prune_m ? st.pattern : fmt_num("%g%%", 100 * o.sparsity)) +
                 (o.prune_m || o.distribution == "uniform" ? "" : " on average (" + o.distribution + ")") +
                 (o.quant ? " + " + o.quant->describe() : "") + ", " + st.storage + " storage";
      const double value_bits = o.quant ? grid_bits(*o.quant, in_f) : st.storage == "sparse" ? 16.0 : row.bits_before;
      row.keep = st.storage == "sparse" ? keep : 1.0;
      row.index_bits = st.storage == "sparse" ? (o.prune_m ? keep * 2.0 : 1.0) : 0.0;
      row.bits_after = row.keep * value_bits + row.index_bits;
      if (o.quant) row.code_bits = o.quant->bits;
      plan.push_back(row);
    }
  } else {
    fail("pipeline", so.where(), ": no per-layer plan for a ", so.pass(), " stage");
  }
  return plan;
}

std::vector<PlanRow> combine_plans(const std::vector<std::vector<PlanRow>>& stages) {
  std::vector<PlanRow> out;
  std::map<std::string, size_t> at;
  for (const auto& plan : stages)
    for (const auto& r : plan) {
      auto it = at.find(r.name);
      if (it == at.end()) {
        at[r.name] = out.size();
        out.push_back(r);
        continue;
      }
      PlanRow& c = out[it->second];
      c.what += "; " + r.what;
      // A later stage on a sparse layer stores the kept values on its grid, with the same mask.
      c.bits_after = c.keep * r.bits_after + c.index_bits;
      c.keep *= r.keep;
    }
  return out;
}

void print_plan(const std::vector<PlanRow>& plan, uint64_t before, const EventSink& events) {
  if (events.json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : plan)
      rows.push_back({{"layer", r.name}, {"what", r.what}, {"params", r.params}, {"bits_before", r.bits_before},
                      {"bits_after", r.bits_after}});
    events.emit("plan", nlohmann::json({{"layers", rows}}).dump());
    return;
  }
  if (events.quiet) return;
  std::printf("  %-36s %10s %8s %8s  %s\n", "layer", "params", "bits", "-> bits", "what happens");
  double delta = 0;
  for (const auto& r : plan) {
    std::printf("  %-36s %10lld %8.2f %8.2f  %s\n", r.name.c_str(), static_cast<long long>(r.params), r.bits_before,
                r.bits_after, r.what.c_str());
    delta += double(r.params) * (r.bits_before - r.bits_after) / 8;
  }
  const double after = double(before) - delta;
  if (before > 0 && after > 0)
    std::printf("\n  estimated size: %s -> %s (%.2fx smaller; the other tensors kept as stored)\n",
                human_size(before).c_str(), human_size(uint64_t(after)).c_str(), double(before) / after);
  std::fflush(stdout);
}

}  // namespace mc
