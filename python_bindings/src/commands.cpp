// run_command(args, events, quiet): runs an mcompress subcommand in this process through the same
// dispatch() as the CLI, with the GIL released. events: None (the command prints its own text
// progress unless quiet) or a callable taking each JSON event line ({"event": "progress", ...}) — the
// command then runs with JSON events (as with --log-json) sent to the callable, not stdout. Returns the
// exit status (0, or 3 for a missed gate, 130 for an interrupted training run); errors raise.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <exception>

#include "cli.h"
#include "module.h"

namespace py = pybind11;

namespace mcpy {

namespace {

// An exception raised by the Python callback, carried through the C++ job back to Python.
struct CallbackFailed : std::exception {
  const char* what() const noexcept override { return "progress callback raised"; }
};

}  // namespace

void register_commands(py::module_& m) {
  m.def(
      "run_command",
      [](std::vector<std::string> args, py::object events, bool quiet) {
        py::object saved_error;
        // Each call has its own sink: concurrent jobs (threads) do not share one.
        mc::EventSink sink;
        if (!events.is_none()) {
          sink.json = true;
          sink.lines = [&events, &saved_error](const std::string& line) {
            py::gil_scoped_acquire gil;
            try {
              events(py::str(line));
            } catch (py::error_already_set& e) {
              saved_error = py::reinterpret_borrow<py::object>(e.value());
              throw CallbackFailed();
            }
          };
        } else if (quiet) {
          sink.quiet = true;
        }
        int rc = 0;
        try {
          py::gil_scoped_release release;
          rc = mcli::dispatch(args, sink);
          std::fflush(stdout);
        } catch (const CallbackFailed&) {
          PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(saved_error.ptr())), saved_error.ptr());
          throw py::error_already_set();
        }
        return rc;
      },
      py::arg("args"), py::arg("events") = py::none(), py::arg("quiet") = false,
      "Runs `mcompress ARGS...` in-process (GIL released); see the mcompress package for the typed API.");
}

}  // namespace mcpy
