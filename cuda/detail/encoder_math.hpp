// Math of the packed (variable-length) encoder kernels shared by host and device
// (INFERLINE_HD), so the host tests check the code the GPU runs: which sequence a packed token
// belongs to, and the running (online) softmax that attention folds key chunks into.
#pragma once

#include <cstdint>

#include "inferline/kernels/math.hpp"

namespace inferline::cuda::detail {

/// Index of the sequence holding packed token `t`: the largest i < n with offsets[i] ≤ t, for
/// nondecreasing `offsets` with offsets[0] == 0 ≤ t < offsets[n]. Binary search, O(log n).
/// Pure; thread-safe.
INFERLINE_HD int sequence_of(const std::int32_t* offsets, int n, std::int32_t t) {
  int lo = 0;
  int hi = n;  // invariant: offsets[lo] ≤ t < offsets[hi]
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= t) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/// Softmax over a stream of scores seen in chunks, without storing them: the running maximum
/// and the sum of e^(score - max). A weighted sum kept beside it is scaled by what rescale()
/// returns before the chunk's weights are added; the result is that sum divided by `sum`.
/// Value type; one per query row (not shared between threads).
struct online_softmax {
  float max = -kernels::math::bits_to_float(0x7f800000u);  ///< running max (-inf before data)
  float sum = 0.0f;                                         ///< Σ e^(score - max) so far

  /// Raises the running max to cover a chunk whose largest score is `chunk_max` (finite) and
  /// returns the factor (≤ 1) by which earlier accumulations must be scaled; `sum` is scaled
  /// here. Pure on the value; thread-compatible.
  INFERLINE_HD float rescale(float chunk_max) {
    const float next = kernels::math::max_f(max, chunk_max);
    const float factor = kernels::math::exp_f(max - next);  // e^-inf = 0 on the first chunk
    sum *= factor;
    max = next;
    return factor;
  }

  /// Weight e^(score - max) of one score of the current chunk (after rescale), added to `sum`.
  /// Thread-compatible.
  INFERLINE_HD float weight(float score) {
    const float p = kernels::math::exp_f(score - max);
    sum += p;
    return p;
  }
};

}  // namespace inferline::cuda::detail
