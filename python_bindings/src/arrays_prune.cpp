// Array-level pruning for the mcompress package (_arrays.py wraps these): sparsegpt, wanda, magnitude,
// the row / N:M / layer masks, and write_packed (a packed quantized checkpoint from arrays, the layout
// quant/packed.h documents) for mcompress.torch.save. GIL released during the math.
#include <pybind11/stl.h>

#include <cmath>
#include <map>
#include <optional>

#include "arrays.h"
#include "mcompress/prune/prune.h"
#include "mcompress/prune/sparsegpt.h"
#include "mcompress/quant/packed.h"
#include "module.h"

namespace mcpy {

namespace {

void check_sparsity(double s, const char* comp) {
  if (!(s >= 0 && s < 1)) mc::fail(comp, "sparsity ", s, " outside [0, 1)");
}

void check_nm(int n, int m, const char* comp) {
  if (n == 0 && m == 0) return;
  if (n < 1 || m < 2 || n >= m) mc::fail(comp, "N:M pattern ", n, ":", m, " needs 1 <= N < M (e.g. 2:4)");
}

// An array of any dtype checkpoints hold, as a tensor over its buffer (one copy when not C-contiguous).
at::Tensor any_tensor(const py::handle& obj, const std::string& name, py::list& keep) {
  py::array a = py::array::ensure(obj, py::array::c_style);
  if (!a) mc::fail("write_packed", "tensor '", name, "' is not an array");
  const char kind = a.dtype().kind();
  const auto size = a.itemsize();
  at::ScalarType t;
  if (kind == 'f' && size == 4) t = at::kFloat;
  else if (kind == 'f' && size == 8) t = at::kDouble;
  else if (kind == 'f' && size == 2) t = at::kHalf;
  else if (kind == 'i' && size == 8) t = at::kLong;
  else if (kind == 'i' && size == 4) t = at::kInt;
  else if (kind == 'i' && size == 2) t = at::kShort;
  else if (kind == 'i' && size == 1) t = at::kChar;
  else if (kind == 'u' && size == 1) t = at::kByte;
  else if (kind == 'b') t = at::kBool;
  else mc::fail("write_packed", "tensor '", name, "': dtype ", std::string(py::str(a.dtype())), " cannot be stored");
  keep.append(a);
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  return at::from_blob(const_cast<void*>(a.data()), shape, at::TensorOptions().dtype(t));
}

}  // namespace

void register_array_prune(py::module_& m) {
  m.def(
      "sparsegpt",
      [](py::object W, py::object H, double sparsity, int prune_n, int prune_m, std::optional<int> bits,
         int64_t group_size, bool sym, double damp, int64_t block_size, py::object mask) {
        FloatInput w = float_input(W, "[sparsegpt]", "W", 2), h = float_input(H, "[sparsegpt]", "H", 2);
        check_nm(prune_n, prune_m, "sparsegpt");
        mc::SparseGptOptions o;
        o.sparsity = sparsity, o.prune_n = prune_n, o.prune_m = prune_m, o.damp = damp, o.block_size = block_size;
        mc::QuantSpec spec;
        if (bits) {
          spec.bits = *bits, spec.group_size = group_size, spec.symmetric = sym;
          o.quant = &spec;
        }
        FloatInput mk;
        if (!mask.is_none()) {
          mk = float_input(mask, "[sparsegpt]", "mask", 2);
          o.mask = mk.t.ne(0);
        }
        mc::SparseGptResult r;
        {
          py::gil_scoped_release release;
          r = mc::sparsegpt_prune(w.t, h.t, o);
        }
        py::dict d;
        d["weight"] = to_numpy(r.weight);
        d["mask"] = to_numpy(r.mask);
        d["codes"] = r.quant ? py::object(to_numpy(r.quant->codes)) : py::none();
        d["scales"] = r.quant ? py::object(to_numpy(r.quant->scales)) : py::none();
        d["zeros"] = r.quant ? py::object(to_numpy(r.quant->zeros)) : py::none();
        d["loss"] = r.loss, d["damp_retries"] = r.damp_retries, d["dead_columns"] = r.dead_columns;
        return d;
      },
      py::arg("W"), py::arg("H"), py::arg("sparsity"), py::arg("prune_n"), py::arg("prune_m"), py::arg("bits"),
      py::arg("group_size"), py::arg("sym"), py::arg("damp"), py::arg("block_size"), py::arg("mask"));

  // Wanda / magnitude: score |W| (· ‖X_j‖ for wanda), mask per row (wanda), per layer (magnitude) or
  // N:M; x_norm: [in] column norms ‖X_j‖₂, or the inputs X [n, in] themselves.
  m.def(
      "score_prune",
      [](py::object W, py::object x, double sparsity, int prune_n, int prune_m, bool per_row) {
        const char* comp = x.is_none() ? "magnitude" : "wanda";
        FloatInput w = float_input(W, comp, "W", 2);
        check_sparsity(sparsity, comp);
        check_nm(prune_n, prune_m, comp);
        FloatInput xi;
        if (!x.is_none()) {
          xi = float_input(x, comp, "x_norm", -1);
          if (xi.t.dim() == 2 && xi.t.size(1) != w.t.size(1))
            mc::fail(comp, "X has ", xi.t.size(1), " columns, W has ", w.t.size(1), " inputs");
          if (xi.t.dim() == 1 && xi.t.size(0) != w.t.size(1))
            mc::fail(comp, "x_norm has ", xi.t.size(0), " entries, W has ", w.t.size(1), " inputs");
          if (xi.t.dim() != 1 && xi.t.dim() != 2)
            mc::fail(comp, "expected x_norm [in] or X [n, in], got a ", xi.t.dim(), "-D array");
        }
        at::Tensor weight, mask;
        {
          py::gil_scoped_release release;
          at::Tensor score = w.t.abs();
          if (xi.t.defined()) {
            at::Tensor norm = xi.t.dim() == 2 ? at::sum(xi.t.mul(xi.t), {0}, false, at::kDouble).sqrt().to(at::kFloat)
                                              : xi.t;
            score = score * norm.unsqueeze(0);
          }
          mask = prune_n > 0 ? mc::nm_mask(score, prune_n, prune_m)
                 : per_row   ? mc::row_mask(score, sparsity)
                             : mc::layer_mask(score, sparsity);
          weight = w.t * mask;
        }
        return py::make_tuple(to_numpy(weight), to_numpy(mask));
      },
      py::arg("W"), py::arg("x"), py::arg("sparsity"), py::arg("prune_n"), py::arg("prune_m"), py::arg("per_row"));

  m.def(
      "mask",
      [](py::object score, double sparsity, int n, int mm, const std::string& scope) {
        FloatInput s = float_input(score, "[mask]", "score", 2);
        check_nm(n, mm, "mask");
        check_sparsity(sparsity, "mask");
        if (scope != "row" && scope != "layer") mc::fail("mask", "scope '", scope, "' (allowed: row, layer)");
        at::Tensor r;
        {
          py::gil_scoped_release release;
          r = n > 0 ? mc::nm_mask(s.t, n, mm) : scope == "row" ? mc::row_mask(s.t, sparsity) : mc::layer_mask(s.t, sparsity);
        }
        return to_numpy(r);
      },
      py::arg("score"), py::arg("sparsity"), py::arg("n"), py::arg("m"), py::arg("scope"));

  // quantized: key -> dict(codes, scales, zeros, bits, group_size, sym, g_idx=None, weight_shape=None).
  m.def(
      "write_packed",
      [](const std::string& path, py::dict dense, py::dict quantized, const std::map<std::string, std::string>& meta) {
        py::list keep;
        std::map<std::string, at::Tensor> d;
        for (auto [k, v] : dense) d[py::str(k)] = any_tensor(v, py::str(k), keep);
        std::map<std::string, mc::QuantResult> q;
        for (auto [k, v] : quantized) {
          const std::string key = py::str(k);
          py::dict e = v.cast<py::dict>();
          mc::QuantResult r;
          r.spec.bits = e["bits"].cast<int>(), r.spec.group_size = e["group_size"].cast<int64_t>();
          r.spec.symmetric = e["sym"].cast<bool>();
          r.codes = any_tensor(e["codes"], key + ".codes", keep).to(at::kByte);
          r.scales = any_tensor(e["scales"], key + ".scales", keep).to(at::kFloat);
          r.zeros = any_tensor(e["zeros"], key + ".zeros", keep).to(at::kFloat);
          if (e.contains("g_idx") && !e["g_idx"].is_none()) r.g_idx = any_tensor(e["g_idx"], key + ".g_idx", keep).to(at::kInt);
          if (e.contains("weight_shape") && !e["weight_shape"].is_none())
            r.weight_shape = e["weight_shape"].cast<std::vector<int64_t>>();
          q.emplace(key, std::move(r));
        }
        py::gil_scoped_release release;
        mc::write_packed_checkpoint(path, d, q, meta);
      },
      py::arg("path"), py::arg("dense"), py::arg("quantized"), py::arg("metadata"));
}

}  // namespace mcpy
