// The text encoder's CUDA kernels on packed batches: embedding gather + LayerNorm, residual +
// LayerNorm, per-sequence per-head attention with an online softmax over key chunks in shared
// memory, and mean pooling + L2 normalisation. One block per row / sequence; rows of `hidden`
// columns are walked with blockDim-strided loops in which each thread only rereads what it
// wrote, so no barrier is needed beyond the block reductions'.
#include "encoder.cuh"

#include <stdexcept>
#include <string>

#include "cuda_check.cuh"
#include "detail/block_reduce.cuh"
#include "detail/encoder_math.hpp"
#include "launch_limits.cuh"

namespace inferline::cuda {
namespace {

namespace math = kernels::math;

constexpr unsigned row_threads = 128;  // hidden 384: three columns per thread

// LayerNorm of a row already written to `row` (two passes: mean, then centred variance, as the
// CPU kernel does).
__device__ void layer_norm_row(float* row, int cols, const float* __restrict__ gamma,
                               const float* __restrict__ beta, float eps, float sum) {
  const float inv_cols = 1.0f / static_cast<float>(cols);
  const float mean = detail::block_reduce(sum, detail::sum_op{}, 0.0f) * inv_cols;
  float sq = 0.0f;
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += static_cast<int>(blockDim.x)) {
    const float d = row[j] - mean;
    sq += d * d;
  }
  sq = detail::block_reduce(sq, detail::sum_op{}, 0.0f);
  const float rstd = rsqrtf(sq * inv_cols + eps);
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += static_cast<int>(blockDim.x)) {
    row[j] = math::layer_norm_apply(row[j], mean, rstd, gamma[j], beta[j]);
  }
}

__global__ void embed_layer_norm_kernel(const std::int32_t* __restrict__ ids,
                                        const std::int32_t* __restrict__ offsets, int n,
                                        const float* __restrict__ word,
                                        const float* __restrict__ pos,
                                        const float* __restrict__ type0,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta, float* __restrict__ out,
                                        int hidden, float eps) {
  const auto t = static_cast<std::int32_t>(blockIdx.x);
  const int s = detail::sequence_of(offsets, n, t);
  const std::size_t h = static_cast<std::size_t>(hidden);
  const float* w = word + static_cast<std::size_t>(ids[t]) * h;
  const float* p = pos + static_cast<std::size_t>(t - offsets[s]) * h;
  float* row = out + static_cast<std::size_t>(t) * h;
  float sum = 0.0f;
  for (int j = static_cast<int>(threadIdx.x); j < hidden; j += static_cast<int>(blockDim.x)) {
    const float v = w[j] + p[j] + type0[j];
    row[j] = v;
    sum += v;
  }
  layer_norm_row(row, hidden, gamma, beta, eps, sum);
}

__global__ void residual_layer_norm_kernel(const float* x, const float* residual,
                                           const float* __restrict__ gamma,
                                           const float* __restrict__ beta, float* out, int cols,
                                           float eps) {
  const std::size_t base = static_cast<std::size_t>(blockIdx.x) * static_cast<std::size_t>(cols);
  float* row = out + base;
  float sum = 0.0f;
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += static_cast<int>(blockDim.x)) {
    const float v = x[base + j] + residual[base + j];
    row[j] = v;
    sum += v;
  }
  layer_norm_row(row, cols, gamma, beta, eps, sum);
}

constexpr int attn_chunk = 64;  // queries per block = keys per shared-memory chunk

// Block (query chunk, head, sequence); thread = one query row of the head. Keys and values of
// the sequence stream through shared memory in chunks; each thread keeps its query, its
// running softmax and its output row in registers.
template <int HS>
__global__ void __launch_bounds__(attn_chunk)
    packed_attention_kernel(const float* __restrict__ qkv,
                            const std::int32_t* __restrict__ offsets,
                            float* __restrict__ ctx, int hidden, float scale) {
  __shared__ float ks[attn_chunk][HS];
  __shared__ float vs[attn_chunk][HS];
  const int seq = static_cast<int>(blockIdx.z);
  const int head = static_cast<int>(blockIdx.y);
  const int start = offsets[seq];
  const int len = offsets[seq + 1] - start;
  const int q_first = static_cast<int>(blockIdx.x) * attn_chunk;
  if (q_first >= len) return;  // uniform over the block: no barrier is skipped by some threads
  const int qi = q_first + static_cast<int>(threadIdx.x);
  const bool active = qi < len;
  const std::size_t stride = 3 * static_cast<std::size_t>(hidden);
  const std::size_t col = static_cast<std::size_t>(head) * HS;

  float q[HS];
  float acc[HS];
#pragma unroll
  for (int d = 0; d < HS; ++d) {
    q[d] = active ? qkv[static_cast<std::size_t>(start + qi) * stride + col + d] * scale : 0.0f;
    acc[d] = 0.0f;
  }
  detail::online_softmax sm;
  for (int k0 = 0; k0 < len; k0 += attn_chunk) {
    const int count = min(attn_chunk, len - k0);
    __syncthreads();  // the previous chunk's readers are done
    for (int e = static_cast<int>(threadIdx.x); e < count * HS; e += attn_chunk) {
      const int j = e / HS;
      const int d = e % HS;
      const float* src = qkv + static_cast<std::size_t>(start + k0 + j) * stride + col + d;
      ks[j][d] = src[hidden];
      vs[j][d] = src[2 * static_cast<std::size_t>(hidden)];
    }
    __syncthreads();
    if (!active) continue;
    float s[attn_chunk];
    float chunk_max = -math::bits_to_float(0x7f800000u);
#pragma unroll
    for (int j = 0; j < attn_chunk; ++j) {
      if (j < count) {
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < HS; ++d) dot += q[d] * ks[j][d];
        s[j] = dot;
        chunk_max = math::max_f(chunk_max, dot);
      }
    }
    const float factor = sm.rescale(chunk_max);
#pragma unroll
    for (int d = 0; d < HS; ++d) acc[d] *= factor;
#pragma unroll
    for (int j = 0; j < attn_chunk; ++j) {
      if (j < count) {
        const float p = sm.weight(s[j]);
#pragma unroll
        for (int d = 0; d < HS; ++d) acc[d] += p * vs[j][d];
      }
    }
  }
  if (!active) return;
  const float inv = 1.0f / sm.sum;
  float* dst = ctx + static_cast<std::size_t>(start + qi) * static_cast<std::size_t>(hidden) + col;
