// Host launcher for the CUDA softmax over the last axis.
#pragma once

#include <cstddef>

namespace inferline::cuda {

/// y[r, :] = softmax(x[r, :]) on device pointers, same contract as kernels::softmax (in place
/// allowed; NaN or all -inf rows give NaN). One block per row. Queued on `stream` (a
/// cudaStream_t; null: the default stream). Throws std::runtime_error on a launch failure.
/// Thread-safe.
void softmax(const float* x, float* y, std::size_t rows, std::size_t cols, void* stream = nullptr);

}  // namespace inferline::cuda
