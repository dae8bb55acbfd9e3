// Internal helpers shared by the HDF5 reader (hdf5.cpp) and writer (hdf5_write.cpp): an owning
// handle for HDF5 ids, silencing of the library's error printing, and turning failed calls into
// one-line InputErrors that carry the innermost HDF5 error description.
#pragma once
#include <hdf5.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mcompress/error.h"

namespace mc::h5 {

// Owns one HDF5 id and closes it with the matching H5?close function.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }  // NOLINT: pass straight to the C API
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether the close succeeded (a file close flushes: its result matters).
  bool close() {
    herr_t r = id_ >= 0 && closer_ ? closer_(id_) : 0;
    id_ = H5I_INVALID_HID;
    return r >= 0;
  }
  void reset() { close(); }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Turns off the automatic printing of the HDF5 error stack for the calling thread (each entry point
// calls this: the setting is per thread in thread-safe builds). Failures become InputErrors instead.
// The previous setting is deliberately not restored: with the default printer back in place, a file
// whose metadata failed to load makes HDF5 1.10 loop and complain when the library shuts down.
inline void silence_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// The innermost (most specific) message on the current thread's HDF5 error stack, on one line;
// clears the stack. "" when the stack is empty.
std::string innermost_error();

// Throws InputError "[hdf5] <path>: <what>: <innermost HDF5 error>".
[[noreturn]] void raise(const std::string& path, const std::string& what);

// Returns id wrapped in a Handle, or raises when the call failed (id < 0).
inline Handle check(hid_t id, Handle::Closer closer, const std::string& path, const std::string& what) {
  if (id < 0) raise(path, what);
  return Handle(id, closer);
}
inline void check(herr_t r, const std::string& path, const std::string& what) {
  if (r < 0) raise(path, what);
}

// Types for IEEE binary16 and bfloat16 in little-endian byte order (HDF5 1.10 predefines neither).
Handle half_type();
Handle bfloat16_type();

// An attribute's value: its elements as text (strings as they are, numbers printed shortest
// round-trip, enum members by name) and whether it was a scalar dataspace.
struct AttrValue {
  std::vector<std::string> items;
  bool is_string = false;
  bool scalar = false;
};
// nullopt for types we do not print (compound, reference, opaque, vlen sequences, ...).
std::optional<AttrValue> read_attr(hid_t attr);
// Reads attribute `name` of `obj` if it exists and is readable.
std::optional<AttrValue> read_attr(hid_t obj, const char* name);
// Scalars as their text, arrays as a JSON array.
std::string format_attr(const AttrValue& v);

}  // namespace mc::h5
