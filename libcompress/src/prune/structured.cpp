// Structured pruning of llama models (prune/structured.h): one calibration pass collects Σ a² of the
// inputs of wo and w2 per block (hooks) and the cosine between each block's input and output (the
// model run block by block), then whole FFN channels, heads / KV groups and blocks are sliced away.
#include "mcompress/prune/structured.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

constexpr const char* kC = "structured";

std::string pct(double f) {
  std::ostringstream os;
  os << f * 100 << "%";
  return os.str();
}

// 1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st, ...
std::string ordinal(int64_t k) {
  const int64_t t = k % 100, u = k % 10;
  const char* suf = (t >= 11 && t <= 13) ? "th" : u == 1 ? "st" : u == 2 ? "nd" : u == 3 ? "rd" : "th";
  return std::to_string(k) + suf;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::vector<int64_t> to_vec(const at::Tensor& idx) {
  at::Tensor c = idx.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Indices of the `keep` largest scores (ties: lower index first), in ascending index order.
at::Tensor top_indices(const at::Tensor& score, int64_t keep) {
  at::Tensor order = std::get<1>(at::sort(score.to(at::kCPU), /*stable=*/true, 0, /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(0, 0, keep)));
}

// Channels kept per block: the fraction removed, then rounded down to a multiple of 8 when that
// leaves at least 8 (matmul-friendly widths), at least 1.
int64_t ffn_keep(int64_t F, double frac) {
  if (frac <= 0) return F;
  int64_t keep = F - static_cast<int64_t>(std::llround(frac * double(F)));
  if (keep >= 8) keep = keep / 8 * 8;
  return std::max<int64_t>(keep, 1);
}

struct Activations {
  std::vector<at::Tensor> ffn_sq, attn_sq;  // per block: Σ a² per input channel of w2 / wo (float64)
  std::vector<double> cos_sum;              // per block: Σ over tokens of cos(input, output)
  int64_t tokens = 0;
};

Activations collect(LlamaModel& m, const at::Tensor& calib, int64_t batch) {
  const auto& c = m.config();
  const int n = static_cast<int>(c.n_layers);
  Activations a;
  a.ffn_sq.resize(n), a.attn_sq.resize(n), a.cos_sum.assign(n, 0.0);
  std::map<std::string, std::pair<int, bool>> watch;  // weight key -> (block, is w2)
  for (int k = 0; k < n; ++k) {
    watch[llama_param_name(c.names, "wo", k)] = {k, false};
    watch[llama_param_name(c.names, "w2", k)] = {k, true};
  }
  const int id = m.add_hook([&](const LayerInfo& L, const at::Tensor& in, const at::Tensor&) {
    auto it = watch.find(L.weight);
    if (it == watch.end()) return;
    at::Tensor s = at::sum(in.reshape({-1, in.size(-1)}).pow(2), {0}, false, at::kDouble);
    at::Tensor& acc = it->second.second ? a.ffn_sq[it->second.first] : a.attn_sq[it->second.first];
    acc = acc.defined() ? acc + s : s;
  });
  struct Unhook {
    Model& m;
    int id;
    ~Unhook() { m.remove_hook(id); }
  } unhook{m, id};
  at::NoGradGuard no_grad;
  const int64_t N = calib.size(0);
  for (int64_t i = 0; i < N; i += batch) {
    at::Tensor x = m.embed(calib.narrow(0, i, std::min(batch, N - i)));
    for (int k = 0; k < n; ++k) {
      at::Tensor y = m.run_block(k, x);
      a.cos_sum[k] += at::cosine_similarity(x, y, -1).sum().item<double>();
      x = y;
    }
    a.tokens += x.size(0) * x.size(1);
  }
  for (int k = 0; k < n; ++k)
    if (!std::isfinite(a.cos_sum[k]) || !a.ffn_sq[k].defined() || !at::isfinite(a.ffn_sq[k]).all().item<bool>() ||
        !at::isfinite(a.attn_sq[k]).all().item<bool>())
      fail(kC, "block ", k, " saw non-finite activations on the calibration data");
  return a;
}


}  // namespace

StructuredOptions parse_structured_options(const std::string& spec) {
  StructuredOptions o;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    const std::string key = item.substr(0, eq), val = eq == std::string::npos ? "" : item.substr(eq + 1);
    size_t used = 0;
    try {
      if (key == "ffn") o.ffn = std::stod(val, &used);
      else if (key == "heads") o.heads = std::stod(val, &used);
      else if (key == "blocks") o.blocks = std::stoi(val, &used);
      else if (key == "every") o.keep_every = std::stoi(val, &used);
      else if (key == "batch") o.batch = std::stoll(val, &used);
      else fail(kC, "unknown item '", item, "' in '", spec, "' (allowed: ffn=F, heads=F, blocks=N, every=K, batch=N)");
    } catch (const std::logic_error&) {
      used = 0;
    }
    if (used == 0 || used != val.size())
      fail(kC, "bad value in '", item, "' of '", spec, "' (e.g. ffn=0.25,heads=0.25,blocks=1 or every=2)");
  }
  if (o.blocks != 0 && o.keep_every != 0)
    fail(kC, "'", spec, "': every=K (keep every K-th block) excludes blocks=N (remove N blocks by influence)");
  return o;
}

