// Checkpoints as numpy arrays: load (zero-copy views of the memory-mapped file where the dtype maps to
// numpy; packed quantized checkpoints dequantized by default), save (any writable format, from
// C-contiguous arrays without a copy), inspect (format, metadata, tensor table without reading data).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "mcompress/checkpoint.h"
#include "mcompress/dtype.h"
#include "mcompress/error.h"
#include "mcompress/quant/packed.h"
#include "mcompress/tensor.h"
#include "module.h"

namespace py = pybind11;

namespace mcpy {

namespace {

// numpy dtype of a stored dtype; none for BF16 and ggml blocks (returned as float32 copies).
py::object numpy_dtype(mc::DType t) {
  switch (t) {
    case mc::DType::F64: return py::dtype("float64");
    case mc::DType::F32: return py::dtype("float32");
    case mc::DType::F16: return py::dtype("float16");
    case mc::DType::I64: return py::dtype("int64");
    case mc::DType::I32: return py::dtype("int32");
    case mc::DType::I16: return py::dtype("int16");
    case mc::DType::I8: return py::dtype("int8");
    case mc::DType::U8: return py::dtype("uint8");
    case mc::DType::BOOL: return py::dtype("bool");
    default: return py::none();
  }
}

mc::DType dtype_of(const py::array& a, const std::string& name) {
  const char kind = a.dtype().kind();
  const auto size = a.itemsize();
  if (kind == 'f' && size == 8) return mc::DType::F64;
  if (kind == 'f' && size == 4) return mc::DType::F32;
  if (kind == 'f' && size == 2) return mc::DType::F16;
  if (kind == 'i' && size == 8) return mc::DType::I64;
  if (kind == 'i' && size == 4) return mc::DType::I32;
  if (kind == 'i' && size == 2) return mc::DType::I16;
  if (kind == 'i' && size == 1) return mc::DType::I8;
  if (kind == 'u' && size == 1) return mc::DType::U8;
  if (kind == 'b') return mc::DType::BOOL;
  mc::fail("save", "tensor '", name, "': numpy dtype ", std::string(py::str(a.dtype())),
           " cannot be stored (float64/32/16, int64/32/16/8, uint8, bool)");
}

// A HostTensor as a numpy array sharing its memory (the capsule keeps the owner alive).
py::array to_numpy(const mc::HostTensor& t) {
  py::object dt = numpy_dtype(t.dtype);
  if (dt.is_none()) {
    std::vector<float> v = mc::to_f32(t);
    py::array_t<float> a(t.shape);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return std::move(a);
  }
  auto* keep = new std::shared_ptr<const void>(t.owner);
  py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); });
  return py::array(py::dtype::from_args(dt), t.shape, {}, t.data, base);
}

}  // namespace

void register_checkpoints(py::module_& m) {
  m.def(
      "load",
      [](const std::string& path, bool dequantize) {
        std::vector<mc::HostTensor> tensors;
        std::map<std::string, std::string> meta;
        {
          py::gil_scoped_release release;
          auto r = mc::open_checkpoint(path);
          meta = r->metadata();
          tensors = dequantize && mc::is_packed_checkpoint(*r) ? mc::read_packed_checkpoint(*r) : r->load_all();
        }
        py::dict out;
        for (const auto& t : tensors) out[py::str(t.name)] = to_numpy(t);
        return py::make_tuple(out, meta);
      },
      py::arg("path"), py::arg("dequantize") = true);

  m.def(
      "save",
      [](const std::string& path, const std::vector<std::pair<std::string, py::array>>& arrays,
         const std::map<std::string, std::string>& metadata, const std::string& format) {
        std::vector<mc::HostTensor> tensors;
        for (const auto& [name, a] : arrays) {
          if (!(a.flags() & py::array::c_style)) mc::fail("save", "tensor '", name, "' is not C-contiguous");
          mc::Shape shape(a.shape(), a.shape() + a.ndim());
          tensors.push_back(mc::HostTensor::view(name, dtype_of(a, name), shape, static_cast<const uint8_t*>(a.data()),
                                                 static_cast<uint64_t>(a.nbytes()), nullptr));
        }
        mc::WriteOptions wo;
        wo.format = format, wo.metadata = metadata;
        py::gil_scoped_release release;
        mc::write_checkpoint(path, tensors, wo);
      },
      py::arg("path"), py::arg("arrays"), py::arg("metadata"), py::arg("format"));

  m.def(
      "inspect",
      [](const std::string& path) {
        auto r = mc::open_checkpoint(path);
        py::list tensors;
        for (const auto& ti : r->tensors()) {
          py::dict d;
          d["name"] = ti.name, d["dtype"] = mc::dtype_info(ti.dtype).name, d["shape"] = ti.shape, d["nbytes"] = ti.nbytes;
          tensors.append(d);
        }
        py::dict out;
        out["path"] = path, out["format"] = r->format(), out["metadata"] = r->metadata(), out["tensors"] = tensors;
        out["packed"] = mc::is_packed_checkpoint(*r);
        return out;
      },
      py::arg("path"));
}

}  // namespace mcpy
