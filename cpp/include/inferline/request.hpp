// One queued inference item, and the fixed pool its slots come from.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inferline/block_pool.hpp"
#include "inferline/clock.hpp"
#include "inferline/platform.hpp"
#include "inferline/metrics.hpp"

namespace inferline {

class model_scheduler;

/// Life of a request slot. Packed with the slot's generation in one atomic word so that a
/// stale handle can never cancel a later request that reuses the slot.
enum class request_state : std::uint8_t {
  free = 0,
  queued,      ///< in a lane or in a batch being formed
  dispatched,  ///< committed to a batch that will be computed
  cancelled,   ///< cancelled by its caller before dispatch
  expired,     ///< its caller's timeout fired before dispatch
};

/// One item: inputs copied in at submit, stamps of every stage, and its answer. Fields are
/// written by one stage at a time, handed over through the lanes, the batch and the completion
/// queue, which order the accesses; only `state_` is shared concurrently.
struct request {
  // --- set at submit -----------------------------------------------------------------------
  void* token = nullptr;           ///< the caller's handle (the bindings' asyncio future)
  std::byte* input = nullptr;      ///< this slot's input bytes: every input, back to back
  std::int64_t deadline_ns = no_deadline;
  std::uint64_t id = 0;            ///< engine-unique request id, for logs
  std::uint32_t priority = 0;
  std::uint32_t cost = 1;          ///< batch-cap cost (scheduler_config::cost_input), >= 1
  // --- stage stamps (steady clock, ns) -----------------------------------------------------
  std::int64_t t_enqueue = 0;
  std::int64_t t_dispatch = 0;
  std::int64_t t_compute_start = 0;
  std::int64_t t_compute_end = 0;
  // --- the answer --------------------------------------------------------------------------
  outcome result_outcome = outcome::success;
  std::shared_ptr<const std::string> error;  ///< message for a failed outcome (shared per batch)
  void* result = nullptr;    ///< backend payload owned by the bindings (e.g. a PyObject*)
  block* output = nullptr;   ///< native outputs: a retained block; this item is row `row`
  std::uint32_t row = 0;
  std::uint32_t batch_size = 0;  ///< size of the batch that computed it
  std::uint32_t instance = 0;    ///< the model instance (worker) that computed it
  void* trace = nullptr;  ///< a traced request's stamps object (owned by the bindings), else null
  /// Rows of one call answered together (the bindings' infer_batch): a counter of that call's
  /// rows not yet pushed to the completion queue, shared by them and set before commit. A
  /// successful row pushes without waking the loop unless it is the call's last; the last row
  /// and any failed row wake it (nothing waits on the rows before). Null: every push wakes.
  std::atomic<std::uint32_t>* wake_group = nullptr;
  // --- plumbing ----------------------------------------------------------------------------
  model_scheduler* owner = nullptr;
  request* next = nullptr;   ///< link in the completion chain
  std::uint32_t index = 0;   ///< slot index in its pool

  /// Handle naming this use of the slot: index and generation. Thread-safe.
  std::uint64_t handle() const noexcept {
    return (std::uint64_t{index} << 32) |
           static_cast<std::uint32_t>(state_.load(std::memory_order_relaxed) >> 8);
  }
  /// Current state. Thread-safe.
  request_state state() const noexcept {
    return static_cast<request_state>(state_.load(std::memory_order_acquire) & 0xff);
  }
  /// Moves queued -> `to` if the slot still holds generation `gen`; false otherwise.
  /// Thread-safe: the winner of the race between dispatch and cancel decides the answer.
  bool transition(std::uint32_t gen, request_state to) noexcept {
    std::uint64_t expected = pack(gen, request_state::queued);
    // acq_rel: the loser must see the winner's decision, the winner the request's fields.
    return state_.compare_exchange_strong(expected, pack(gen, to), std::memory_order_acq_rel,
                                          std::memory_order_acquire);
  }
  /// Generation of the current use of the slot.
  std::uint32_t generation() const noexcept {
    return static_cast<std::uint32_t>(state_.load(std::memory_order_relaxed) >> 8);
  }

  static constexpr std::uint64_t pack(std::uint32_t gen, request_state s) noexcept {
    return (std::uint64_t{gen} << 8) | static_cast<std::uint64_t>(s);
  }

  std::atomic<std::uint64_t> state_{0};
};

/// A fixed set of request slots with their input storage, allocated once. Free slots sit on a
/// lock-free LIFO stack (recently used slots are cache-warm) whose head carries an ABA tag.
/// Thread-safe.
class request_pool {
 public:
  /// Creates `capacity` slots, each with `input_bytes` of 64-byte aligned input storage.
  request_pool(std::size_t capacity, std::size_t input_bytes, model_scheduler* owner);
  ~request_pool();
  request_pool(const request_pool&) = delete;
  request_pool& operator=(const request_pool&) = delete;

  /// Takes a free slot, bumping its generation and marking it queued; nullptr when none is
  /// free. Thread-safe, lock-free.
  request* acquire() noexcept;
  /// Returns a slot. Thread-safe, lock-free.
  void release(request* r) noexcept;
  /// Slot `index` (for cancel by handle).
  request* at(std::size_t index) noexcept { return &slots_[index]; }
  /// Number of slots.
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  static constexpr std::uint32_t nil = 0xffffffffu;
  std::size_t capacity_;
  std::size_t stride_;
  std::byte* storage_ = nullptr;
  std::unique_ptr<request[]> slots_;
  std::unique_ptr<std::atomic<std::uint32_t>[]> next_;
  // head: tag in the upper 32 bits, slot index (or nil) in the lower 32.
  alignas(cache_line) std::atomic<std::uint64_t> head_{nil};
};

}  // namespace inferline