std::string describe(const StructuredOptions& o) {
  std::string s = "ffn " + pct(o.ffn) + ", heads " + pct(o.heads) + ", ";
  if (o.keep_every > 0) return s + "every " + ordinal(o.keep_every) + " block kept";
  return s + "blocks " + std::to_string(o.blocks);
}

void check_structured(const Model& model, const StructuredOptions& o) {
  const auto* lm = dynamic_cast<const LlamaModel*>(&model);
  if (!lm) fail(kC, "structured pruning needs a llama model, got arch '", model.arch(), "'");
  const LlamaConfig& c = lm->config();
  const int64_t H = c.n_heads, HKV = c.n_kv_heads, n = c.n_layers;
  if (c.fused_qkv_gate_up)
    fail(kC, "structured pruning of fused qkv_proj / gate_up_proj (Phi-3) is not supported yet (unstructured "
         "methods and quantization are)");
  if (!c.family.empty()) fail(kC, "structured pruning of ", c.family, " models (sandwich norms) is not supported yet");
  if (!(o.ffn >= 0 && o.ffn < 1)) fail(kC, "ffn fraction ", o.ffn, " is outside [0, 1)");
  if (!(o.heads >= 0 && o.heads < 1)) fail(kC, "heads fraction ", o.heads, " is outside [0, 1)");
  if (o.blocks < 0 || o.blocks >= n)
    fail(kC, "blocks ", o.blocks, " is outside [0, ", n, ") (the model has ", n, " blocks; one must remain)");
  if (o.keep_every != 0 && o.blocks != 0)
    fail(kC, "every ", o.keep_every, " (keep every K-th block) excludes blocks ", o.blocks,
         " (remove N blocks by influence)");
  if (o.keep_every < 0 || o.keep_every > n)
    fail(kC, "every ", o.keep_every, " is outside [1, ", n, "] (the model has ", n, " blocks; every=1 keeps all)");
  if (o.batch < 1) fail(kC, "batch ", o.batch, " must be >= 1");
  const bool gqa = HKV < H;
  const int64_t units = gqa ? HKV : H;
  const int64_t drop_units = static_cast<int64_t>(std::llround(o.heads * double(units)));
  if (drop_units >= units)
    fail(kC, "pruning heads below one per KV group: heads ", o.heads, " removes ", drop_units, " of ", units,
         gqa ? " KV groups" : " heads", " per block (at most ", units - 1, ", i.e. heads < ",
         (double(units) - 0.5) / double(units), ")");
}

