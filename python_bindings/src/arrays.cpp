// Array-level quantization for the mcompress package (_arrays.py wraps these): gptq, rtn, the AWQ
// searches, the Hessian accumulator, code packing; plus the two functions the overhead benchmark and
// the zero-copy test use (_bench_gptq_native, _input_address). Inputs are read in place when they are
// C-contiguous float32 (arrays.h); the math runs with the GIL released.
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "arrays.h"
#include "mcompress/quant/awq.h"
#include "mcompress/quant/gptq.h"
#include "mcompress/quant/hessian.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/rtn.h"
#include "module.h"

namespace mcpy {

namespace {

mc::QuantSpec make_spec(int bits, int64_t group_size, bool sym, bool mse_clip) {
  mc::QuantSpec s;
  s.bits = bits, s.group_size = group_size, s.symmetric = sym, s.mse_clip = mse_clip;
  return s;
}

py::dict quant_dict(const mc::QuantResult& q, const at::Tensor& weight) {
  py::dict d;
  d["weight"] = to_numpy(weight);
  d["codes"] = to_numpy(q.codes);
  d["scales"] = to_numpy(q.scales);
  d["zeros"] = to_numpy(q.zeros);
  d["g_idx"] = to_numpy_or_none(q.g_idx);
  return d;
}

mc::GptqOptions gptq_options(int bits, int64_t group_size, bool act_order, bool sym, double damp, bool static_groups,
                             int64_t block_size, bool mse_clip) {
  mc::GptqOptions o;
  o.spec = make_spec(bits, group_size, sym, mse_clip);
  o.damp = damp, o.act_order = act_order, o.static_groups = static_groups, o.block_size = block_size;
  return o;
}

void check_square(const at::Tensor& H, int64_t in, const char* comp) {
  if (H.size(0) != H.size(1) || H.size(0) != in)
    mc::fail(comp, "H must be [in, in] = [", in, ", ", in, "] for W with ", in, " columns, got [", H.size(0), ", ",
             H.size(1), "]");
}

}  // namespace

void register_arrays(py::module_& m) {
  m.def(
      "gptq",
      [](py::object W, py::object H, int bits, int64_t group_size, bool act_order, bool sym, double damp,
         bool static_groups, int64_t block_size, bool mse_clip) {
        FloatInput w = float_input(W, "[gptq]", "W", 2), h = float_input(H, "[gptq]", "H", 2);
        check_square(h.t, w.t.size(1), "gptq");
        const mc::GptqOptions o = gptq_options(bits, group_size, act_order, sym, damp, static_groups, block_size, mse_clip);
        mc::GptqResult r;
        at::Tensor deq;
        {
          py::gil_scoped_release release;
          r = mc::gptq_quantize(w.t, h.t, o);
          deq = r.dequantize();
        }
        py::dict d = quant_dict(r.quant, deq);
        d["perm"] = to_numpy(r.perm);
        d["g_idx"] = to_numpy(r.g_idx);  // always: the group of each original column
        d["plain_groups"] = r.plain_groups();  // g_idx[c] == c // group_size (packed files omit it)
        d["loss"] = r.loss, d["damp_rel"] = r.damp_rel, d["damp_retries"] = r.damp_retries;
        d["dead_columns"] = r.dead_columns;
        return d;
      },
      py::arg("W"), py::arg("H"), py::arg("bits"), py::arg("group_size"), py::arg("act_order"), py::arg("sym"),
      py::arg("damp"), py::arg("static_groups"), py::arg("block_size"), py::arg("mse_clip"));

  m.def(
      "rtn",
      [](py::object W, int bits, int64_t group_size, bool sym, bool mse_clip) {
        FloatInput w = float_input(W, "[rtn]", "W", 2);
        const mc::QuantSpec s = make_spec(bits, group_size, sym, mse_clip);
        mc::QuantResult q;
        at::Tensor deq;
        {
          py::gil_scoped_release release;
          q = mc::rtn_quantize(w.t, s);
          deq = q.dequantize();
        }
        return quant_dict(q, deq);
      },
      py::arg("W"), py::arg("bits"), py::arg("group_size"), py::arg("sym"), py::arg("mse_clip"));

  m.def(
      "awq_scales",
      [](py::list weights, py::object x_mean_abs, py::object H, int bits, int64_t group_size, bool sym, int grid,
         int64_t max_rows) {
        std::vector<FloatInput> ws;
        std::vector<at::Tensor> ts;
        for (size_t i = 0; i < weights.size(); ++i) {
          ws.push_back(float_input(weights[i], "[awq]", ("weights[" + std::to_string(i) + "]").c_str(), 2));
          ts.push_back(ws.back().t);
        }
        FloatInput xm = float_input(x_mean_abs, "[awq]", "x_mean_abs", 1), h = float_input(H, "[awq]", "H", 2);
        mc::AwqSearchOptions o;
        o.grid = grid, o.max_rows = max_rows;
        mc::AwqScales r;
        {
          py::gil_scoped_release release;
          r = mc::awq_search_scales(xm.t, h.t, ts, {make_spec(bits, group_size, sym, false)}, o);
        }
        py::dict d;
        // All-zero inputs: no search, s = 1.
        d["scales"] = to_numpy(r.scales.defined() ? r.scales : at::ones_like(xm.t));
        d["alpha"] = r.alpha, d["errors"] = r.errors;
        return d;
      },
      py::arg("weights"), py::arg("x_mean_abs"), py::arg("H"), py::arg("bits"), py::arg("group_size"), py::arg("sym"),
      py::arg("grid"), py::arg("max_rows"));

  m.def(
      "awq_clip",
      [](py::object W, py::object H, int bits, int64_t group_size, bool sym) {
        FloatInput w = float_input(W, "[awq]", "W", 2), h = float_input(H, "[awq]", "H", 2);
        at::Tensor r;
        {
          py::gil_scoped_release release;
          r = mc::awq_clip(w.t, h.t, make_spec(bits, group_size, sym, false));
        }
        return to_numpy(r.data_ptr() == w.t.data_ptr() ? r.clone() : r);
      },
      py::arg("W"), py::arg("H"), py::arg("bits"), py::arg("group_size"), py::arg("sym"));

  py::class_<mc::HessianAccumulator>(m, "HessianAccumulator")
      .def(py::init<int64_t, bool>(), py::arg("in_features"), py::arg("fp64") = false)
      .def(
          "add",
          [](mc::HessianAccumulator& acc, py::object X) {
            FloatInput x = float_input(X, "[hessian]", "X", -1);
            py::gil_scoped_release release;
            acc.add(x.t);
          },
          py::arg("X"))
      .def_property_readonly("in_features", &mc::HessianAccumulator::in_features)
      .def_property_readonly("samples", &mc::HessianAccumulator::samples)
      .def_property_readonly("H", [](const mc::HessianAccumulator& a) { return to_numpy(a.hessian().clone()); })
      .def_property_readonly("mean_abs", [](const mc::HessianAccumulator& a) { return to_numpy(a.mean_abs()); })
      .def_property_readonly("max_abs", [](const mc::HessianAccumulator& a) { return to_numpy(a.max_abs().clone()); })
      .def_property_readonly("sum_sq", [](const mc::HessianAccumulator& a) { return to_numpy(a.sum_sq().clone()); });

  m.def(
      "pack_codes",
      [](py::array codes, int bits) {
        auto c = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(codes);
        if (!c || c.ndim() < 1 || c.ndim() > 2) mc::fail("pack", "codes must be a 1-D or 2-D uint8 array");
        if (bits < 2 || bits > 8) mc::fail("pack", "bits ", bits, " outside 2..8");
        const int64_t rows = c.ndim() == 2 ? c.shape(0) : 1, cols = c.shape(c.ndim() - 1);
        at::Tensor t = at::from_blob(const_cast<uint8_t*>(c.data()), {rows, cols}, at::kByte);
        at::Tensor out = at::empty({rows, mc::packed_row_bytes(cols, bits)}, at::kByte);
        {
          py::gil_scoped_release release;
          mc::pack_codes_into(t, bits, out.data_ptr<uint8_t>());
        }
        return to_numpy(c.ndim() == 2 ? out : out.select(0, 0));
      },
      py::arg("codes"), py::arg("bits"));

  m.def(
      "unpack_codes",
      [](py::array packed, int64_t cols, int bits) {
        auto p = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(packed);
        if (!p || p.ndim() < 1 || p.ndim() > 2) mc::fail("pack", "packed must be a 1-D or 2-D uint8 array");
        if (bits < 2 || bits > 8) mc::fail("pack", "bits ", bits, " outside 2..8");
        if (cols < 0) mc::fail("pack", "cols ", cols, " must be >= 0");
        const int64_t rows = p.ndim() == 2 ? p.shape(0) : 1, rb = p.shape(p.ndim() - 1);
        if (rb != mc::packed_row_bytes(cols, bits))
          mc::fail("pack", cols, " codes of ", bits, " bits take ", mc::packed_row_bytes(cols, bits),
                   " bytes per row, the packed rows have ", rb);
        at::Tensor out;
        {
          py::gil_scoped_release release;
          out = mc::unpack_codes(p.data(), rows, cols, bits);
        }
        return to_numpy(p.ndim() == 2 ? out : out.reshape({cols}));
      },
      py::arg("packed"), py::arg("cols"), py::arg("bits"));

  // The address of the float32 buffer C++ reads for `a` (zero-copy check) and whether it was copied.
  m.def("_input_address", [](py::object a) {
    FloatInput in = float_input(a, "[debug]", "a", -1);
    return py::make_tuple(reinterpret_cast<uintptr_t>(in.t.data_ptr()), in.copied);
  });

  // Times gptq_quantize natively (no Python in the loop) on the same tensors the binding would build:
  // returns the seconds of each of `repeats` calls (benchmark baseline, bench/bench_python_gptq.py).
  m.def(
      "_bench_gptq_native",
      [](py::object W, py::object H, int bits, int64_t group_size, bool act_order, int repeats) {
        FloatInput w = float_input(W, "[gptq]", "W", 2), h = float_input(H, "[gptq]", "H", 2);
        const mc::GptqOptions o = gptq_options(bits, group_size, act_order, true, 0.01, false, 128, false);
        std::vector<double> secs;
        py::gil_scoped_release release;
        for (int i = 0; i < repeats; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          mc::GptqResult r = mc::gptq_quantize(w.t, h.t, o);
          at::Tensor deq = r.dequantize();
          secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return secs;
      },
      py::arg("W"), py::arg("H"), py::arg("bits"), py::arg("group_size"), py::arg("act_order"), py::arg("repeats"));

  register_array_prune(m);
}

}  // namespace mcpy
