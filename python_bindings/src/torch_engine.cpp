// mcompress.torch's engine: a torch.nn.Module seen by the library as a Model, so that quantize_ and
// prune_ run the CLI's own code on it: quantize_model / prune_model with their layer selection
// (select_layers, matches_any), the layer-sequential engine (compress_blocks), the passes, and AWQ's
// scale search and folding. Python (mcompress/_torch_calib.py) only describes the module and captures
// tensors:
//   - the layers: every nn.Linear, nn.Embedding and norm (1-D weight) in module order, with the index
//     of the block holding it (-1: outside the blocks), weight and bias;
//   - a runner: forward(k, i) runs the module on calibration batch i with forward hooks on block k's
//     layers until block k is done (the hooks call feed() with each Linear's input and observe() with
//     each norm's output); set_param(key, array) copies a parameter into the module.
// The decisions are made here or in the library:
//   - the classifier (left out of the default selection, as the CLI's models mark theirs) is the last
//     Linear in module order: the output projection of a language model or classifier;
//   - the hidden state the engine carries from block to block is the batch's index: run_block(k, i)
//     with a hook attached runs the module's forward on batch i up to the end of block k; without a
//     hook (the engine computing block k's outputs for block k+1) nothing is observed, so nothing is
//     run: the next hooked forward recomputes blocks 0..k from the embedding with their compressed
//     weights. Parameters the library replaced are copied into the module before each forward;
//   - scale groups (AWQ): a norm of block k whose output tensor is itself the input of Linear layers
//     of block k of the same width (seen in the block's first hooked forward), plus the groups the
//     caller declares (a Linear whose output the listed layers read, through operations that commute
//     with a positive per-channel scale: attention's weighted sum of values, SwiGLU's up projection).
#include <pybind11/stl.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "arrays.h"
#include "mcompress/model.h"
#include "mcompress/prune/prune.h"
#include "mcompress/ptq.h"
#include "module.h"

namespace mcpy {

namespace {

constexpr const char* kComp = "torch";

class TorchModuleModel : public mc::Model {
 public:
  // layers: dicts {name, kind ("linear" | "norm" | "embedding"), block, weight (array), bias (array or None)}.
  TorchModuleModel(const py::list& layers, int num_blocks, py::object runner) : runner_(std::move(runner)) {
    num_blocks_ = num_blocks;
    int last_linear = -1;
    for (size_t i = 0; i < layers.size(); ++i)
      if (layers[i]["kind"].cast<std::string>() == "linear") last_linear = static_cast<int>(i);
    if (last_linear < 0) mc::fail(kComp, "the module has no torch.nn.Linear layer to compress");
    for (size_t i = 0; i < layers.size(); ++i) {
      py::dict d = layers[i].cast<py::dict>();
      mc::LayerInfo l;
      l.name = d["name"].cast<std::string>();
      const std::string kind = d["kind"].cast<std::string>();
      if (kind != "linear" && kind != "norm" && kind != "embedding")
        mc::fail(kComp, "layer ", l.name, ": kind '", kind, "' (allowed: linear, norm, embedding)");
      l.kind = kind == "linear" ? mc::LayerKind::Linear : kind == "norm" ? mc::LayerKind::Norm : mc::LayerKind::Embedding;
      l.block = kind == "embedding" ? -1 : d["block"].cast<int>();  // embeddings: outside, as the CLI's models
      if (l.block < -1 || l.block >= num_blocks) mc::fail(kComp, "layer ", l.name, ": block ", l.block, " out of range");
      l.is_classifier = static_cast<int>(i) == last_linear;
      const std::string prefix = l.name.empty() ? "" : l.name + ".";
      l.weight = prefix + "weight";
      // A copy: the module's parameter is overwritten in place by sync(), while the library may keep
      // a parameter's earlier tensor (e.g. to restore it after a trial).
      params_[l.weight] = float_input(d["weight"], "[torch]", l.weight.c_str(), -1).t.clone();
      if (!d["bias"].is_none()) {
        l.bias = prefix + "bias";
        params_[l.bias] = float_input(d["bias"], "[torch]", l.bias.c_str(), 1).t.clone();
      }
      const at::Tensor& w = params_[l.weight];
      if (w.dim() != (l.kind == mc::LayerKind::Norm ? 1 : 2))
        mc::fail(kComp, "layer ", l.name, ": a ", kind, " weight must be ", l.kind == mc::LayerKind::Norm ? 1 : 2,
                 "-D, got ", w.dim(), "-D");
      // As the CLI's models: an embedding [vocab, dim] has in_features vocab, out_features dim.
      l.out_features = l.kind == mc::LayerKind::Embedding ? w.size(1) : w.size(0);
      l.in_features = l.kind == mc::LayerKind::Linear ? w.size(1) : w.size(0);
      add_layer(std::move(l));
    }
    synced_ = params_;
  }