#pragma unroll
  for (int d = 0; d < HS; ++d) dst[d] = acc[d] * inv;
}

__global__ void packed_mean_pool_l2_kernel(const float* __restrict__ x,
                                           const std::int32_t* __restrict__ offsets, int hidden,
                                           float eps, float* __restrict__ out) {
  const int seq = static_cast<int>(blockIdx.x);
  const int start = offsets[seq];
  const int len = offsets[seq + 1] - start;
  const std::size_t h = static_cast<std::size_t>(hidden);
  float* row = out + static_cast<std::size_t>(seq) * h;
  const float inv_len = 1.0f / static_cast<float>(len);
  float sq = 0.0f;
  for (int j = static_cast<int>(threadIdx.x); j < hidden; j += static_cast<int>(blockDim.x)) {
    float sum = 0.0f;
    for (int t = 0; t < len; ++t) sum += x[static_cast<std::size_t>(start + t) * h + j];
    const float mean = sum * inv_len;
    row[j] = mean;
    sq += mean * mean;
  }
  const float scale = math::l2_scale(detail::block_reduce(sq, detail::sum_op{}, 0.0f), eps);
  for (int j = static_cast<int>(threadIdx.x); j < hidden; j += static_cast<int>(blockDim.x)) {
    row[j] *= scale;
  }
}

void require_positive(int v, const char* what) {
  if (v <= 0) {
    throw std::invalid_argument(std::string("inferline::cuda::") + what +
                                ": sizes must be positive");
  }
}

}  // namespace

void embed_layer_norm(const std::int32_t* ids, const std::int32_t* offsets, int n, int tokens,
                      const float* word, const float* pos, const float* type0,
                      const float* gamma, const float* beta, float* out, int hidden, float eps,
                      void* stream) {
  if (tokens == 0) return;
  require_positive(n, "embed_layer_norm");
  require_positive(hidden, "embed_layer_norm");
  require_positive(tokens, "embed_layer_norm");
  embed_layer_norm_kernel<<<static_cast<unsigned>(tokens), row_threads, 0,
                            detail::as_stream(stream)>>>(ids, offsets, n, word, pos, type0,
                                                         gamma, beta, out, hidden, eps);
  CUDA_CHECK_LAUNCH();
}

void residual_layer_norm(const float* x, const float* residual, const float* gamma,
                         const float* beta, float* out, int rows, int cols, float eps,
                         void* stream) {
  if (rows == 0) return;
  require_positive(rows, "residual_layer_norm");
  require_positive(cols, "residual_layer_norm");
  residual_layer_norm_kernel<<<static_cast<unsigned>(rows), row_threads, 0,
                               detail::as_stream(stream)>>>(x, residual, gamma, beta, out, cols,
                                                            eps);
  CUDA_CHECK_LAUNCH();
}

void packed_attention(const float* qkv, const std::int32_t* offsets, int n, int max_len,
                      float* ctx, int hidden, int heads, void* stream) {
  if (n == 0) return;
  require_positive(n, "packed_attention");
  require_positive(max_len, "packed_attention");
  require_positive(heads, "packed_attention");
  if (hidden % heads != 0) {
    throw std::invalid_argument("inferline::cuda::packed_attention: hidden " +
                                std::to_string(hidden) + " is not a multiple of heads " +
                                std::to_string(heads));
  }
  limits::require_fits(static_cast<std::size_t>(n) <= limits::max_grid_y &&
                           static_cast<std::size_t>(heads) <= limits::max_grid_y,
                       "packed_attention");
  const int head_size = hidden / heads;
  const dim3 grid(static_cast<unsigned>(limits::blocks_for(static_cast<std::size_t>(max_len),
                                                           attn_chunk)),
                  static_cast<unsigned>(heads), static_cast<unsigned>(n));
  const float scale = 1.0f / sqrtf(static_cast<float>(head_size));
  const cudaStream_t s = detail::as_stream(stream);
  if (head_size == 32) {
    packed_attention_kernel<32><<<grid, attn_chunk, 0, s>>>(qkv, offsets, ctx, hidden, scale);
  } else if (head_size == 64) {
    packed_attention_kernel<64><<<grid, attn_chunk, 0, s>>>(qkv, offsets, ctx, hidden, scale);
  } else {
    throw std::invalid_argument("inferline::cuda::packed_attention: head size " +
                                std::to_string(head_size) + " unsupported (32 or 64)");
  }
  CUDA_CHECK_LAUNCH();
}

void packed_mean_pool_l2(const float* x, const std::int32_t* offsets, int n, int hidden,
                         float eps, float* out, void* stream) {
  if (n == 0) return;
  require_positive(n, "packed_mean_pool_l2");
  require_positive(hidden, "packed_mean_pool_l2");
  packed_mean_pool_l2_kernel<<<static_cast<unsigned>(n), row_threads, 0,
                               detail::as_stream(stream)>>>(x, offsets, hidden, eps, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace inferline::cuda
