// CUDA row normalisations: one block per row, block reductions for mean / variance / norm.
#include "norm.cuh"

#include "cuda_check.cuh"
#include "detail/block_reduce.cuh"
#include "launch_limits.cuh"

namespace inferline::cuda {
namespace {

namespace math = kernels::math;

__global__ void layer_norm_kernel(const float* x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float* y, unsigned cols,
                                  float eps) {
  const std::size_t base = static_cast<std::size_t>(blockIdx.x) * cols;
  const float* in = x + base;
  float* out = y + base;
  const float inv_cols = 1.0f / static_cast<float>(cols);
  float sum = 0.0f;
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) sum += in[j];
  const float mean = detail::block_reduce(sum, detail::sum_op{}, 0.0f) * inv_cols;
  float sq = 0.0f;
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
    const float d = in[j] - mean;
    sq += d * d;
  }
  sq = detail::block_reduce(sq, detail::sum_op{}, 0.0f);
  const float rstd = rsqrtf(sq * inv_cols + eps);
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
    const float g = gamma != nullptr ? gamma[j] : 1.0f;
    const float b = beta != nullptr ? beta[j] : 0.0f;
    out[j] = math::layer_norm_apply(in[j], mean, rstd, g, b);
  }
}

__global__ void l2_normalize_kernel(const float* x, float* y, unsigned cols, float eps) {
  const std::size_t base = static_cast<std::size_t>(blockIdx.x) * cols;
  const float* in = x + base;
  float* out = y + base;
  float sq = 0.0f;
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) sq += in[j] * in[j];
  const float scale = math::l2_scale(detail::block_reduce(sq, detail::sum_op{}, 0.0f), eps);
  for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) out[j] = in[j] * scale;
}

// The unsigned `j += blockDim.x` loops must not wrap past UINT_MAX.
void check_dims(std::size_t rows, std::size_t cols, const char* what) {
  limits::require_fits(limits::row_kernel_fits(rows, cols), what);
}

}  // namespace

void layer_norm(const float* x, const float* gamma, const float* beta, float* y, std::size_t rows,
                std::size_t cols, float eps, void* stream) {
  if (rows == 0 || cols == 0) return;
  check_dims(rows, cols, "layer_norm");
  layer_norm_kernel<<<static_cast<unsigned>(rows), detail::row_block_threads(cols), 0,
                      detail::as_stream(stream)>>>(x, gamma, beta, y,
                                                   static_cast<unsigned>(cols), eps);
  CUDA_CHECK_LAUNCH();
}

void l2_normalize(const float* x, float* y, std::size_t rows, std::size_t cols, float eps,
                  void* stream) {
  if (rows == 0 || cols == 0) return;
  check_dims(rows, cols, "l2_normalize");
  l2_normalize_kernel<<<static_cast<unsigned>(rows), detail::row_block_threads(cols), 0,
                        detail::as_stream(stream)>>>(x, y, static_cast<unsigned>(cols), eps);
  CUDA_CHECK_LAUNCH();
}

}  // namespace inferline::cuda
