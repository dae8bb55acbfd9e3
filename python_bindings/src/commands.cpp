// run_command(args, events, quiet): runs an mcompress subcommand in this process through the same
// dispatch() as the CLI, with the GIL released. events: None (the command prints its own text
// progress unless quiet) or a callable taking each JSON event line ({"event": "progress", ...}) — the
// command then runs with --log-json and its events go to the callable instead of stdout. Returns the
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

// Restores stdout routing of events however the command ends.
struct SinkGuard {
  ~SinkGuard() { mcli::set_event_sink({}); }
};

// An exception raised by the Python callback, carried through the C++ job back to Python.
struct CallbackFailed : std::exception {
  const char* what() const noexcept override { return "progress callback raised"; }
};

}  // namespace

void register_commands(py::module_& m) {
  m.def(
      "run_command",
      [](std::vector<std::string> args, py::object events, bool quiet) {
        SinkGuard guard;
        py::object saved_error;
        if (!events.is_none()) {
          args.insert(args.begin() + 1, "--log-json");
          mcli::set_event_sink([&events, &saved_error](const std::string& line) {
            py::gil_scoped_acquire gil;
            try {
              events(py::str(line));
            } catch (py::error_already_set& e) {
              saved_error = py::reinterpret_borrow<py::object>(e.value());
              throw CallbackFailed();
            }
          });
        } else if (quiet) {
          args.insert(args.begin() + 1, "-q");
        }
        int rc = 0;
        try {
          py::gil_scoped_release release;
          rc = mcli::dispatch(args);
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
