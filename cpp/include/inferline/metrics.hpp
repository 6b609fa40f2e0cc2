// Per-model counters, gauges and latency histograms, recorded with atomics on the hot path.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "inferline/histogram.hpp"
#include "inferline/outcome.hpp"
#include "inferline/platform.hpp"

namespace inferline {

/// The figures of one model version. Writers (producers, workers, the completion drain) use
/// relaxed atomics: the values are statistics, ordering nothing. Readers see each figure
/// without stopping writers. Thread-safe.
struct model_metrics {
  /// Counts a request outcome. Thread-safe.
  void count(outcome o) noexcept {
    requests[static_cast<std::size_t>(o)].fetch_add(1, std::memory_order_relaxed);
  }

  // Counters are on their own cache line apart from the gauges producers touch.
  alignas(cache_line) std::array<std::atomic<std::uint64_t>, outcome_count> requests{};
  std::atomic<std::uint64_t> batches{0};         ///< batches computed (warm-up excluded)
  std::atomic<std::uint64_t> items_computed{0};  ///< items in those batches
  alignas(cache_line) std::atomic<std::int64_t> in_flight{0};  ///< accepted, not yet answered
  histogram queue_wait_ns;  ///< enqueue -> dispatched to a batch
  histogram compute_ns;     ///< per batch: backend call
  histogram request_ns;     ///< enqueue -> answered to the caller
  histogram batch_size;     ///< items per computed batch
};

}  // namespace inferline
