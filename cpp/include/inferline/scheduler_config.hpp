// The batching and capacity settings of one model version, with their check against limits.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "inferline/limits.hpp"

namespace inferline {

/// When a formed batch leaves for an instance (see model_scheduler for the full contract).
/// A plain enum value; thread-safe to copy.
enum class batch_policy : std::uint8_t {
  /// The default. An idle instance takes what is queued at once (up to max_batch_size), so a
  /// lone request pays no window; while every instance is busy requests accumulate, and the
  /// next free instance takes a batch as full as the queue allows. `max_queue_delay` unused.
  work_conserving = 0,
  /// Triton's dynamic batcher: a batch leaves when full or when its oldest item has waited
  /// `max_queue_delay`, even while an instance sits idle.
  fixed_window,
  /// A batch is held open only while its oldest item can still finish within `max_latency`
  /// of its enqueue, by the learned batch cost a·n+b; a request that cannot make the target is
  /// refused at admission (queue_full). `max_queue_delay` unused.
  latency_target,
};

/// Stable lower-case name of a policy ("work_conserving", "fixed_window", "latency_target"),
/// as written in model.toml. Thread-safe.
constexpr std::string_view batch_policy_name(batch_policy p) noexcept {
  switch (p) {
    case batch_policy::work_conserving: return "work_conserving";
    case batch_policy::fixed_window: return "fixed_window";
    case batch_policy::latency_target: return "latency_target";
  }
  return "unknown";
}

/// The policy named `name` (see batch_policy_name), or nullopt. Thread-safe.
constexpr std::optional<batch_policy> batch_policy_from_name(std::string_view name) noexcept {
  for (batch_policy p : {batch_policy::work_conserving, batch_policy::fixed_window,
                         batch_policy::latency_target}) {
    if (batch_policy_name(p) == name) return p;
  }
  return std::nullopt;
}

/// Batching and capacity settings of one model version; defaults from limits.hpp. Plain value:
/// not thread-safe to mutate while shared.
struct scheduler_config {
  std::string name;                      ///< for messages and logs
  std::vector<std::size_t> input_bytes;  ///< bytes of one item of each input
  std::size_t max_batch_size = defaults.max_batch_size;  ///< most items per batch
  /// fixed_window only: how long the oldest item waits for a fuller batch before dispatch.
  std::int64_t max_queue_delay_ns = ms_to_ns(defaults.max_queue_delay_ms);
  std::size_t max_queue_size = defaults.max_queue_size;    ///< most items queued, not dispatched
  std::size_t priority_levels = defaults.priority_levels;  ///< lanes; priority 0 is served first
  std::size_t instances = defaults.instances;              ///< worker threads
  std::int64_t idle_spin_ns = us_to_ns(defaults.idle_spin_us);  ///< spin before sleeping idle
  /// When a batch leaves (see batch_policy); work_conserving unless set.
  batch_policy policy = batch_policy::work_conserving;
  /// latency_target only: enqueue -> computed target per request, > 0 (0 = unset, allowed for
  /// the other policies, which ignore it).
  std::int64_t max_latency_ns = 0;
  /// A batch that computes longer than this is failed (its requests answered model_error at
  /// the deadline) and its worker abandoned and replaced; 0 = no timeout.
  std::int64_t execution_timeout_ns = ms_to_ns(defaults.execution_timeout_ms);
  /// Caps a batch's summed item cost (tokens, for a text encoder): a batch never exceeds it,
  /// except a single item costing more, which then runs alone. 0 = no cap.
  std::size_t max_batch_tokens = 0;
  /// Where an item's cost comes from: -1, every item costs 1; else the index of a 4-byte
  /// (INT32 [1]) input whose value, read at submit, is the cost (values below 1 count as 1).
  int cost_input = -1;
  /// No worker threads: batches are formed and computed by `model_scheduler::run_on_loop`,
  /// on the thread that calls it (the engine's event loop), so a model that holds the GIL
  /// costs no thread hand-over. Needs instances = 1 and no execution timeout (a batch running
  /// on the caller's thread cannot be abandoned).
  bool on_loop = false;
  void* user = nullptr;  ///< opaque owner data (the bindings' handle)
};

/// Throws std::invalid_argument naming the first setting outside limits.hpp (each count must be
/// at least 1 and at most its limit; the delays at least 0; max_batch_tokens at most its limit;
/// cost_input -1 or, once input_bytes is known, a 4-byte input; the queue memory the settings
/// need,
/// `queue_memory_bytes`, at most limits.max_queue_memory_bytes). Thread-safe (reads `config`).
void validate(const scheduler_config& config);

/// Request slots a scheduler with `config` allocates: everything queued (live or cancelled and
/// not yet swept), every batch computing, and answers not yet drained by the event loop.
/// Thread-safe.
std::size_t request_slots(const scheduler_config& config) noexcept;
/// Capacity of each priority lane: a power of two holding every request slot, so a push never
/// meets a full lane whatever mix of live and dead entries it holds. Thread-safe.
std::size_t lane_capacity(const scheduler_config& config) noexcept;
/// Bytes a scheduler with `config` allocates at load for its queue: request slots with their
/// input storage, and the lanes (saturates instead of overflowing). Thread-safe.
double queue_memory_bytes(const scheduler_config& config) noexcept;

/// Throws std::invalid_argument when the batching policy settings are inconsistent: an unknown
/// policy, a negative max_latency, or latency_target without a max_latency above 0. Inline here
/// so every caller of `validate` can call it too (model_scheduler does). Thread-safe.
inline void validate_policy(const scheduler_config& config) {
  if (batch_policy_name(config.policy) == "unknown") {
    throw std::invalid_argument("policy must be work_conserving, fixed_window or latency_target");
  }
  if (config.max_latency_ns < 0) {
    throw std::invalid_argument("max_latency must be >= 0, got " +
                                std::to_string(config.max_latency_ns) + " ns");
  }
  if (config.policy == batch_policy::latency_target && config.max_latency_ns == 0) {
    throw std::invalid_argument("policy latency_target needs max_latency > 0");
  }
}

}  // namespace inferline
