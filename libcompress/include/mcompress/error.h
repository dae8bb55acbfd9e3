// Errors raised by libcompress. The CLI maps them to exit codes:
//   InputError (bad file, bad option, bad data)  -> 2 (FileError: cannot open/read/write)
//   GateError  (accuracy gate missed)             -> 3
//   any other Error / std::exception              -> 1 (internal)
// Messages name the component, the file/tensor/layer and what was expected:
//   [safetensors] model.safetensors: tensor 'w' data [100, 200) lies beyond the data section (96 bytes)
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace mc {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Malformed or unusable input: a file, an option, a data set. Exit status 2.
class InputError : public Error {
 public:
  using Error::Error;
};

// A file that cannot be opened, read, created or written (missing, permissions, disk full): an
// InputError (exit status 2) that the Python bindings raise as OSError.
class FileError : public InputError {
 public:
  using InputError::InputError;
};

// An accuracy gate was missed. Exit status 3.
class GateError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// mc::fail<InputError>("gguf", path, ": tensor '", name, "' has ", n, " dims")
// produces "[gguf] <path>: tensor 'x' has 9 dims".
template <typename E = InputError, typename... Args>
[[noreturn]] void fail(const char* component, const Args&... args) {
  throw E(detail::concat("[", component, "] ", args...));
}

template <typename... Args>
std::string str(const Args&... args) {
  return detail::concat(args...);
}

}  // namespace mc