  std::string arch() const override { return "torch"; }
  bool is_language_model() const override { return false; }
  at::Tensor forward(const at::Tensor&) override { unavailable("forward"); }
  at::Tensor head(const at::Tensor&) override { unavailable("head"); }
  std::map<std::string, std::string> config_metadata() const override { return {}; }
  // The calibration "inputs" are batch indices [N]; a batch's hidden state is its index.
  at::Tensor embed(const at::Tensor& index) override { return index.clone(); }

  at::Tensor run_block(int k, const at::Tensor& hidden) override {
    if (hooks_.empty()) return hidden;  // nothing observes it: the next hooked forward recomputes it
    py::gil_scoped_acquire gil;
    sync();
    forward_inputs_.clear();
    norm_outputs_.clear();
    current_block_ = k;
    runner_.attr("forward")(k, hidden.item<int64_t>());
    forward_inputs_.clear();  // under the GIL: the arrays' references are released here
    norm_outputs_.clear();
    seen_blocks_.insert(k);
    return hidden;
  }

  // In the order of their first reader (as the CLI's llama lists them: a tensor two groups touch, such
  // as v in norm -> q,k,v and v -> o, is scaled in the same order).
  std::vector<mc::ScaleGroup> scale_groups(int block) const override {
    std::vector<mc::ScaleGroup> out;
    for (const auto& norm : layers_) {
      if (norm.kind != mc::LayerKind::Norm || norm.block != block) continue;
      mc::ScaleGroup g{norm.weight, norm.bias, true, {}};
      for (const auto& l : layers_)
        if (l.kind == mc::LayerKind::Linear && l.block == block && l.in_features == norm.out_features) {
          auto it = producer_.find(l.name);
          if (it != producer_.end() && it->second == norm.name) g.layers.push_back(l.name);
        }
      if (!g.layers.empty()) out.push_back(std::move(g));
    }
    for (const auto& g : declared_)
      if (layer(g.layers[0]).block == block) out.push_back(g);
    std::stable_sort(out.begin(), out.end(), [this](const mc::ScaleGroup& a, const mc::ScaleGroup& b) {
      return layer_index_.at(a.layers[0]) < layer_index_.at(b.layers[0]);
    });
    return out;
  }

  // The caller's groups: `prev` a Linear whose outputs the `layers` read one to one (in_features ==
  // prev's out_features), all in one block.
  void declare_scale_group(const std::string& prev, const std::vector<std::string>& layers) {
    const mc::LayerInfo& p = layer(prev);
    if (p.kind != mc::LayerKind::Linear || layers.empty())
      mc::fail(kComp, "scale group '", prev, "': needs a Linear layer and the layers reading its output");
    mc::ScaleGroup g{p.weight, p.bias, false, layers};
    for (const auto& name : layers) {
      const mc::LayerInfo& l = layer(name);
      if (l.kind != mc::LayerKind::Linear || l.in_features != p.out_features || l.block != p.block || p.block < 0)
        mc::fail(kComp, "scale group '", prev, "': layer ", name, " (", l.in_features, " inputs, block ", l.block,
                 ") does not read ", prev, "'s ", p.out_features, " outputs in its block ", p.block);
    }
    declared_.push_back(std::move(g));
  }

