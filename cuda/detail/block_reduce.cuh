// Device-only warp and block reductions for the row kernels (softmax, norms). Included by .cu
// files only; it is not a host API header.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "inferline/kernels/math.hpp"

namespace inferline::cuda::detail {

/// a + b. Stateless; thread-safe.
struct sum_op {
  __device__ float operator()(float a, float b) const { return a + b; }
};

/// max(a, b) ignoring NaN in b (math::max_f). Stateless; thread-safe.
struct max_op {
  __device__ float operator()(float a, float b) const { return kernels::math::max_f(a, b); }
};

/// Reduces `v` over the 32 lanes of a full warp; every lane gets the result.
template <class Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

/// Reduces `v` over the whole block (blockDim.x a multiple of 32, at most 1024); every thread
/// gets the result. Must be reached by all threads of the block. Safe to call repeatedly: the
/// leading barrier keeps a call's writes from racing the previous call's readers.
template <class Op>
__device__ float block_reduce(float v, Op op, float identity) {
  __shared__ float partial[32];
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? partial[lane] : identity;
    v = warp_reduce(v, op);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

/// Threads per block for a row kernel over `cols` elements: a power of two in [32, 256], so
/// short rows do not leave most of a block idle.
inline unsigned row_block_threads(std::size_t cols) noexcept {
  unsigned t = 32;
  while (t < 256 && t < cols) t <<= 1;
  return t;
}

}  // namespace inferline::cuda::detail
