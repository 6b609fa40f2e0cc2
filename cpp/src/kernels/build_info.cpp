// Build and run-time capability report; the CUDA calls are compiled in only with CUDA.
#include "inferline/build_info.hpp"

#ifdef INFERLINE_HAVE_CUDA
#include "device.cuh"
#endif

namespace inferline {

bool cuda_compiled() noexcept {
#ifdef INFERLINE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() noexcept {
#ifdef INFERLINE_HAVE_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::string cuda_device_name(int index) {
#ifdef INFERLINE_HAVE_CUDA
  return cuda::device_name(index);
#else
  (void)index;
  return {};
#endif
}

}  // namespace inferline
