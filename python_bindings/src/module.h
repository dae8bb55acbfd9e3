// The _mcompress extension: one registration function per subsystem (module.cpp calls them).
#pragma once
#include <pybind11/pybind11.h>

namespace mcpy {

void register_errors(pybind11::module_& m);       // errors.cpp: C++ exceptions -> mcompress.Error family
void register_commands(pybind11::module_& m);     // commands.cpp: quantize/prune/... through the CLI's jobs
void register_checkpoints(pybind11::module_& m);  // checkpoints.cpp: load/save/inspect as numpy
void register_arrays(pybind11::module_& m);       // arrays.cpp: gptq, rtn, sparsegpt, ... on arrays
void register_torch_engine(pybind11::module_& m); // torch_engine.cpp: quantize_model/prune_model on a torch module

}  // namespace mcpy
