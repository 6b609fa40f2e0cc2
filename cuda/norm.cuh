// Host launchers for the CUDA row normalisations: layer norm and L2 normalisation.
#pragma once

#include <cstddef>

namespace inferline::cuda {

/// Layer norm over the last axis on device pointers, same contract as kernels::layer_norm
/// (gamma / beta may be null; in place allowed). Queued on `stream` (null: default stream).
/// Throws std::runtime_error on a launch failure. Thread-safe.
void layer_norm(const float* x, const float* gamma, const float* beta, float* y, std::size_t rows,
                std::size_t cols, float eps = 1e-5f, void* stream = nullptr);

/// y = x / max(‖x‖₂, eps) per row on device pointers, same contract as kernels::l2_normalize.
/// Queued on `stream` (null: default stream). Throws std::runtime_error on a launch failure.
/// Thread-safe.
void l2_normalize(const float* x, float* y, std::size_t rows, std::size_t cols,
                  float eps = 1e-12f, void* stream = nullptr);

}  // namespace inferline::cuda
