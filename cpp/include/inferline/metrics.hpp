// Per-model counters, gauges and latency histograms, recorded with atomics on the hot path.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

#include "inferline/histogram.hpp"
#include "inferline/mpmc_queue.hpp"

namespace inferline {

/// How a request ended. Every accepted request ends in exactly one of these.
enum class outcome : std::uint8_t {
  success = 0,
  queue_full,         ///< refused at admission (never accepted)
  deadline_exceeded,  ///< its deadline passed in the queue (never computed) or while computing
  cancelled,          ///< cancelled before its batch was dispatched (never computed)
  model_error,        ///< the model raised or broke its signature; its whole batch failed
  engine_stopped,     ///< refused or answered during shutdown
  invalid_input,      ///< refused at admission by input validation
  count_
};

/// Number of outcome values.
inline constexpr std::size_t outcome_count = static_cast<std::size_t>(outcome::count_);

/// Stable lower-case name of an outcome, as used in metric labels.
constexpr std::string_view outcome_name(outcome o) noexcept {
  switch (o) {
    case outcome::success: return "success";
    case outcome::queue_full: return "queue_full";
    case outcome::deadline_exceeded: return "deadline_exceeded";
    case outcome::cancelled: return "cancelled";
    case outcome::model_error: return "model_error";
    case outcome::engine_stopped: return "engine_stopped";
    case outcome::invalid_input: return "invalid_input";
    case outcome::count_: break;
  }
  return "unknown";
}

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
