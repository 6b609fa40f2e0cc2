// CUDA softmax: one block per row; block max, block sum of exp, then the scaled write. The row
// is read three times, from L2 after the first, which beats staging rows of any length in
// shared memory for the widths serving models use (up to a few tens of thousands).
#include "softmax.cuh"

#include "cuda_check.cuh"
#include "detail/block_reduce.cuh"
#include "launch_limits.cuh"

namespace inferline::cuda {
namespace {

namespace math = kernels::math;

__global__ void softmax_kernel(const float* x, float* y, unsigned cols) {
  const std::size_t base = static_cast<std::size_t>(blockIdx.x) * cols;
  const float* in = x + base;
  float* out = y + base;
  float mx = -INFINITY;
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) mx = math::max_f(mx, in[j]);
  mx = detail::block_reduce(mx, detail::max_op{}, -INFINITY);
  float sum = 0.0f;
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) sum += math::exp_f(in[j] - mx);
  sum = detail::block_reduce(sum, detail::sum_op{}, 0.0f);
  const float inv = 1.0f / sum;
  // Each element is read and written by the same thread, so y == x (in place) is safe.
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) out[j] = math::exp_f(in[j] - mx) * inv;
}

}  // namespace

void softmax(const float* x, float* y, std::size_t rows, std::size_t cols, void* stream) {
  if (rows == 0 || cols == 0) return;
  // The unsigned `j += blockDim.x` loops must not wrap past UINT_MAX.
  limits::require_fits(limits::row_kernel_fits(rows, cols), "softmax");
  const unsigned threads = detail::row_block_threads(cols);
  softmax_kernel<<<static_cast<unsigned>(rows), threads, 0, detail::as_stream(stream)>>>(
      x, y, static_cast<unsigned>(cols));
  CUDA_CHECK_LAUNCH();
}

}  // namespace inferline::cuda
