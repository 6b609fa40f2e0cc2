// CPU softmax over the last axis: max pass, exp-and-sum pass, scale pass, each vectorised.
#include "inferline/kernels/softmax.hpp"

#include <limits>

#include "cpu_simd.hpp"
#include "inferline/kernels/math.hpp"

namespace inferline::kernels {

INFERLINE_CPU_CLONES void softmax(const float* x, float* y, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    float* out = y + r * cols;
    float mx = -std::numeric_limits<float>::infinity();
    INFERLINE_SIMD_MAX(mx)
    for (std::size_t j = 0; j < cols; ++j) mx = math::max_f(mx, in[j]);
    float sum = 0.0f;
    INFERLINE_SIMD_SUM(sum)
    for (std::size_t j = 0; j < cols; ++j) {
      const float e = math::exp_f(in[j] - mx);
      out[j] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
    INFERLINE_SIMD
    for (std::size_t j = 0; j < cols; ++j) out[j] *= inv;
  }
}

}  // namespace inferline::kernels
