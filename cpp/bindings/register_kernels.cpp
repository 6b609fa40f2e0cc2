// Kernel bindings: filled in by the kernels work; the module calls this unconditionally.
#include "bindings.hpp"

namespace inferline::bindings {

void register_kernels(pybind11::module_& /*m*/) {}

}  // namespace inferline::bindings
