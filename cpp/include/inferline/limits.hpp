// The one table of limits and defaults for a model's batching settings, read by C++ and (through
// _core.limits / _core.defaults) by Python: no other file repeats these numbers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferline {

/// The largest values any model configuration may ask for. Constants; thread-safe.
struct limits_table {
  std::size_t max_batch_size = std::size_t{1} << 16;   ///< items per batch
  std::size_t max_queue_size = std::size_t{1} << 24;   ///< items waiting per model version
  std::size_t max_priority_levels = 16;                 ///< priority lanes
  std::size_t max_instances = 256;                      ///< worker threads per model version
  std::size_t max_ndim = 32;                            ///< dimensions of one item of a tensor
  /// Bytes a model version may allocate at load for its queue (request slots with their input
  /// storage, and the priority lanes): settings that need more are refused, naming them.
  std::size_t max_queue_memory_bytes = std::size_t{4} << 30;
  double max_execution_timeout_ms = 24.0 * 3600 * 1000;  ///< one day
  /// Summed item cost (e.g. tokens) one batch may be capped at (`max_batch_tokens`).
  std::size_t max_batch_tokens = std::size_t{1} << 30;
};

/// What a model gets for every setting it leaves out. Constants; thread-safe.
struct defaults_table {
  std::size_t max_batch_size = 8;      ///< items per batch
  double max_queue_delay_ms = 1.0;     ///< how long the oldest item waits for a fuller batch
  std::size_t max_queue_size = 1024;   ///< items waiting
  std::size_t priority_levels = 1;     ///< priority lanes (0 is served first)
  std::size_t instances = 1;           ///< worker threads
  double idle_spin_us = 0.0;           ///< an idle worker spins this long before sleeping
  double execution_timeout_ms = 0.0;   ///< a batch may compute this long; 0 = no timeout
  /// At shutdown, how long batches already computing may still finish before their workers
  /// are abandoned (their requests answered engine_stopped).
  double shutdown_grace_ms = 5000.0;
};

/// The limits. Read-only; thread-safe.
inline constexpr limits_table limits{};
/// The defaults. Read-only; thread-safe.
inline constexpr defaults_table defaults{};

static_assert(defaults.max_batch_size >= 1 && defaults.max_batch_size <= limits.max_batch_size,
              "default max_batch_size must lie within the limits");
static_assert(defaults.max_queue_size >= 1 && defaults.max_queue_size <= limits.max_queue_size,
              "default max_queue_size must lie within the limits");
static_assert(defaults.priority_levels >= 1 &&
                  defaults.priority_levels <= limits.max_priority_levels,
              "default priority_levels must lie within the limits");
static_assert(defaults.instances >= 1 && defaults.instances <= limits.max_instances,
              "default instances must lie within the limits");

/// Milliseconds or microseconds (as the defaults table writes them) to whole nanoseconds.
constexpr std::int64_t ms_to_ns(double ms) noexcept { return static_cast<std::int64_t>(ms * 1e6); }
/// See ms_to_ns.
constexpr std::int64_t us_to_ns(double us) noexcept { return static_cast<std::int64_t>(us * 1e3); }

}  // namespace inferline
