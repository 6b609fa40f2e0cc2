// CPU row normalisations (layer norm, L2) as vectorised passes over rows that stay in cache.
#include "inferline/kernels/norm.hpp"

#include <cmath>

#include "cpu_simd.hpp"
#include "inferline/kernels/math.hpp"

namespace inferline::kernels {

INFERLINE_CPU_CLONES void layer_norm(const float* x, const float* gamma, const float* beta,
                                     float* y, std::size_t rows, std::size_t cols, float eps) {
  if (cols == 0) return;
  const float inv_cols = 1.0f / static_cast<float>(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    float* out = y + r * cols;
    float sum = 0.0f;
    INFERLINE_SIMD_SUM(sum)
    for (std::size_t j = 0; j < cols; ++j) sum += in[j];
    const float mean = sum * inv_cols;
    // Second pass over (x - mean)² rather than E[x²] - mean²: no cancellation for rows with a
    // large mean, and the row is still in L1/L2.
    float sq = 0.0f;
    INFERLINE_SIMD_SUM(sq)
    for (std::size_t j = 0; j < cols; ++j) {
      const float d = in[j] - mean;
      sq += d * d;
    }
    const float rstd = 1.0f / std::sqrt(sq * inv_cols + eps);
    if (gamma != nullptr && beta != nullptr) {
      INFERLINE_SIMD
      for (std::size_t j = 0; j < cols; ++j) {
        out[j] = math::layer_norm_apply(in[j], mean, rstd, gamma[j], beta[j]);
      }
    } else if (gamma != nullptr) {
      INFERLINE_SIMD
      for (std::size_t j = 0; j < cols; ++j) {
        out[j] = math::layer_norm_apply(in[j], mean, rstd, gamma[j], 0.0f);
      }
    } else if (beta != nullptr) {
      INFERLINE_SIMD
      for (std::size_t j = 0; j < cols; ++j) {
        out[j] = math::layer_norm_apply(in[j], mean, rstd, 1.0f, beta[j]);
      }
    } else {
      INFERLINE_SIMD
      for (std::size_t j = 0; j < cols; ++j) {
        out[j] = math::layer_norm_apply(in[j], mean, rstd, 1.0f, 0.0f);
      }
    }
  }
}

INFERLINE_CPU_CLONES void l2_normalize(const float* x, float* y, std::size_t rows,
                                       std::size_t cols, float eps) {
  for (std::size_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    float* out = y + r * cols;
    float sq = 0.0f;
    INFERLINE_SIMD_SUM(sq)
    for (std::size_t j = 0; j < cols; ++j) sq += in[j] * in[j];
    const float scale = math::l2_scale(sq, eps);
    INFERLINE_SIMD
    for (std::size_t j = 0; j < cols; ++j) out[j] = in[j] * scale;
  }
}

}  // namespace inferline::kernels