StructuredResult prune_structured(Model& model, const at::Tensor& calib, const StructuredOptions& o) {
  check_structured(model, o);
  auto* lm = dynamic_cast<LlamaModel*>(&model);
  const LlamaConfig& c = lm->config();
  const int64_t H = c.n_heads, HKV = c.n_kv_heads, hd = c.head_dim, F = c.hidden_dim, n = c.n_layers;
  const bool gqa = HKV < H;
  const int64_t rep = H / HKV, units = gqa ? HKV : H;  // what is ranked: KV groups or single heads
  const int64_t drop_units = static_cast<int64_t>(std::llround(o.heads * double(units)));
  const int64_t keep_units = units - drop_units, keep_ffn = ffn_keep(F, o.ffn);
  const bool need_calib = keep_ffn < F || drop_units > 0 || o.blocks > 0;

  StructuredResult r;
  r.config = c;
  r.config.hidden_dim = keep_ffn;
  r.config.n_kv_heads = keep_units;
  r.config.n_heads = gqa ? keep_units * rep : keep_units;
  r.config.n_layers = o.keep_every > 0 ? (n - 1) / o.keep_every + 1 : n - o.blocks;
  r.params_before = count_distinct_parameters(model.params());

  Activations act;
  if (need_calib) {
    if (!calib.defined() || calib.dim() != 2 || calib.size(0) == 0)
      fail(kC, "calibration tokens [N, L] are needed to rank channels, heads and blocks");
    act = collect(*lm, calib, o.batch);
    for (int64_t k = 0; k < n; ++k) r.block_influence.push_back(1.0 - act.cos_sum[k] / double(act.tokens));
  }

  // Blocks: drop the o.blocks lowest influences (ties: the later block).
  std::vector<int64_t> kept_blocks;
  std::set<int64_t> dropped;
  if (o.blocks > 0) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return r.block_influence[a] < r.block_influence[b] || (r.block_influence[a] == r.block_influence[b] && a > b);
    });
    for (int i = 0; i < o.blocks; ++i) dropped.insert(order[i]);
    for (int64_t k : dropped)
      r.removed.push_back("block " + std::to_string(k) + " (influence " + std::to_string(r.block_influence[k]) + ")");
  } else if (o.keep_every > 1) {  // blocks 0, k, 2k, ... stay; no ranking
    for (int64_t k = 0; k < n; ++k)
      if (k % o.keep_every != 0) {
        dropped.insert(k);
        r.removed.push_back("block " + std::to_string(k) + " (every " + ordinal(o.keep_every) + " block kept)");
      }
  }
  for (int64_t k = 0; k < n; ++k)
    if (!dropped.count(k)) kept_blocks.push_back(k);

  const auto N = c.names;
  const auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU, at::kFloat).contiguous(); };
  const auto P = [&](const std::string& role, int64_t k) { return model.param(llama_param_name(N, role, k)); };
  r.weights[llama_param_name(N, "embed")] = cpu(P("embed", -1));
  r.weights[llama_param_name(N, "final_norm")] = cpu(P("final_norm", -1));
  if (!c.tied) r.weights[llama_param_name(N, "output")] = cpu(P("output", -1));

  const auto arange = [](int64_t len) { return at::arange(len, at::TensorOptions().dtype(at::kLong)); };
  for (size_t nk = 0; nk < kept_blocks.size(); ++nk) {
    const int64_t k = kept_blocks[nk];
    auto put = [&](const std::string& role, const at::Tensor& t) {
      r.weights[llama_param_name(N, role, static_cast<int64_t>(nk))] = cpu(t);
    };
    // FFN channels.
    at::Tensor w1 = P("w1", k), w3 = P("w3", k), w2 = P("w2", k);
    if (keep_ffn < F) {
      at::Tensor score = act.ffn_sq[k].sqrt() * w2.to(at::kDouble).pow(2).sum(0).sqrt();
      at::Tensor idx = top_indices(score, keep_ffn).to(w1.device());
      w1 = w1.index_select(0, idx), w3 = w3.index_select(0, idx), w2 = w2.index_select(1, idx);
      r.removed.push_back("block " + std::to_string(k) + ": " + std::to_string(F - keep_ffn) + " of " +
                          std::to_string(F) + " FFN channels");
    }
    put("w1", w1), put("w3", w3), put("w2", w2);
    put("attn_norm", P("attn_norm", k)), put("ffn_norm", P("ffn_norm", k));
    if (c.qk_norm) put("q_norm", P("q_norm", k)), put("k_norm", P("k_norm", k));  // per head_dim: kept as is
    // Heads: wq rows are [n_heads, head_dim], wk/wv rows [n_kv_heads, head_dim], wo columns [n_heads, head_dim].
    at::Tensor wq = P("wq", k), wk = P("wk", k), wv = P("wv", k), wo = P("wo", k);
    at::Tensor bq, bk, bv;
    if (c.qkv_bias) bq = P("bq", k), bk = P("bk", k), bv = P("bv", k);
    if (drop_units > 0) {
      at::Tensor a_h = act.attn_sq[k].view({H, hd}).sum(1).sqrt();
      at::Tensor w_h = wo.to(at::kDouble).pow(2).sum(0).view({H, hd}).sum(1).sqrt();
      at::Tensor score = a_h * w_h;                        // per query head
      if (gqa) score = score.view({HKV, rep}).sum(1);      // per KV group
      at::Tensor kept = top_indices(score, keep_units);     // units kept, ascending
      at::Tensor qh = gqa ? (kept.unsqueeze(1) * rep + arange(rep)).flatten() : kept;
      at::Tensor kvh = kept;
      auto rows_of = [&](const at::Tensor& heads) {
        return (heads.unsqueeze(1) * hd + arange(hd)).flatten().to(wq.device());
      };
      const at::Tensor qrows = rows_of(qh), kvrows = rows_of(kvh);
      wq = wq.index_select(0, qrows), wk = wk.index_select(0, kvrows), wv = wv.index_select(0, kvrows);
      wo = wo.index_select(1, qrows);
      if (c.qkv_bias) bq = bq.index_select(0, qrows), bk = bk.index_select(0, kvrows), bv = bv.index_select(0, kvrows);
      std::vector<int64_t> gone;
      std::set<int64_t> keep_set;
      for (int64_t u : to_vec(kept)) keep_set.insert(u);
      for (int64_t u = 0; u < units; ++u)
        if (!keep_set.count(u)) gone.push_back(u);
      r.removed.push_back("block " + std::to_string(k) + ": " + (gqa ? "KV groups " : "heads ") + join(gone) +
                          " of " + std::to_string(units) +
                          (gqa ? " (" + std::to_string(rep) + " query heads each)" : ""));
    }
    put("wq", wq), put("wk", wk), put("wv", wv), put("wo", wo);
    if (c.qkv_bias) put("bq", bq), put("bk", bk), put("bv", bv);
    if (c.o_bias) put("bo", P("bo", k));
  }
  r.params_after = count_distinct_parameters(r.weights);

  r.settings["structured"] = describe(o);
  r.settings["ffn channels per block"] = std::to_string(F) + " -> " + std::to_string(keep_ffn);
  r.settings["heads per block"] = std::to_string(H) + " -> " + std::to_string(r.config.n_heads) + " (kv heads " +
                                  std::to_string(HKV) + " -> " + std::to_string(r.config.n_kv_heads) + ")";
  r.settings["blocks"] = std::to_string(n) + " -> " + std::to_string(r.config.n_layers);
  if (o.keep_every > 0) r.settings["blocks"] += " (every " + ordinal(o.keep_every) + " kept: " + join(kept_blocks) + ")";
  r.settings["parameters"] = std::to_string(r.params_before) + " -> " + std::to_string(r.params_after) + " (" +
                             pct(double(r.params_after) / double(r.params_before)) + ")";
  if (need_calib) {
    r.settings["importance"] =
        "ffn channel |a_c|*|W2[:,c]|, head |a_h|*|Wo[:,h]|_F (summed per KV group), block 1 - cos(in, out); " +
        std::to_string(act.tokens) + " calibration tokens";
    std::string bi;
    for (size_t k = 0; k < r.block_influence.size(); ++k) {
      std::ostringstream os;
      os.precision(3);
      os << r.block_influence[k];
      bi += (k ? ", " : "") + os.str();
    }
    r.settings["block influence"] = bi;
  }
  return r;
}

std::unique_ptr<LlamaModel> make_structured_model(const StructuredResult& r) {
  std::map<std::string, HostTensor> w;
  for (const auto& [k, t] : r.weights) w[k] = from_torch(k, t);
  return std::make_unique<LlamaModel>(r.config, w);
}

}  // namespace mc
