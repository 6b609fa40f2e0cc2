// Declarations shared by the binding files: each register_* adds one area to the module.
#pragma once

#include <pybind11/pybind11.h>

namespace inferline::bindings {

/// Build information (`__version__`, `build_info`, CUDA presence). Import time, GIL held.
void register_info(pybind11::module_& m);
/// The typed seam: `limits`, `defaults`, `TensorSpec`, `SchedulerConfig`. Import time, GIL held.
void register_types(pybind11::module_& m);
/// `set_error_types`, `Backend`, `Core`, `Scheduler`. Import time, GIL held; after register_types.
void register_engine(pybind11::module_& m);
/// The `kernels` submodule and the native model. Import time, GIL held; after register_engine.
void register_kernels(pybind11::module_& m);
/// `kernels.TextEncoder` and its config. Import time, GIL held; after register_kernels.
void register_encoder(pybind11::module_& m);

}  // namespace inferline::bindings
