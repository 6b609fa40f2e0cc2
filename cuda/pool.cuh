// Host launcher for CUDA masked mean pooling over the token axis.
#pragma once

#include <cstddef>

namespace inferline::cuda {

/// Masked mean over tokens on device pointers, same contract as kernels::masked_mean_pool
/// (x [batch, tokens, hidden], mask [batch, tokens] float or null, zero-mask tokens skipped,
/// all-zero rows give zeros). Queued on `stream` (null: default stream). Throws
/// std::runtime_error on a launch failure. Thread-safe.
void masked_mean_pool(const float* x, const float* mask, float* y, std::size_t batch,
                      std::size_t tokens, std::size_t hidden, void* stream = nullptr);

}  // namespace inferline::cuda
