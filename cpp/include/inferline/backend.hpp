// The interface every model backend implements: run one assembled batch on a worker thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

#include "inferline/block_pool.hpp"
#include "inferline/clock.hpp"
#include "inferline/request.hpp"

namespace inferline {

/// One batch, assembled by a worker: the inputs of `size` items gathered row after row into
/// the regions of `inputs` (region i holds input i, `size * item_bytes(i)` bytes, 64-byte
/// aligned). During warm-up `requests` is empty and the inputs are zeros or samples.
struct batch {
  std::size_t size = 0;                 ///< number of items (rows)
  std::span<request* const> requests;   ///< the items, in row order; empty during warm-up
  block* inputs = nullptr;              ///< pooled input block, one region per input
  int instance = 0;                     ///< index of the worker (model instance) running it
  /// The scheduler's execution deadline for this batch (watched by its watchdog), or null
  /// when none is watched (no execution timeout; warm-up). Use through hold_clock/start_clock.
  std::atomic<std::int64_t>* deadline = nullptr;
  std::int64_t execution_timeout_ns = 0;  ///< what start_clock adds to now

  /// Stops the execution clock: a backend that must first ready its instance (a process
  /// restarting after a crash or an overrun) calls this before waiting, so the wait is not
  /// charged to this batch. No-op without a watched deadline.
  void hold_clock() const noexcept {
    // relaxed: only this batch's worker writes it while the batch runs, and the watchdog
    // only compares it with now (a look just before the store sees the earlier deadline).
    if (deadline != nullptr) deadline->store(no_deadline, std::memory_order_relaxed);
  }
  /// Starts the execution clock now (the instance is ready to compute) and returns the stamp.
  std::int64_t start_clock() const noexcept {
    const std::int64_t now = now_ns();
    if (deadline != nullptr) {
      deadline->store(execution_timeout_ns >= no_deadline - now ? no_deadline
                                                                : now + execution_timeout_ns,
                      std::memory_order_relaxed);
    }
    return now;
  }

  /// Pointer to input `i` (rows back to back).
  std::byte* input(std::size_t i) const noexcept { return inputs->region(i); }
  /// True for a warm-up batch, whose outputs are checked and dropped.
  bool warmup() const noexcept { return requests.empty(); }
};

/// Throws std::runtime_error, prefixed with `who` ("native model", "text encoder"), unless
/// `b` fits a backend built for `max_batch_size` items and `slots` per-instance slots, the
/// last of which the backend keeps for calls outside the scheduler.
inline void check_batch_fits(const batch& b, std::size_t max_batch_size, std::size_t slots,
                             const char* who) {
  if (b.size > max_batch_size) {
    throw std::runtime_error(std::string(who) + ": batch of " + std::to_string(b.size) +
                             " exceeds its max_batch_size " + std::to_string(max_batch_size));
  }
  if (b.instance < 0 || static_cast<std::size_t>(b.instance) + 1 >= slots) {
    throw std::runtime_error(std::string(who) + ": instance index out of range");
  }
}

/// A model implementation. `run` is called on a worker thread, concurrently from up to
/// `instances` workers (each with its own `batch::instance`), never with the GIL held by the
/// core. On success every request of the batch must carry its answer: either `result` (a
/// payload the bindings understand) or `output` (a retained block) plus `row`. To fail the
/// batch, throw: the exception's message becomes every item's `model_error`, and no request
/// may then carry a payload. Implementations must be thread-safe across instances.
class backend {
 public:
  virtual ~backend() = default;

  /// Computes one batch (see the class comment for the contract).
  virtual void run(batch& b) = 0;

  /// Called on each worker thread before its first batch. Default: nothing.
  virtual void on_worker_start(int /*instance*/) {}

  /// Releases a payload left in `request::result` by this backend when the request is
  /// recycled without being answered through the bindings. Default: nothing to release.
  virtual void discard_result(void* /*result*/) noexcept {}

  /// Called once by the scheduler's shutdown, after its workers stopped or were abandoned (an
  /// abandoned one may still be inside `run`): a backend that owns processes ends them here.
  /// Default: nothing.
  virtual void on_shutdown() noexcept {}

  /// Short name for metadata and logs ("python", "onnxruntime", "native").
  virtual std::string platform() const = 0;
};

}  // namespace inferline
