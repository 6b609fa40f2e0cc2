// Host launcher for CUDA top-k over the last axis.
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferline::cuda {

/// The k largest values of each row and their indices on device pointers, same order and
/// contract as kernels::topk (NaN first, ties to the lower index, k ≤ cols). One block per row
/// selects the k winners one after another, each a block-wide arg-max over the elements ranked
/// after the previous winner: O(k·cols) work, meant for the small k of classification heads
/// (k ≤ ~100). Queued on `stream` (null: default stream). Throws std::invalid_argument for
/// k > cols and std::runtime_error on a launch failure. Thread-safe.
void topk(const float* x, std::size_t rows, std::size_t cols, std::size_t k, float* values,
          std::int64_t* indices, void* stream = nullptr);

}  // namespace inferline::cuda
