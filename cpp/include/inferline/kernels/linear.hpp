// CPU matrix multiply with bias and a fused activation: OpenBLAS sgemm plus our epilogue.
#pragma once

#include <cstddef>

#include "inferline/kernels/math.hpp"

namespace inferline::kernels {

/// y[m, n] = act(x[m, k] · W + bias[n]), float32, row-major. `w` is [n, k] for
/// weight_layout::out_in (y = x·Wᵀ, PyTorch's layout) or [k, n] for weight_layout::in_out.
/// `bias` may be null. The product runs in OpenBLAS sgemm; bias and activation are then applied
/// by our vectorised epilogue in one pass over y (about 1-3% of the sgemm time at k = 768).
/// `y` must not alias `x`, `w` or `bias`. k == 0 gives act(bias). GELU is the exact erf form
/// for activation::gelu and the tanh form for activation::gelu_tanh.
/// Thread-safe: concurrent calls on distinct outputs are fine (OpenBLAS ≥ 0.3.7 serialises its
/// own thread pool); the call may use OpenBLAS worker threads, see set_blas_threads().
void linear(const float* x, const float* w, const float* bias, float* y, std::size_t m,
            std::size_t n, std::size_t k, weight_layout layout, activation act);

/// The epilogue alone, in place: y[m, n] = act(y + bias[n]); `bias` may be null. Single-threaded
/// on the caller's thread. Thread-safe for distinct `y`.
void bias_activation(float* y, std::size_t m, std::size_t n, const float* bias, activation act);

/// Sets the number of threads OpenBLAS uses for every later sgemm in the process (1 keeps the
/// matmul on the caller's thread, which is what a worker-per-core engine wants). Process-wide;
/// call it before serving, not concurrently with linear().
void set_blas_threads(int threads);

/// Number of threads OpenBLAS currently uses. Thread-safe.
int blas_threads() noexcept;

/// Name and configuration of the BLAS library linked in (e.g. "OpenBLAS 0.3.21 ..."). Thread-safe.
const char* blas_config() noexcept;

}  // namespace inferline::kernels
