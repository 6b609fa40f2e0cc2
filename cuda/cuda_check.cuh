// CUDA_CHECK(expr): turns a failed CUDA runtime call into std::runtime_error naming the call,
// file and line. Internal to cuda/*.cu (it includes cuda_runtime.h); callers see only the
// std::runtime_error the host launchers throw.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace inferline::cuda::detail {

/// Throws std::runtime_error describing `err` raised by `expr` at file:line. Thread-safe.
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ") in `" + expr + "` at " + file + ":" +
                           std::to_string(line));
}

/// The opaque stream handle of the public launchers as a cudaStream_t (null: the default
/// stream). Thread-safe.
inline cudaStream_t as_stream(void* stream) noexcept { return static_cast<cudaStream_t>(stream); }

}  // namespace inferline::cuda::detail

/// Evaluates a CUDA runtime call once and throws std::runtime_error (with the expression, file
/// and line) unless it returned cudaSuccess.
#define CUDA_CHECK(expr)                                                                   \
  do {                                                                                     \
    const cudaError_t inferline_cuda_err_ = (expr);                                        \
    if (inferline_cuda_err_ != cudaSuccess) {                                              \
      ::inferline::cuda::detail::throw_cuda_error(inferline_cuda_err_, #expr, __FILE__,    \
                                                  __LINE__);                               \
    }                                                                                      \
  } while (0)

/// Checks the launch that just happened (bad configuration, missing kernel image for this GPU).
/// Execution errors surface at the next synchronising call, which is checked too.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
