// CUDA device discovery: any failure (no driver, insufficient driver, no device) means "no GPU".
#include "device.cuh"

#include <cuda_runtime.h>

#include <array>
#include <mutex>

namespace inferline::cuda {

int device_count() noexcept {
  int count = 0;  // initialised first: cudaGetDeviceCount leaves it untouched on failure
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return count;
}

const char* device_name(int index) noexcept {
  static std::array<char, 256> names[16] = {};
  static std::once_flag once[16];
  if (index < 0 || index >= 16 || index >= device_count()) return "";
  std::call_once(once[index], [index] {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, index) == cudaSuccess) {
      for (std::size_t i = 0; i + 1 < names[index].size() && prop.name[i] != '\0'; ++i) {
        names[index][i] = prop.name[i];
      }
    } else {
      (void)cudaGetLastError();
    }
  });
  return names[index].data();
}

}  // namespace inferline::cuda
