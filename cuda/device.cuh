// Host API for CUDA device discovery; no CUDA types leak out of this header.
#pragma once

namespace inferline::cuda {

/// Number of usable CUDA devices; 0 when there is no driver, no device or the driver is too old.
/// Thread-safe.
int device_count() noexcept;

/// Name of device `index`, or an empty string when it cannot be queried. Thread-safe.
const char* device_name(int index) noexcept;

}  // namespace inferline::cuda
