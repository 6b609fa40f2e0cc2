// The Python exception classes the core raises and answers futures with, and how to raise one.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

namespace inferline::bindings {

/// The Python exception classes, set once by the package at import (`_core.set_error_types`).
/// Read and written with the GIL held only.
struct error_types {
  pybind11::object queue_full;   ///< the queue bound refused a request
  pybind11::object deadline;     ///< a request's timeout passed
  pybind11::object cancelled;    ///< a request was cancelled
  pybind11::object model_error;  ///< the model failed its batch
  pybind11::object stopped;      ///< the model version is stopped or draining
  pybind11::object invalid;      ///< the request's input or arguments are invalid
};

/// The process-wide exception classes (never destroyed: they outlive interpreter teardown).
/// GIL required.
error_types& errors();

/// Raises `type(msg)` as a Python exception (throws py::error_already_set). GIL required.
[[noreturn]] void raise_error(const pybind11::object& type, const std::string& msg);

}  // namespace inferline::bindings
