#include "module.h"

PYBIND11_MODULE(_mcompress, m) {
  m.doc() = "mcompress C++ core (use the `mcompress` package, not this module directly)";
  m.attr("__version__") = MCOMPRESS_VERSION;
  mcpy::register_errors(m);
  mcpy::register_commands(m);
  mcpy::register_checkpoints(m);
  mcpy::register_arrays(m);
  mcpy::register_torch_engine(m);
}
