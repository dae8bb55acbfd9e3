// C++ exceptions to the Python classes defined in mcompress/_errors.py: FileError -> mcompress.FileError
// (an OSError), InputError -> mcompress.InputError (a ValueError), GateError -> mcompress.GateError,
// other mc::Error -> mcompress.Error. All derive from mcompress.Error.
#include <pybind11/pybind11.h>

#include "mcompress/error.h"
#include "module.h"

namespace py = pybind11;

namespace mcpy {

void register_errors(py::module_& m) {
  (void)m;
  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    auto raise = [](const char* cls, const char* what) {
      py::object c = py::module_::import("mcompress._errors").attr(cls);
      PyErr_SetObject(c.ptr(), py::str(what).ptr());
    };
    try {
      std::rethrow_exception(p);
    } catch (const mc::FileError& e) {
      raise("FileError", e.what());
    } catch (const mc::InputError& e) {
      raise("InputError", e.what());
    } catch (const mc::GateError& e) {
      raise("GateError", e.what());
    } catch (const mc::Error& e) {
      raise("Error", e.what());
    }
  });
}

}  // namespace mcpy
