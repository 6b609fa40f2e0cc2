// CPU masked mean pooling: weighted row accumulation over tokens, vectorised along hidden.
#include "inferline/kernels/pool.hpp"

#include <algorithm>

#include "cpu_simd.hpp"

namespace inferline::kernels {

INFERLINE_CPU_CLONES void masked_mean_pool(const float* x, const float* mask, float* y,
                                           std::size_t batch, std::size_t tokens,
                                           std::size_t hidden) {
  for (std::size_t b = 0; b < batch; ++b) {
    float* out = y + b * hidden;
    std::fill(out, out + hidden, 0.0f);
    float count = 0.0f;
    for (std::size_t t = 0; t < tokens; ++t) {
      const float wt = mask != nullptr ? mask[b * tokens + t] : 1.0f;
      if (wt == 0.0f) continue;  // padding: skipped, so garbage or NaN there cannot leak in
      count += wt;
      const float* in = x + (b * tokens + t) * hidden;
      INFERLINE_SIMD
      for (std::size_t h = 0; h < hidden; ++h) out[h] += wt * in[h];
    }
    const float inv = 1.0f / std::max(count, 1e-9f);
    INFERLINE_SIMD
    for (std::size_t h = 0; h < hidden; ++h) out[h] *= inv;
  }
}

}  // namespace inferline::kernels