  // From a Linear's forward hook: its input x (any leading dims; `key` identifies the torch tensor,
  // so layers reading the same tensor get the same at::Tensor and share one accumulator).
  void feed(const std::string& name, const py::object& x, uintptr_t key) {
    const mc::LayerInfo& l = layer(name);
    auto it = forward_inputs_.find(key);
    if (it == forward_inputs_.end()) {
      FloatInput in = float_input(x, "[torch]", name.c_str(), -1);
      it = forward_inputs_.emplace(key, in.t.clone()).first;
    }
    if (!seen_blocks_.count(current_block_) && !producer_.count(name)) {
      auto p = norm_outputs_.find(key);
      producer_[name] = p == norm_outputs_.end() ? "" : p->second;
    }
    const at::Tensor t = it->second;
    py::gil_scoped_release release;
    run_hooks(l, t, at::Tensor());
  }

  // From a norm's forward hook: `key` identifies its output tensor (kept alive by the caller for the
  // whole forward, so no other tensor can take its address).
  void observe(const std::string& name, uintptr_t key) {
    if (layer(name).kind != mc::LayerKind::Norm) mc::fail(kComp, "observe: ", name, " is not a norm layer");
    norm_outputs_[key] = name;
  }

  // Copies the parameters replaced since the last sync into the module (GIL held).
  void sync() {
    for (const auto& [key, t] : params_) {
      at::Tensor& last = synced_[key];
      if (!t.defined() || t.is_same(last)) continue;
      runner_.attr("set_param")(key, to_numpy(t));
      last = t;
    }
  }

 private:
  [[noreturn]] void unavailable(const char* what) const {
    mc::fail(kComp, "a torch module is run by its own forward; ", what, "() is not available here");
  }

