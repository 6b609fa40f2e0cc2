// CPU top-k over the last axis: the k largest values of each row with their indices.
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferline::kernels {

/// For each of `rows` rows of `cols` float32, writes the `k` largest values in descending order
/// to values[r, 0..k) and their column indices to indices[r, 0..k). Order is
/// math::topk_before: NaN ranks above +inf (as torch.topk), ties go to the lower index. Requires
/// k ≤ cols. k ≤ 1024 keeps a sorted buffer and screens the row in vectorised chunks against
/// its k-th value (falling back when a row needs too many insertions); larger k uses
/// nth_element on a thread-local scratch that only grows. Single-threaded on the caller's
/// thread; thread-safe for distinct outputs.
void topk(const float* x, std::size_t rows, std::size_t cols, std::size_t k, float* values,
          std::int64_t* indices);

}  // namespace inferline::kernels
