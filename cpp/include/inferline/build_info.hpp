// What the native library was built with and what hardware it can see at run time.
#pragma once

#include <string>

namespace inferline {

/// True when CUDA kernels were compiled into this build. Thread-safe.
bool cuda_compiled() noexcept;

/// Number of CUDA devices visible now (0 without CUDA, driver or device; never throws).
/// Thread-safe.
int cuda_device_count() noexcept;

/// Name of CUDA device `index`, empty when unavailable. Thread-safe.
std::string cuda_device_name(int index);

}  // namespace inferline
