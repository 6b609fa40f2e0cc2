// The CUDA kernels' host API for plain C++ code: device memory, streams and every launcher,
// declared only when the build has CUDA (INFERLINE_HAVE_CUDA, set PUBLIC by inferline_cuda).
// No CUDA header is included; streams are `void*` holding a cudaStream_t.
#pragma once

namespace inferline::kernels {

/// True when the CUDA launchers below are compiled in (a GPU may still be absent at run time:
/// ask inferline::cuda_device_count()). Thread-safe.
#ifdef INFERLINE_HAVE_CUDA
inline constexpr bool have_cuda = true;
#else
inline constexpr bool have_cuda = false;
#endif

}  // namespace inferline::kernels

#ifdef INFERLINE_HAVE_CUDA
#include "convert.cuh"
#include "device.cuh"
#include "linear.cuh"
#include "memory.cuh"
#include "norm.cuh"
#include "pool.cuh"
#include "softmax.cuh"
#include "topk.cuh"
#endif
