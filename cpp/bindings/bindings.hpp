// Declarations shared by the binding files: each register_* adds one area to the module.
#pragma once

#include <pybind11/pybind11.h>

namespace inferline::bindings {

void register_info(pybind11::module_& m);
void register_engine(pybind11::module_& m);
void register_kernels(pybind11::module_& m);

}  // namespace inferline::bindings