  py::object runner_;
  std::map<std::string, at::Tensor> synced_;
  std::map<uintptr_t, at::Tensor> forward_inputs_;   // this forward's Linear inputs
  std::map<uintptr_t, std::string> norm_outputs_;    // this forward's norm outputs
  std::map<std::string, std::string> producer_;      // Linear -> norm whose output it reads ("" none)
  std::set<int> seen_blocks_;
  int current_block_ = -1;
  std::vector<mc::ScaleGroup> declared_;
};

mc::QuantSpec make_spec(int bits, int64_t group_size, bool sym) {
  mc::QuantSpec s;
  s.bits = bits, s.group_size = group_size, s.symmetric = sym;
  return s;
}

py::dict quant_entry(const mc::QuantResult& q) {
  py::dict d;
  d["codes"] = to_numpy(q.codes);
  d["scales"] = to_numpy(q.scales);
  d["zeros"] = to_numpy(q.zeros);
  d["g_idx"] = to_numpy_or_none(q.g_idx);
  d["bits"] = q.spec.bits, d["group_size"] = q.spec.group_size, d["sym"] = q.spec.symmetric;
  return d;
}

py::list layer_rows(const TorchModuleModel& model, const std::vector<mc::LayerRow>& rows) {
  py::list out;
  for (const auto& r : rows) {
    py::dict d;
    d["name"] = r.name;
    d["scheme"] = r.scheme;
    d["method"] = r.scheme.substr(0, r.scheme.find(' '));
    d["shape"] = model.param(model.layer(r.name).weight).sizes().vec();
    d["rel_output_error"] = r.rel_output_error ? py::object(py::float_(*r.rel_output_error)) : py::object(py::none());
    d["note"] = r.note;
    out.append(d);
  }
  return out;
}

// progress(phase, layer, i, n) as the library calls it, forwarded to a Python callable (or None).
std::function<void(const std::string&, const mc::LayerInfo&, int64_t, int64_t)> progress_of(py::object f) {
  if (f.is_none()) return {};
  return [f](const std::string& phase, const mc::LayerInfo& l, int64_t i, int64_t n) {
    py::gil_scoped_acquire gil;
    f(py::dict(py::arg("event") = "progress", py::arg("phase") = phase, py::arg("layer") = l.name,
               py::arg("index") = i, py::arg("total") = n));
  };
}

// What both engines return: the codes by weight key, the report rows, warnings and settings (the module
// already holds the new weights).
py::dict engine_result(TorchModuleModel& model, const py::dict& quantized, const std::vector<mc::LayerRow>& rows,
                       const std::vector<std::string>& warnings, const std::map<std::string, std::string>& settings) {
  model.sync();
  py::dict out;
  out["quantized"] = quantized;
  out["layers"] = layer_rows(model, rows);
  out["warnings"] = warnings;
  out["settings"] = settings;
  return out;
}

at::Tensor batch_indices(int64_t n) { return n > 0 ? at::arange(n, at::kLong) : at::Tensor(); }

}  // namespace

void register_torch_engine(py::module_& m) {
  py::class_<TorchModuleModel>(m, "TorchModuleModel")
      .def(py::init<const py::list&, int, py::object>(), py::arg("layers"), py::arg("num_blocks"), py::arg("runner"))
      .def("feed", &TorchModuleModel::feed, py::arg("name"), py::arg("x"), py::arg("key"))
      .def("observe", &TorchModuleModel::observe, py::arg("name"), py::arg("key"))
      .def("declare_scale_group", &TorchModuleModel::declare_scale_group, py::arg("prev"), py::arg("layers"));

  // quantize_model on the module: calibration batches 0..n_batches-1 (0: none, rtn only).
  m.def(
      "torch_quantize",
      [](TorchModuleModel& model, int64_t n_batches, const std::string& method, int bits, int64_t group_size,
         bool sym, bool act_order, double damp, bool fp64, const std::vector<std::string>& targets,
         const std::vector<std::string>& ignore, py::object progress) {
        mc::PtqOptions o;
        o.method = method;
        o.spec = make_spec(bits, group_size, sym);
        o.act_order = act_order, o.damp = damp, o.fp64 = fp64;
        o.targets = targets, o.ignore = ignore;
        o.batch = 1;  // one engine batch per calibration batch the module's forward takes
        o.progress = progress_of(progress);
        mc::PtqResult r;
        {
          py::gil_scoped_release release;
          r = mc::quantize_model(model, batch_indices(n_batches), o);
        }
        py::dict q;
        for (const auto& [key, res] : r.quantized) q[py::str(key)] = quant_entry(res);
        return engine_result(model, q, r.layers, r.warnings, r.settings);
      },
      py::arg("model"), py::arg("n_batches"), py::arg("method"), py::arg("bits"), py::arg("group_size"),
      py::arg("sym"), py::arg("act_order"), py::arg("damp"), py::arg("fp64"), py::arg("targets"), py::arg("ignore"),
      py::arg("progress"));

  // prune_model on the module.
  m.def(
      "torch_prune",
      [](TorchModuleModel& model, int64_t n_batches, const std::string& method, double sparsity, int prune_n,
         int prune_m, std::optional<int> bits, int64_t group_size, bool sym, double damp, bool fp64,
         const std::vector<std::string>& targets, const std::vector<std::string>& ignore, py::object progress) {
        mc::PruneOptions o;
        o.method = method, o.sparsity = sparsity, o.prune_n = prune_n, o.prune_m = prune_m;
        if (bits) o.quant = make_spec(*bits, group_size, sym);
        o.damp = damp, o.fp64 = fp64;
        o.targets = targets, o.ignore = ignore;
        o.batch = 1;
        o.progress = progress_of(progress);
        mc::PruneResult r;
        {
          py::gil_scoped_release release;
          r = mc::prune_model(model, batch_indices(n_batches), o);
        }
        py::dict q;
        for (const auto& [key, p] : r.pruned)
          if (p.quant) q[py::str(key)] = quant_entry(*p.quant);
        py::dict out = engine_result(model, q, r.layers, r.warnings, r.settings);
        out["sparsity"] = r.sparsity;
        return out;
      },
      py::arg("model"), py::arg("n_batches"), py::arg("method"), py::arg("sparsity"), py::arg("prune_n"),
      py::arg("prune_m"), py::arg("bits"), py::arg("group_size"), py::arg("sym"), py::arg("damp"), py::arg("fp64"),
      py::arg("targets"), py::arg("ignore"), py::arg("progress"));
}

}  // namespace mcpy
