// Host launcher for the CUDA linear layer: tiled shared-memory SGEMM with a fused bias and
// activation epilogue.
#pragma once

#include <cstddef>

#include "inferline/kernels/math.hpp"

namespace inferline::cuda {

/// y[m, n] = act(x[m, k] · W + bias[n]) on device pointers, same contract as
/// kernels::linear (weight layout, null bias, k == 0, erf GELU for activation::gelu). Queued on
/// `stream` (a cudaStream_t; null: the default stream); returns without waiting. Throws
/// std::runtime_error on a launch failure or dimensions beyond int range. Thread-safe.
void linear(const float* x, const float* w, const float* bias, float* y, std::size_t m,
            std::size_t n, std::size_t k, kernels::weight_layout layout,
            kernels::activation act, void* stream = nullptr);

/// In place y[m, n] = act(y + bias[n]) on device pointers (`bias` may be null): the linear
/// epilogue alone, same contract as kernels::bias_activation. Queued on `stream`. Thread-safe.
void bias_activation(float* y, std::size_t m, std::size_t n, const float* bias,
                     kernels::activation act, void* stream = nullptr);

}  // namespace inferline::cuda
