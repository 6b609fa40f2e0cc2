// CPU softmax over the last axis.
#pragma once

#include <cstddef>

namespace inferline::kernels {

/// y[r, :] = softmax(x[r, :]) for `rows` rows of `cols` float32, numerically stable (subtracts
/// the row maximum). `y` may equal `x` (in place); other overlap is not allowed. A row holding a
/// NaN, or only -inf, becomes all NaN (as in PyTorch). Single-threaded on the caller's thread;
/// thread-safe for distinct outputs.
void softmax(const float* x, float* y, std::size_t rows, std::size_t cols);

}  // namespace inferline::kernels
