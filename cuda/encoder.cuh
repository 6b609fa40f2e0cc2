// Host launchers for the text encoder's CUDA kernels on packed variable-length batches: tokens
// of n sequences laid end to end, sequence i owning packed rows offsets[i] .. offsets[i+1].
// Device pointers throughout; `stream` is a cudaStream_t (null: the default stream); every
// launcher queues its work and returns, throwing std::runtime_error on a launch failure and
// std::invalid_argument on an unsupported shape. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferline::cuda {

/// out[t, :] = LayerNorm(word[ids[t]] + pos[t - offsets[s(t)]] + type0) for the `tokens`
/// packed tokens (s(t): the sequence holding t; `offsets` has n + 1 entries); `type0` is the
/// token-type-0 row. ids must be valid rows (the caller checked them).
void embed_layer_norm(const std::int32_t* ids, const std::int32_t* offsets, int n, int tokens,
                      const float* word, const float* pos, const float* type0,
                      const float* gamma, const float* beta, float* out, int hidden, float eps,
                      void* stream = nullptr);

/// out[r, :] = LayerNorm(x[r, :] + residual[r, :]) for `rows` rows of `cols`; `out` may be
/// `x` or `residual`.
void residual_layer_norm(const float* x, const float* residual, const float* gamma,
                         const float* beta, float* out, int rows, int cols, float eps,
                         void* stream = nullptr);

/// Multi-head self-attention of each sequence over its own tokens only (no padding, no mask):
/// qkv is [tokens, 3·hidden] (query, key, value blocks of `hidden` columns, head h at columns
/// h·head_size within each), ctx [tokens, hidden] gets softmax(q·kᵀ / √head_size)·v per head.
/// `max_len` is the longest sequence (sizes the grid). head_size must be 32 or 64.
void packed_attention(const float* qkv, const std::int32_t* offsets, int n, int max_len,
                      float* ctx, int hidden, int heads, void* stream = nullptr);

/// out[i, :] = mean of x's rows offsets[i] .. offsets[i+1], scaled to unit L2 norm
/// (divided by max(‖mean‖, eps)), for n sequences of `hidden` columns.
void packed_mean_pool_l2(const float* x, const std::int32_t* offsets, int n, int hidden,
                         float eps, float* out, void* stream = nullptr);

}  // namespace inferline::cuda
