// Build information: what this module was compiled with and what it sees at run time.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "inferline/build_info.hpp"
#include "inferline/histogram.hpp"

namespace py = pybind11;

namespace inferline::bindings {

void register_info(py::module_& m) {
  m.attr("__version__") = INFERLINE_VERSION;
  m.def(
      "build_info",
      [] {
        py::dict d;
        d["version"] = INFERLINE_VERSION;
        d["build_type"] = INFERLINE_BUILD_TYPE;
        d["compiler"] = INFERLINE_CXX_COMPILER;
        d["cxx_standard"] = __cplusplus;
        d["cuda_compiled"] = cuda_compiled();
        d["histogram_buckets"] = histogram::bucket_count;
        return d;
      },
      "What the native module was built with.");
  m.def("cuda_compiled", &cuda_compiled, "True when CUDA kernels were compiled in.");
  m.def("cuda_device_count", &cuda_device_count,
        "CUDA devices visible now; 0 without a driver or device (never raises).");
  m.def("cuda_device_name", &cuda_device_name, py::arg("index") = 0,
        "Name of a CUDA device, empty when unavailable.");
}

}  // namespace inferline::bindings
