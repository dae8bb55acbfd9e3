// Shared by the array-level bindings (arrays.cpp, arrays_prune.cpp): numpy <-> at::Tensor without
// copies where possible, and the registration of the pruning half.
//
// Inputs: a C-contiguous, aligned, native-endian float32 numpy array becomes an at::Tensor over the
// array's own buffer (at::from_blob, no copy; the caller keeps the array alive while the tensor is
// used, and the library functions only read their inputs). Anything else numeric (float64, float16,
// int, bool, strided views) is converted once into a new float32 C-contiguous array.
// Outputs: an at::Tensor becomes a numpy array over the tensor's storage (a capsule owns a reference
// to the tensor), so nothing is copied on the way out either.
#pragma once
#include <ATen/ATen.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "mcompress/error.h"

namespace mcpy {

namespace py = pybind11;

// A float32 view of a numpy array (or anything np.asarray accepts). `array` keeps the buffer alive.
struct FloatInput {
  py::array array;
  at::Tensor t;
  bool copied = false;
};

// component: "[gptq]" etc. in errors; what: "W"; ndim: required number of dimensions (-1: any).
inline FloatInput float_input(const py::handle& obj, const char* component, const char* what, int ndim) {
  FloatInput in;
  if (obj.is_none()) mc::fail(component, what, " is None (expected a float array)");
  py::array a = py::array::ensure(obj);
  if (!a) mc::fail(component, what, ": expected a numpy array or CPU torch tensor, got ", std::string(py::str(py::type::of(obj).attr("__name__"))));
  const char kind = a.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b')
    mc::fail(component, what, ": expected a numeric array, got dtype ", std::string(py::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    mc::fail(component, what, ": expected a ", ndim, "-D array, got ", a.ndim(), "-D");
  const bool f32 = kind == 'f' && a.itemsize() == 4 && a.dtype().attr("isnative").cast<bool>();
  const bool aligned = (reinterpret_cast<uintptr_t>(a.data()) % alignof(float)) == 0;
  if (!(f32 && aligned && (a.flags() & py::array::c_style))) {
    a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!a) throw py::error_already_set();
    in.copied = true;
  }
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  // Read only: the library functions never write to their inputs (const_cast for from_blob's API).
  in.t = at::from_blob(const_cast<void*>(a.data()), shape, at::TensorOptions().dtype(at::kFloat));
  in.array = std::move(a);
  return in;
}

// numpy dtype name of an ATen scalar type the bindings return.
inline py::dtype numpy_dtype_of(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return py::dtype("float32");
    case at::kDouble: return py::dtype("float64");
    case at::kByte: return py::dtype("uint8");
    case at::kInt: return py::dtype("int32");
    case at::kLong: return py::dtype("int64");
    case at::kBool: return py::dtype("bool");
    default: mc::fail("bindings", "cannot return a tensor of type ", c10::toString(s));
  }
}

// A numpy array sharing the tensor's memory (contiguous CPU tensors; others are made so first).
inline py::array to_numpy(at::Tensor t) {
  if (!t.defined()) return py::array();
  t = t.cpu().contiguous();
  auto* keep = new at::Tensor(t);
  py::capsule base(keep, [](void* p) { delete static_cast<at::Tensor*>(p); });
  std::vector<py::ssize_t> shape(t.sizes().begin(), t.sizes().end());
  return py::array(numpy_dtype_of(t.scalar_type()), shape, {}, t.data_ptr(), base);
}

inline py::object to_numpy_or_none(const at::Tensor& t) {
  return t.defined() ? py::object(to_numpy(t)) : py::object(py::none());
}

void register_array_prune(py::module_& m);  // arrays_prune.cpp: sparsegpt, wanda, masks, write_packed

}  // namespace mcpy
