// Host launchers for the CUDA linear layer: cuBLASLt (loaded at run time) when available, else
// the own SGEMM (register-blocked tiles, vectorised loads, a split-K small-batch path), with a
// fused bias and activation epilogue either way.
#pragma once

#include <cstddef>
#include <string>

#include "inferline/kernels/math.hpp"

namespace inferline::cuda {

/// Which matrix-multiply implementation a linear() call uses. Plain value type.
enum class gemm_path : unsigned char {
  automatic = 0,    ///< cuBLASLt when it loaded and has an algorithm, else the own kernel
  cublaslt = 1,     ///< cuBLASLt only: std::runtime_error when it is unavailable for the shape
  own = 2,          ///< the own kernel, tile and split chosen by shape (never cuBLASLt)
  own_wide = 3,     ///< the own kernel's 128 x 128 register-blocked tiles, no split
  own_narrow = 4,   ///< the own kernel's small-batch path: narrow tiles, split-K when k allows
};

/// Scratch device memory for linear(): cuBLASLt's workspace and split-K partial sums. Grows on
/// demand (growing waits for the device, so it never frees memory queued work still reads);
/// use one per stream. Not thread-safe; distinct workspaces are independent.
class gemm_workspace {
 public:
  gemm_workspace() noexcept = default;
  gemm_workspace(const gemm_workspace&) = delete;
  gemm_workspace& operator=(const gemm_workspace&) = delete;
  ~gemm_workspace();
  /// Device memory of at least `bytes` bytes (null for 0), valid until the next reserve().
  void* reserve(std::size_t bytes);

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// y[m, n] = act(x[m, k] · W + bias[n]) on device pointers, same contract as
/// kernels::linear (weight layout, null bias, k == 0, erf GELU for activation::gelu). Queued on
/// `stream` (a cudaStream_t; null: the default stream); returns without waiting. `workspace`
/// holds cuBLASLt's workspace and split-K sums; without one nothing is allocated: cuBLASLt
/// picks among algorithms that need no workspace and the own kernel does not split k.
/// Throws std::runtime_error on a launch failure, std::length_error for dimensions beyond int
/// range. Thread-safe for distinct workspaces.
void linear(const float* x, const float* w, const float* bias, float* y, std::size_t m,
            std::size_t n, std::size_t k, kernels::weight_layout layout,
            kernels::activation act, void* stream = nullptr,
            gemm_workspace* workspace = nullptr);

/// linear() through a chosen implementation (tests and benchmarks compare them). Same contract;
/// gemm_path::cublaslt throws std::runtime_error "...: cuBLASLt unavailable (<why>)" when it
/// cannot run the shape. Thread-safe for distinct workspaces.
void linear_with(gemm_path path, const float* x, const float* w, const float* bias, float* y,
                 std::size_t m, std::size_t n, std::size_t k, kernels::weight_layout layout,
                 kernels::activation act, void* stream = nullptr,
                 gemm_workspace* workspace = nullptr);

/// True when cuBLASLt loaded (see cublaslt.hpp for where it is looked for). Thread-safe.
bool cublaslt_available() noexcept;

/// Which cuBLASLt was loaded, or why none was. Thread-safe.
std::string cublaslt_status();

/// In place y[m, n] = act(y + bias[n]) on device pointers (`bias` may be null): the linear
/// epilogue alone, same contract as kernels::bias_activation. Queued on `stream`. Thread-safe.
void bias_activation(float* y, std::size_t m, std::size_t n, const float* bias,
                     kernels::activation act, void* stream = nullptr);

}  // namespace inferline::cuda
