// The Python exception classes the core raises and answers futures with, and how to raise one.
#include "errors.hpp"

namespace py = pybind11;

namespace inferline::bindings {

error_types& errors() {
  static error_types* e = new error_types();  // leaked on purpose: outlives interpreter teardown
  return *e;
}

void raise_error(const py::object& type, const std::string& msg) {
  PyErr_SetString(type.ptr(), msg.c_str());
  throw py::error_already_set();
}

}  // namespace inferline::bindings
