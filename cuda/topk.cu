// CUDA top-k: one block per row, k rounds of a block-wide arg-max under math::topk_before,
// each round restricted to elements ranked after the previous round's winner (no marking, no
// scratch memory, and exactly the CPU kernel's order).
#include "topk.cuh"

#include <climits>
#include <stdexcept>

#include "cuda_check.cuh"
#include "inferline/kernels/math.hpp"

namespace inferline::cuda {
namespace {

namespace math = kernels::math;

constexpr unsigned topk_threads = 128;

struct candidate {
  float value;
  long long index;  // -1: none
};

__device__ __forceinline__ candidate better(candidate a, candidate b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  return math::topk_before(b.value, b.index, a.value, a.index) ? b : a;
}

__device__ __forceinline__ candidate warp_best(candidate c) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    candidate o;
    o.value = __shfl_xor_sync(0xffffffffu, c.value, offset);
    o.index = __shfl_xor_sync(0xffffffffu, c.index, offset);
    c = better(c, o);
  }
  return c;
}

__global__ void __launch_bounds__(topk_threads)
    topk_kernel(const float* __restrict__ x, unsigned cols, unsigned k, float* __restrict__ values,
                long long* __restrict__ indices) {
  __shared__ candidate partial[topk_threads / 32];
  __shared__ candidate winner;
  const float* row = x + static_cast<std::size_t>(blockIdx.x) * cols;
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  candidate prev{0.0f, -1};
  for (unsigned s = 0; s < k; ++s) {
    candidate best{0.0f, -1};
    for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
      const float v = row[j];
      if (prev.index >= 0 && !math::topk_before(prev.value, prev.index, v, j)) continue;
      best = better(best, candidate{v, static_cast<long long>(j)});
    }
    best = warp_best(best);
    if (lane == 0) partial[warp] = best;
    __syncthreads();
    if (warp == 0) {
      candidate c = lane < topk_threads / 32 ? partial[lane] : candidate{0.0f, -1};
      c = warp_best(c);
      if (lane == 0) {
        winner = c;
        values[static_cast<std::size_t>(blockIdx.x) * k + s] = c.value;
        indices[static_cast<std::size_t>(blockIdx.x) * k + s] = c.index;
      }
    }
    __syncthreads();
    prev = winner;
    __syncthreads();  // everyone has read `winner` before the next round overwrites it
  }
}

}  // namespace

void topk(const float* x, std::size_t rows, std::size_t cols, std::size_t k, float* values,
          std::int64_t* indices, void* stream) {
  if (k > cols) throw std::invalid_argument("inferline::cuda::topk: k exceeds the row length");
  if (rows == 0 || k == 0) return;
  if (rows > INT_MAX || cols > static_cast<std::size_t>(INT_MAX)) {
    throw std::length_error("inferline::cuda::topk: dimensions too large for one launch");
  }
  static_assert(sizeof(long long) == sizeof(std::int64_t), "indices are 64-bit");
  topk_kernel<<<static_cast<unsigned>(rows), topk_threads, 0, detail::as_stream(stream)>>>(
      x, static_cast<unsigned>(cols), static_cast<unsigned>(k), values,
      reinterpret_cast<long long*>(indices));
  CUDA_CHECK_LAUNCH();
}

}  // namespace inferline::cuda
