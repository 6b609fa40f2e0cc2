// Per model version: priority lanes, the dynamic batcher and the worker threads that run it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"
#include "inferline/completion_queue.hpp"
#include "inferline/metrics.hpp"
#include "inferline/mpmc_queue.hpp"
#include "inferline/request.hpp"

namespace inferline {

/// Batching and capacity settings of one model version.
struct scheduler_config {
  std::string name;                       ///< for messages and logs
  std::vector<std::size_t> input_bytes;   ///< bytes of one item of each input
  std::size_t max_batch_size = 8;         ///< most items per batch (>= 1)
  std::int64_t max_queue_delay_ns = 1'000'000;  ///< wait for the oldest item before dispatch
  std::size_t max_queue_size = 1024;      ///< most items queued (not yet dispatched)
  std::size_t priority_levels = 1;        ///< lanes; priority 0 is served first
  std::size_t instances = 1;              ///< worker threads
  std::int64_t idle_spin_ns = 0;          ///< spin this long before sleeping when idle
  void* user = nullptr;                   ///< opaque owner data (the bindings' handle)
};

/// Why `prepare` refused a request.
enum class admit : std::uint8_t { ok, queue_full, stopped, bad_priority };

/// The scheduler of one model version.
///
/// Producers (`prepare` + `commit`, usually the event-loop thread) never take a lock a worker
/// holds while computing: admission is an atomic counter, the request slot comes from a
/// lock-free pool and the lanes are lock-free MPMC queues. Workers take turns forming batches
/// (one former at a time, under `form_mutex_`); the former sleeps on a condition variable that
/// producers signal only when a sleeper waits and the batch could now be dispatched: one
/// signal per batch under load, not one per request. A batch leaves when it holds
/// `max_batch_size` items or its oldest item has waited `max_queue_delay`; the wait is a timed
/// wait on that exact instant, never a polling tick.
///
/// Thread-safe unless a method says otherwise.
class model_scheduler {
 public:
  /// Creates the lanes, pools and `instances` worker threads running `model`; answers go to
  /// `completions`, which must outlive this scheduler.
  model_scheduler(scheduler_config config, std::shared_ptr<backend> model,
                  completion_queue& completions);
  /// Stops the workers (see `shutdown`). Requests still unanswered are answered first.
  ~model_scheduler();
  model_scheduler(const model_scheduler&) = delete;
  model_scheduler& operator=(const model_scheduler&) = delete;

  /// Starts the worker threads. Call once, before the first `commit`.
  void start();

  /// Reserves a slot for one item: checks the engine state, the priority and the queue bound.
  /// On `admit::ok`, `*out` is a queued slot whose `input` the caller fills before `commit`
  /// (or hands back with `abandon`). Thread-safe, lock-free.
  admit prepare(std::uint32_t priority, request** out) noexcept;
  /// Publishes a prepared request (stamps it and pushes it into its lane). Thread-safe.
  void commit(request* r, void* token, std::int64_t deadline_ns, std::uint64_t id) noexcept;
  /// Returns a prepared slot that will not be committed. Thread-safe.
  void abandon(request* r) noexcept;

  /// Asks that the request named by `handle` not be computed; `expired` marks a caller's
  /// timeout rather than a cancellation. True when it was still waiting (it will then be
  /// answered cancelled or deadline_exceeded), false when it was already dispatched,
  /// answered or the handle is stale. Thread-safe.
  bool cancel(std::uint64_t handle, bool expired) noexcept;

  /// Refuses new requests from now on (`prepare` answers `admit::stopped`). Thread-safe.
  void close() noexcept;
  /// Closes, answers every queued request `engine_stopped`, lets running batches finish and
  /// joins the workers. Blocks; idempotent. Call without holding anything a worker needs
  /// (for a Python backend: without the GIL).
  void shutdown();

  /// Runs one batch of `batch_size` items with `inputs` (one pointer per input, rows back to
  /// back; nullptr for zeros) on the calling thread, outside the queue. For warm-up. Throws
  /// what the backend throws.
  void run_direct(std::size_t batch_size, const std::vector<const std::byte*>& inputs);

  /// Finishes an answered request taken from the completion queue: counts its outcome,
  /// records its latency, releases its output block and slot. Call exactly once per answered
  /// request, after the caller has consumed `result`/`output`; `counted` is the outcome the
  /// caller saw (it differs from `result_outcome` when its own timeout answered first).
  /// Thread-safe.
  void finish(request* r, outcome counted, std::int64_t answered_ns) noexcept;

  /// Items waiting in the lanes (or in a batch being formed): a best guess under concurrency.
  std::int64_t queue_depth() const noexcept { return queued_.load(std::memory_order_relaxed); }
  /// Accepted, not yet finished.
  std::int64_t in_flight() const noexcept {
    return metrics_.in_flight.load(std::memory_order_relaxed);
  }
  /// The version's figures.
  const model_metrics& metrics() const noexcept { return metrics_; }
  /// Counts an outcome decided outside the core (e.g. invalid input refused by the bindings).
  void count(outcome o) noexcept { metrics_.count(o); }
  /// Settings this scheduler runs with.
  const scheduler_config& config() const noexcept { return config_; }
  /// The backend.
  backend& model() noexcept { return *backend_; }
  /// Bytes of one item (all inputs).
  std::size_t item_bytes() const noexcept { return item_bytes_; }
  /// True once `close` or `shutdown` was called.
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

 private:
  void worker_main(int instance);
  // Forms the next batch into `items`; false when stopping and nothing is left.
  bool form_batch(std::vector<request*>& items);
  // Moves queued requests into `items` (priority order) up to the batch size; requests that
  // are cancelled, expired or past their deadline are answered on the way.
  void pull(std::vector<request*>& items, std::int64_t now);
  void compute(std::vector<request*>& items, int instance);
  // Answers `items` and everything left in the lanes engine_stopped. Caller holds form_mutex_.
  void answer_stopped(std::span<request* const> items) noexcept;
  void notify_former(std::int64_t ready) noexcept;

  scheduler_config config_;
  std::shared_ptr<backend> backend_;
  completion_queue& completions_;
  std::size_t item_bytes_ = 0;
  std::vector<std::size_t> input_offsets_;
  std::vector<std::size_t> region_bytes_;

  model_metrics metrics_;
  std::unique_ptr<request_pool> pool_;
  std::vector<std::unique_ptr<mpmc_queue<request*>>> lanes_;
  block_pool* blocks_ = nullptr;

  // Admission and wake-up state, written by producers: kept apart from worker-side fields.
  alignas(cache_line) std::atomic<std::int64_t> queued_{0};  // admitted, not yet dispatched
  alignas(cache_line) std::atomic<std::int64_t> ready_{0};   // pushed into lanes, not pulled
  alignas(cache_line) std::atomic<std::int32_t> sleepers_{0};
  std::atomic<std::int64_t> wake_at_{1};  // ready_ level at which a sleeping former wants waking
  std::atomic<bool> closed_{false};
  std::atomic<bool> stopping_{false};

  std::mutex form_mutex_;   // one batch former at a time; never taken by producers
  std::mutex sleep_mutex_;  // pairs with sleep_cv_; producers take it only to signal a sleeper
  std::condition_variable sleep_cv_;

  std::vector<std::thread> workers_;
  std::once_flag shutdown_once_;
  bool started_ = false;
};

}  // namespace inferline
