// cuBLASLt float32 matrix multiply, loaded at run time with dlopen so that neither the module nor
// the wheel links any CUDA library beyond the static runtime. Host C++ only: no CUDA or cuBLAS
// header leaks out (streams are `void*` holding a cudaStream_t).
#pragma once

#include <cstddef>
#include <string>

#include "inferline/kernels/math.hpp"

namespace inferline::cuda::cublaslt {

/// True when a libcublasLt was loaded and every entry point we use resolved. The first call
/// looks, in order: INFERLINE_CUBLASLT (a path; "0" or "off" disables cuBLASLt),
/// libcublasLt.so.13 and libcublasLt.so.12 through the dynamic loader's search path, then the
/// `nvidia-cublas` wheel's folders beside this module in site-packages (nvidia/cu13/lib,
/// nvidia/cublas/lib). The answer is cached. Thread-safe.
bool available() noexcept;

/// What available() found: "loaded <path or soname> (cuBLASLt <version>)" or why none was.
/// Thread-safe.
std::string status();

/// Epilogue cuBLASLt fuses into the product (GELU is not offered here: cuBLASLt's GELU is the
/// tanh form, ours the exact erf one, so callers apply it with cuda::bias_activation).
enum class epilogue : unsigned char {
  none = 0,  ///< y = x·W (+ bias when `bias` is not null)
  relu = 1,  ///< y = relu(x·W (+ bias))
};

/// y[m, n] = epilogue(x[m, k] · W + bias[n]) in float32 (CUBLAS_COMPUTE_32F: no TF32) on device
/// pointers, with the row-major layouts of kernels::linear; `bias` may be null; k ≥ 1.
/// `workspace` (device memory, may be null when `workspace_bytes` is 0) must not be used by
/// other work until this call's work on `stream` has finished. Queued on `stream` on the
/// current device. Returns false, with nothing queued, when cuBLASLt is not available, cannot
/// create a handle on this device, or offers no algorithm for the shape (the caller falls back
/// to its own kernel); throws
/// std::runtime_error naming the call when cuBLASLt reports an error. The heuristic's choice
/// is cached per device and shape. Thread-safe.
bool matmul(const float* x, const float* w, const float* bias, float* y, std::size_t m,
            std::size_t n, std::size_t k, kernels::weight_layout layout, epilogue ep,
            void* workspace, std::size_t workspace_bytes, void* stream);

}  // namespace inferline::cuda::cublaslt
