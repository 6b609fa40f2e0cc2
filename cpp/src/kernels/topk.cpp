// CPU top-k per row: insertion buffer for small k, nth_element + sort for large k.
#include "inferline/kernels/topk.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "inferline/kernels/math.hpp"

namespace inferline::kernels {
namespace {

// Up to this k, keeping the best k in a sorted buffer wins: after the first k elements almost
// every element is rejected by one compare against the current k-th best.
constexpr std::size_t insertion_max_k = 32;

void topk_insertion(const float* row, std::size_t cols, std::size_t k, float* v,
                    std::int64_t* ix) {
  std::size_t filled = 0;
  for (std::size_t j = 0; j < cols; ++j) {
    const float val = row[j];
    const auto idx = static_cast<std::int64_t>(j);
    std::size_t pos;
    if (filled < k) {
      pos = filled++;
    } else if (math::topk_before(val, idx, v[k - 1], ix[k - 1])) {
      pos = k - 1;
    } else {
      continue;
    }
    while (pos > 0 && math::topk_before(val, idx, v[pos - 1], ix[pos - 1])) {
      v[pos] = v[pos - 1];
      ix[pos] = ix[pos - 1];
      --pos;
    }
    v[pos] = val;
    ix[pos] = idx;
  }
}

void topk_select(const float* row, std::size_t cols, std::size_t k, float* v, std::int64_t* ix) {
  // Grows once to the widest row seen on this thread, then reused: no allocation per call in
  // steady state.
  thread_local std::vector<std::int64_t> order;
  order.resize(cols);
  std::iota(order.begin(), order.end(), std::int64_t{0});
  const auto before = [row](std::int64_t a, std::int64_t b) {
    return math::topk_before(row[a], a, row[b], b);
  };
  const auto kth = order.begin() + static_cast<std::ptrdiff_t>(k);
  if (k < cols) std::nth_element(order.begin(), kth, order.end(), before);
  std::sort(order.begin(), kth, before);
  for (std::size_t i = 0; i < k; ++i) {
    ix[i] = order[i];
    v[i] = row[order[i]];
  }
}

}  // namespace

void topk(const float* x, std::size_t rows, std::size_t cols, std::size_t k, float* values,
          std::int64_t* indices) {
  if (k > cols) throw std::invalid_argument("inferline::kernels::topk: k exceeds the row length");
  if (k == 0) return;
  for (std::size_t r = 0; r < rows; ++r) {
    if (k <= insertion_max_k) {
      topk_insertion(x + r * cols, cols, k, values + r * k, indices + r * k);
    } else {
      topk_select(x + r * cols, cols, k, values + r * k, indices + r * k);
    }
  }
}

}  // namespace inferline::kernels
