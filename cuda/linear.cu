// CUDA linear layer: 64x64 output tiles staged through shared memory in 16-deep k slices, each
// thread accumulating a 4x4 register tile, with bias + activation applied before the only store.
#include "linear.cuh"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "cuda_check.cuh"
#include "launch_limits.cuh"

namespace inferline::cuda {
namespace {

using kernels::activation;
using kernels::weight_layout;

constexpr int tile_m = 64;
constexpr int tile_n = 64;
constexpr int tile_k = 16;
constexpr int micro = 4;                                     // each thread: micro x micro outputs
constexpr int threads_x = tile_n / micro;                    // 16
constexpr int threads = (tile_m / micro) * (tile_n / micro);  // 256
static_assert(tile_m * tile_k % threads == 0 && tile_n * tile_k % threads == 0,
              "each thread must load the same number of tile elements");

// Thread (ty, tx) owns rows ty + 16·i and columns tx + 16·j of the tile: a warp's shared-memory
// reads hit distinct banks or broadcast, and its global stores cover consecutive columns.
template <activation act, weight_layout layout>
__global__ void __launch_bounds__(threads)
    linear_kernel(const float* __restrict__ x, const float* __restrict__ w,
                  const float* __restrict__ bias, float* __restrict__ y, int m, int n, int k) {
  // +1 padding: the transposed store xs[kk][r] from 16 consecutive k would otherwise hit
  // 16 addresses 64 words apart, all in the same bank.
  __shared__ float xs[tile_k][tile_m + 1];
  __shared__ float ws[tile_k][tile_n + 1];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % threads_x;
  const int ty = tid / threads_x;
  const int row0 = static_cast<int>(blockIdx.y) * tile_m;
  const int col0 = static_cast<int>(blockIdx.x) * tile_n;
  float acc[micro][micro] = {};

  for (int k0 = 0; k0 < k; k0 += tile_k) {
#pragma unroll
    for (int i = 0; i < tile_m * tile_k / threads; ++i) {
      const int e = tid + i * threads;
      const int r = e / tile_k;  // 16 consecutive threads read 16 consecutive k of one row
      const int c = e % tile_k;
      const int gr = row0 + r;
      const int gc = k0 + c;
      xs[c][r] = (gr < m && gc < k) ? x[static_cast<long long>(gr) * k + gc] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < tile_n * tile_k / threads; ++i) {
      const int e = tid + i * threads;
      if constexpr (layout == weight_layout::out_in) {
        const int col = e / tile_k;  // W is [n, k]: read along k
        const int kk = e % tile_k;
        const int gn = col0 + col;
        const int gk = k0 + kk;
        ws[kk][col] = (gn < n && gk < k) ? w[static_cast<long long>(gn) * k + gk] : 0.0f;
      } else {
        const int kk = e / tile_n;  // W is [k, n]: read along n
        const int col = e % tile_n;
        const int gn = col0 + col;
        const int gk = k0 + kk;
        ws[kk][col] = (gn < n && gk < k) ? w[static_cast<long long>(gk) * n + gn] : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < tile_k; ++kk) {
      float a[micro];
      float b[micro];
#pragma unroll
      for (int i = 0; i < micro; ++i) a[i] = xs[kk][ty + i * (tile_m / micro)];
#pragma unroll
      for (int j = 0; j < micro; ++j) b[j] = ws[kk][tx + j * threads_x];
#pragma unroll
      for (int i = 0; i < micro; ++i) {
#pragma unroll
        for (int j = 0; j < micro; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < micro; ++j) {
    const int col = col0 + tx + j * threads_x;
    if (col >= n) continue;
    const float b = bias != nullptr ? bias[col] : 0.0f;
#pragma unroll
    for (int i = 0; i < micro; ++i) {
      const int row = row0 + ty + i * (tile_m / micro);
      if (row < m) {
        y[static_cast<long long>(row) * n + col] =
            kernels::math::apply_activation<act>(acc[i][j] + b);
      }
    }
  }
}

template <activation act>
void launch(const float* x, const float* w, const float* bias, float* y, int m, int n, int k,
            weight_layout layout, cudaStream_t stream) {
  // Tile counts in size_t: `n + tile_n - 1` in int would overflow near INT_MAX.
  const dim3 grid(static_cast<unsigned>(limits::blocks_for(static_cast<std::size_t>(n), tile_n)),
                  static_cast<unsigned>(limits::blocks_for(static_cast<std::size_t>(m), tile_m)));
  if (layout == weight_layout::out_in) {
    linear_kernel<act, weight_layout::out_in><<<grid, threads, 0, stream>>>(x, w, bias, y, m, n, k);
  } else {
    linear_kernel<act, weight_layout::in_out><<<grid, threads, 0, stream>>>(x, w, bias, y, m, n, k);
  }
  CUDA_CHECK_LAUNCH();
}

template <activation act>
__global__ void bias_activation_kernel(float* __restrict__ y, std::size_t count, std::size_t n,
                                       const float* __restrict__ bias) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float b = bias != nullptr ? bias[i % n] : 0.0f;
    y[i] = kernels::math::apply_activation<act>(y[i] + b);
  }
}

constexpr unsigned epilogue_threads = 256;
constexpr std::size_t epilogue_max_blocks = 4096;  // grid-stride beyond this

template <activation act>
void launch_epilogue(float* y, std::size_t count, std::size_t n, const float* bias,
                     cudaStream_t stream) {
  constexpr unsigned block = epilogue_threads;
  const auto blocks = static_cast<unsigned>(
      std::min(epilogue_max_blocks, limits::blocks_for(count, block)));
  bias_activation_kernel<act><<<blocks, block, 0, stream>>>(y, count, n, bias);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void bias_activation(float* y, std::size_t m, std::size_t n, const float* bias, activation act,
                     void* stream) {
  if (m == 0 || n == 0) return;
  const std::size_t count = limits::checked_product(m, n, "bias_activation");
  // The grid-stride index below `count` must not wrap when it advances by the whole grid.
  limits::require_fits(
      limits::strided_fits(count, epilogue_max_blocks * epilogue_threads, SIZE_MAX),
      "bias_activation");
  const cudaStream_t s = detail::as_stream(stream);
  switch (act) {
    case activation::none:
      if (bias != nullptr) launch_epilogue<activation::none>(y, count, n, bias, s);
      return;
    case activation::relu: return launch_epilogue<activation::relu>(y, count, n, bias, s);
    case activation::gelu: return launch_epilogue<activation::gelu>(y, count, n, bias, s);
    case activation::gelu_tanh:
      return launch_epilogue<activation::gelu_tanh>(y, count, n, bias, s);
  }
  throw std::invalid_argument("inferline::cuda::bias_activation: unknown activation");
}

void linear(const float* x, const float* w, const float* bias, float* y, std::size_t m,
            std::size_t n, std::size_t k, weight_layout layout, activation act, void* stream) {
  if (m == 0 || n == 0) return;
  limits::require_fits(limits::linear_fits(m, n, k, tile_m, tile_n, tile_k), "linear");
  const auto mi = static_cast<int>(m);
  const auto ni = static_cast<int>(n);
  const auto ki = static_cast<int>(k);
  const cudaStream_t s = detail::as_stream(stream);
  switch (act) {
    case activation::none: return launch<activation::none>(x, w, bias, y, mi, ni, ki, layout, s);
    case activation::relu: return launch<activation::relu>(x, w, bias, y, mi, ni, ki, layout, s);
    case activation::gelu: return launch<activation::gelu>(x, w, bias, y, mi, ni, ki, layout, s);
    case activation::gelu_tanh:
      return launch<activation::gelu_tanh>(x, w, bias, y, mi, ni, ki, layout, s);
  }
  throw std::invalid_argument("inferline::cuda::linear: unknown activation");
}

}  // namespace inferline::cuda
