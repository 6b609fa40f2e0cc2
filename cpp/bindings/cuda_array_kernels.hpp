// numpy-facing calls of the CUDA kernels, for tests and comparisons against the CPU (every
// call uploads, launches on the default stream, downloads). Compiled only with CUDA.
#pragma once

#include <cstddef>
#include <optional>

#include "array_kernels.hpp"

namespace inferline::bindings {

// Each function takes the GIL on entry, releases it around the device work, and raises
// RuntimeError when no CUDA device is visible.

/// linear on the GPU.
f32_array cuda_linear(const f32_array& x, const f32_array& w, const std::optional<f32_array>& bias,
                      kernels::activation act, kernels::weight_layout layout);
/// softmax over the last axis on the GPU.
f32_array cuda_softmax(const f32_array& x);
/// layer norm (no affine) on the GPU.
f32_array cuda_layer_norm(const f32_array& x, float eps);
/// L2 normalisation on the GPU.
f32_array cuda_l2_normalize(const f32_array& x, float eps);
/// top-k on the GPU.
pybind11::tuple cuda_topk(const f32_array& x, std::size_t k);

}  // namespace inferline::bindings
