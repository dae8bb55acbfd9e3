// What the quantize job writes besides the quantizer's codes: sparse layouts for pruned inputs, the
// W8A8 activation metadata, and which runtime each W8A8 layer gets (quantize_stage.h).
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <optional>

#include "job.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/sparse.h"
#include "quantize_stage.h"

namespace mc {

bool add_sparse_if_smaller(PackedCheckpointWriter& writer, const std::string& key, const QuantResult& q) {
  if (!q.weight_shape.empty()) return false;
  const at::Tensor w = q.dequantize();
  const int64_t out_f = w.size(0), in_f = w.size(1), kept = w.ne(0).sum().item<int64_t>();
  const bool gi = q.g_idx.defined();
  int64_t best = dense_packed_bytes(out_f, in_f, &q.spec, gi);
  std::optional<SparseLayout> pick;
  SparseLayout bm;
  if (int64_t b = sparse_bytes(out_f, in_f, kept, bm, &q.spec, gi); b < best) best = b, pick = bm;
  for (auto [n, m] : {std::pair{2, 4}, std::pair{4, 8}}) {
    if (in_f % m) continue;
    if (!w.eq(0).reshape({out_f, in_f / m, m}).sum(-1).ge(n).all().item<bool>()) continue;
    SparseLayout nm;
    nm.n = n, nm.m = m;
    // On a tie with the bitmask (2:4 costs the same), N:M: fixed-size rows suit kernels.
    if (int64_t b = sparse_bytes(out_f, in_f, out_f * in_f / m * (m - n), nm, &q.spec, gi); b <= best)
      best = b, pick = nm;
  }
  if (!pick) return false;
  writer.add_sparse(key, w, *pick, &q);
  return true;
}

std::string activation_metadata(const std::map<std::string, int>& act_bits, ActFormat format) {
  std::string j = "{\"layers\": {";
  bool first = true;
  for (const auto& [name, bits] : act_bits) {
    j += (first ? "" : ", ") + std::string("\"") + name + "\": {\"bits\": " + std::to_string(bits);
    if (format == ActFormat::int_)
      j += ", \"granularity\": \"per-token\", \"symmetric\": true, \"dynamic\": true}";
    else  // quant/act_quant.h describes each format's grouping
      j += ", \"format\": \"" + act_quant_name({format, bits}) + "\", \"dynamic\": true}";
    first = false;
  }
  return j + "}}";
}

std::string kv_cache_metadata(const std::string& format, const std::map<int, std::pair<at::Tensor, at::Tensor>>& scales,
                              bool hadamard) {
  nlohmann::json j;
  j["format"] = format;
  j["granularity"] = "per kv head, static";
  if (hadamard) j["rotation"] = "hadamard";  // scales of x H per head (Model::set_kv_hadamard)
  for (const auto& [block, kv] : scales) {
    const at::Tensor k = kv.first.to(at::kFloat).cpu().contiguous(), v = kv.second.to(at::kFloat).cpu().contiguous();
    j["k_scale"][std::to_string(block)] = std::vector<float>(k.data_ptr<float>(), k.data_ptr<float>() + k.numel());
    j["v_scale"][std::to_string(block)] = std::vector<float>(v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
  }
  return j.dump();
}

void w8a8_runtime_rows(JobRun& job, const std::string& out_model, bool simulate_int8) {
  if (!job.reloaded) {
    job.start();
    job.reloaded = load_model(out_model, job.lo);
    job.step("reload to check the W8A8 runtime");
  }
  int kernel = 0, simulated = 0;
  std::string why;
  for (auto& row : job.rep.layers) {
    row.runtime = job.reloaded->input_quant_runtime(row.name);
    if (row.runtime.empty()) continue;
    if (row.runtime.rfind("int8 kernel", 0) == 0) ++kernel;
    else ++simulated, why = row.runtime.substr(row.runtime.find(':') + 2);
  }
  job.rep.settings["matmuls"] = std::to_string(kernel) + " layers on the int8 kernel, " + std::to_string(simulated) +
                                " simulated in float" + (simulated ? " (" + why + ")" : "");
  if (kernel == 0) {
    if (!simulate_int8)
      job.rep.warnings.push_back("no layer runs the int8 kernel (" + why +
                                 "): every matmul with quantized inputs is simulated in float, so this run measures "
                                 "accuracy, not speed");
    return;
  }
  if (!job.have_eval || simulate_int8) return;
  // The same W8A8 model with the int8 matmuls simulated in float: a check of the int8 kernel.
  job.start();
  LoadOptions sim_lo = job.lo;
  sim_lo.int8_kernel = false;
  auto sim = load_model(out_model, sim_lo);
  std::vector<MetricRow> sim_rows;
  std::string proto;
  evaluate_into(*sim, nullptr, job.ed, job.eo, true, sim_rows, proto);
  for (auto& m : sim_rows)
    if (m.is_primary) {
      m.name += " (int8 matmuls simulated in float)";
      m.is_primary = false;
      job.rep.metrics.push_back(m);
    }
  job.step("evaluate compressed, int8 simulated");
}

}  // namespace mc
