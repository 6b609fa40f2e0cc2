// CPU top-k per row: screened insertion buffer for small k, nth_element + sort for large k.
#include "inferline/kernels/topk.hpp"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "cpu_simd.hpp"
#include "inferline/kernels/math.hpp"

namespace inferline::kernels {
namespace {

// Up to this k the best k are kept in a sorted buffer (the output row itself): once it is full,
// a vectorised screen rejects whole chunks holding nothing above the current k-th value, so a
// row is read at close to memory speed and only the rare candidates are inserted (binary search
// + shift). Random rows insert about k·ln(cols/k) times. An adversarial row (ascending order
// inserts every element) exhausts an insertion budget and falls back to nth_element, whose
// O(cols) is the safe bound; so does any k above this limit.
constexpr std::size_t insertion_max_k = 1024;
constexpr std::size_t screen_chunk = 64;

// Inserts (val, idx) into the sorted buffer of `filled` entries (room for one more): a linear
// walk from the end for short buffers, binary search and a block move for long ones.
inline void insert_sorted(float val, std::int64_t idx, std::size_t filled, float* v,
                          std::int64_t* ix) {
  std::size_t pos = filled;
  if (filled <= 32) {
    while (pos > 0 && math::topk_before(val, idx, v[pos - 1], ix[pos - 1])) {
      v[pos] = v[pos - 1];
      ix[pos] = ix[pos - 1];
      --pos;
    }
  } else {
    std::size_t lo = 0;  // first position whose entry ranks after (val, idx)
    while (lo < pos) {
      const std::size_t mid = (lo + pos) / 2;
      if (math::topk_before(v[mid], ix[mid], val, idx)) {
        lo = mid + 1;
      } else {
        pos = mid;
      }
    }
    std::copy_backward(v + pos, v + filled, v + filled + 1);
    std::copy_backward(ix + pos, ix + filled, ix + filled + 1);
  }
  v[pos] = val;
  ix[pos] = idx;
}

// False when the insertion budget ran out (the caller then selects instead).
INFERLINE_CPU_CLONES bool topk_insertion(const float* row, std::size_t cols, std::size_t k,
                                         float* v, std::int64_t* ix) {
  std::size_t budget = 2 * k + cols / 8;
  std::size_t j = 0;
  for (; j < k; ++j) insert_sorted(row[j], static_cast<std::int64_t>(j), j, v, ix);
  while (j < cols) {
    const std::size_t end = std::min(cols, j + screen_chunk);
    // A later element beats the k-th entry only if it is larger or NaN: an equal value has a
    // larger index and ranks after it.
    const float threshold = v[k - 1];
    unsigned candidates = 0;
    INFERLINE_SIMD_OR(candidates)
    for (std::size_t i = j; i < end; ++i) {
      candidates |= static_cast<unsigned>(row[i] > threshold) |
                    static_cast<unsigned>(math::is_nan(row[i]));
    }
    if (candidates != 0) {
      for (std::size_t i = j; i < end; ++i) {
        const auto idx = static_cast<std::int64_t>(i);
        if (math::topk_before(row[i], idx, v[k - 1], ix[k - 1])) {
          if (budget-- == 0) return false;
          insert_sorted(row[i], idx, k - 1, v, ix);
        }
      }
    }
    j = end;
  }
  return true;
}

struct entry {
  float value;
  std::int64_t index;
};

void topk_select(const float* row, std::size_t cols, std::size_t k, float* v, std::int64_t* ix) {
  // (value, index) pairs side by side, so the selection compares without chasing indices into
  // the row. Grows once to the widest row seen on this thread, then reused: no allocation per
  // call in steady state.
  thread_local std::vector<entry> items;
  items.resize(cols);
  for (std::size_t i = 0; i < cols; ++i) items[i] = {row[i], static_cast<std::int64_t>(i)};
  const auto before = [](const entry& a, const entry& b) {
    return math::topk_before(a.value, a.index, b.value, b.index);
  };
  const auto kth = items.begin() + static_cast<std::ptrdiff_t>(k);
  if (k < cols) std::nth_element(items.begin(), kth, items.end(), before);
  std::sort(items.begin(), kth, before);
  for (std::size_t i = 0; i < k; ++i) {
    v[i] = items[i].value;
    ix[i] = items[i].index;
  }
}

}  // namespace

void topk(const float* x, std::size_t rows, std::size_t cols, std::size_t k, float* values,
          std::int64_t* indices) {
  if (k > cols) throw std::invalid_argument("inferline::kernels::topk: k exceeds the row length");
  if (k == 0) return;
  for (std::size_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    float* v = values + r * k;
    std::int64_t* ix = indices + r * k;
    if (k > insertion_max_k || !topk_insertion(row, cols, k, v, ix)) {
      topk_select(row, cols, k, v, ix);
    }
  }
}

}  // namespace inferline::kernels
