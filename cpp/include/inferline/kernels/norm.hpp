// CPU row normalisations: layer norm and L2 normalisation.
#pragma once

#include <cstddef>

namespace inferline::kernels {

/// y[r, :] = (x[r, :] - mean) / sqrt(var + eps) · gamma + beta over the last axis of `cols`
/// float32 (biased variance, as torch.nn.LayerNorm; two passes over the row for accuracy).
/// `gamma` / `beta` may be null (1 / 0). `y` may equal `x`. Single-threaded on the caller's
/// thread; thread-safe for distinct outputs.
void layer_norm(const float* x, const float* gamma, const float* beta, float* y, std::size_t rows,
                std::size_t cols, float eps = 1e-5f);

/// y[r, :] = x[r, :] / max(‖x[r, :]‖₂, eps) (torch.nn.functional.normalize semantics).
/// `y` may equal `x`. Single-threaded on the caller's thread; thread-safe for distinct outputs.
void l2_normalize(const float* x, float* y, std::size_t rows, std::size_t cols,
                  float eps = 1e-12f);

}  // namespace inferline::kernels
