// CUDA masked mean pooling: one thread per (batch, hidden) output, walking the tokens; the
// threads of a block read consecutive hidden values of a token, so loads are coalesced.
#include "pool.cuh"

#include "cuda_check.cuh"
#include "launch_limits.cuh"

namespace inferline::cuda {
namespace {

constexpr unsigned pool_threads = 128;

__global__ void masked_mean_pool_kernel(const float* __restrict__ x,
                                        const float* __restrict__ mask, float* __restrict__ y,
                                        std::size_t tokens, std::size_t hidden) {
  const std::size_t b = blockIdx.y;
  const std::size_t h = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (h >= hidden) return;
  float acc = 0.0f;
  float count = 0.0f;
  for (std::size_t t = 0; t < tokens; ++t) {
    const float wt = mask != nullptr ? mask[b * tokens + t] : 1.0f;
    if (wt == 0.0f) continue;  // padding: skipped, so garbage or NaN there cannot leak in
    count += wt;
    acc += wt * x[(b * tokens + t) * hidden + h];
  }
  y[b * hidden + h] = acc * (1.0f / fmaxf(count, 1e-9f));
}

}  // namespace

void masked_mean_pool(const float* x, const float* mask, float* y, std::size_t batch,
                      std::size_t tokens, std::size_t hidden, void* stream) {
  if (batch == 0 || hidden == 0) return;
  const std::size_t blocks_x = limits::blocks_for(hidden, pool_threads);
  // The size_t indices (b·tokens + t)·hidden + h must fit too.
  (void)limits::checked_product(
      limits::checked_product(batch, tokens, "masked_mean_pool"), hidden, "masked_mean_pool");
  limits::require_fits(batch <= limits::max_grid_y && blocks_x <= limits::max_grid_x,
                       "masked_mean_pool");
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(batch));
  masked_mean_pool_kernel<<<grid, pool_threads, 0, detail::as_stream(stream)>>>(x, mask, y,
                                                                                tokens, hidden);
  CUDA_CHECK_LAUNCH();
}

}  // namespace inferline::cuda
