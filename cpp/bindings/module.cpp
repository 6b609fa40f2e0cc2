// The inferline._core extension module: only registration calls live here.
#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "inferline native core: batching scheduler, metrics, kernels (private API)";
  inferline::bindings::register_info(m);
  inferline::bindings::register_types(m);
  inferline::bindings::register_engine(m);
  inferline::bindings::register_kernels(m);
  inferline::bindings::register_encoder(m);
}
