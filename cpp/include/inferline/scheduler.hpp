// Per model version: priority lanes, the dynamic batcher and the worker threads that run it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"
#include "inferline/completion_queue.hpp"
#include "inferline/metrics.hpp"
#include "inferline/mpmc_queue.hpp"
#include "inferline/request.hpp"
#include "inferline/scheduler_config.hpp"

namespace inferline {

/// Why `prepare` refused a request.
enum class admit : std::uint8_t { ok, queue_full, stopped, bad_priority };

/// A fitted batch cost: a batch of n items takes `per_item_ns * n + per_batch_ns` to compute.
/// A plain value; thread-safe to copy.
struct cost_line {
  double per_item_ns = 0;   ///< a: the cost each item adds
  double per_batch_ns = 0;  ///< b: the fixed cost of a batch
  bool measured = false;    ///< false until a batch was observed (then a and b mean nothing)
  /// Predicted nanoseconds for a batch of `n` items (0 while not measured). Thread-safe.
  std::int64_t predict_ns(std::size_t n) const noexcept {
    return static_cast<std::int64_t>(per_item_ns * static_cast<double>(n) + per_batch_ns);
  }
};

/// Online estimate of a model's batch cost as a line a·n+b (n items), learned from the compute
/// time of the batches it ran.
///
/// The estimator is an exponentially weighted least-squares fit: every observation (n, ns)
/// is added to the five sums Σw, Σw·n, Σw·n², Σw·y, Σw·n·y after they are all scaled by
/// 1 - 1/`memory_batches`, so a batch's weight halves after about 22 newer ones and the line
/// follows a model whose cost drifts (a warmed cache, a busier GPU). It is seeded
/// conservatively: until the first batch it is `measured == false`, and callers then neither
/// hold batches nor refuse requests. While the recent sizes hardly vary (weighted variance of
/// n below 1/4, e.g. every batch of size 1 at low load) the slope cannot be told from the
/// intercept and the fit is proportional, a = Σw·y / Σw·n and b = 0, which over-predicts
/// larger batches (the safe side for holding a batch open). A negative slope or intercept
/// (noise) falls back to the flat mean or the line through the origin. One observation is
/// clipped to 8x the current prediction (+1 µs), so a stalled batch moves the line at most
/// that far; a real cost jump is still followed within a few batches.
///
/// Thread safety: `observe` is called by workers after compute and serializes on a mutex that
/// only writers take; `line` (read by producers at admission and by the batch former) is one
/// relaxed load of both coefficients packed as two floats in one 64-bit atomic, so a reader
/// never waits and never sees a torn pair.
class batch_cost_model {
 public:
  /// Each observation scales the weight of the earlier ones by 1 - 1/memory_batches: an
  /// effective memory of about this many batches.
  static constexpr double memory_batches = 32.0;

  /// Folds in one batch of `n` (>= 1) items that took `ns` to compute. Thread-safe (writers
  /// serialize among themselves; readers are never blocked).
  void observe(std::size_t n, std::int64_t ns) noexcept;
  /// The current fit. Thread-safe, lock-free, wait-free.
  cost_line line() const noexcept;

 private:
  std::mutex write_mutex_;  // writers only; guards the sums below
  double sum_w_ = 0, sum_n_ = 0, sum_nn_ = 0, sum_y_ = 0, sum_ny_ = 0;
  // (float a, float b) packed; all ones (two NaNs) = not measured yet.
  static constexpr std::uint64_t unmeasured = ~std::uint64_t{0};
  std::atomic<std::uint64_t> packed_{unmeasured};
};

/// The scheduler of one model version.
///
/// Producers (`prepare` + `commit`, usually the event-loop thread) never take a lock a worker
/// holds while computing: admission is an atomic counter, the request slot comes from a
/// lock-free pool and the lanes are lock-free MPMC queues. Workers take turns forming batches
/// (one former at a time, under `form_mutex_`; the former is by definition an idle instance);
/// the former sleeps on a condition variable that producers signal only when a sleeper waits
/// and the batch could now be dispatched: one signal per batch under load, not one per request.
/// Timed waits are on the exact instant a batch is due, never a polling tick; an idle former
/// first spins `idle_spin_ns`, since waking a sleeping thread costs ~25-30 µs.
///
/// When a batch leaves is the config's `policy`:
/// - `work_conserving` (default): the former dispatches whatever it pulled at once (up to
///   `max_batch_size`) and sleeps only with nothing queued, so any ready item wakes it. A lone
///   request pays no window; under load every instance is busy, requests accumulate in the
///   lanes and the next instance to free up takes a batch as full as the queue allows. Best
///   latency at every load; batches are as large as the load makes them, no larger.
/// - `fixed_window` (Triton's dynamic batcher): a batch leaves when it holds `max_batch_size`
///   items or its oldest has waited `max_queue_delay`. Larger batches at low and medium load,
///   paid by every request at low load as up to one whole window of latency.
/// - `latency_target`: the scheduler learns the batch cost a·n+b online (batch_cost_model)
///   and holds a batch of n open only while `now + cost(n+1) <= oldest enqueue +
///   max_latency`, so batches grow as large as the target allows. At admission a request
///   whose predicted finish (the batches queued ahead of it, shared among the instances, plus
///   its own batch) exceeds `max_latency` is refused at once with `admit::queue_full` rather
///   than served late. Before the first batch is measured it behaves as work_conserving and
///   refuses nothing. The estimate ignores the time left on batches already computing.
///
/// Queue accounting: `queued_` (queue_depth, and the bound `max_queue_size`) counts live
/// requests only. Whoever moves a request out of `queued` uncounts it: a `cancel` (caller's
/// cancellation or timeout) at once, the batch former for what it dispatches or finds past its
/// deadline. A cancelled entry stays in its lane (a lock-free ring cannot drop from the middle)
/// and is answered when popped; while more than max_queue_size / 2 such dead entries wait, the
/// former sweeps every lane, answering the dead and carrying the live ones (in order) into a
/// per-lane list it serves before the lane, so dead entries starved behind priority-0 load do
/// not hold request slots. Every slot is answered once and released once (by `finish`).
///
/// Execution timeouts and hard shutdown: a backend never sees the real request slots. It
/// fills per-worker shadow requests (carrying each request's id, priority, deadline and
/// enqueue stamp; nothing else of the slot), whose result, output and row are copied to the real slots only by a worker that finished
/// in time. A watchdog thread (only with `execution_timeout_ns`) fails a batch that overruns
/// (model_error at the deadline), abandons its worker (detached, never joined) and starts a
/// fresh one; `shutdown` does the same, answering engine_stopped, to workers still computing
/// after its grace. An abandoned thread touches only what it holds by shared ownership (its
/// worker record, the backend, its retained input block) and discards its late answer; it
/// never touches this scheduler again, which may be destroyed before it returns.
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

  /// Starts the worker threads. Call once, before the first `commit`; after `shutdown` it
  /// does nothing.
  void start();

  /// Reserves a slot for one item: checks the engine state, the priority and the queue bound.
  /// On `admit::ok`, `*out` is a queued slot whose `input` the caller fills before `commit`
  /// (or hands back with `abandon`). Thread-safe, lock-free.
  admit prepare(std::uint32_t priority, request** out) noexcept;
  /// Reserves `n` slots for the items of one call, all or none: on `admit::ok`, `out[0..n)`
  /// are queued slots to fill and `commit` (or `abandon`) one by one; otherwise no slot is
  /// taken and the queue is as it was. The queue bound (and, under latency_target, the
  /// target) is checked for the whole call at once, as if its items arrived together; a
  /// call of more items than `max_queue_size` is always `queue_full`. Thread-safe, lock-free.
  admit prepare_many(std::uint32_t priority, std::size_t n, request** out) noexcept;
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
  /// Closes, answers every queued request `engine_stopped`, lets running batches finish for up
  /// to `grace_ns` and joins the workers. A worker still computing after that is abandoned
  /// (detached, see the class comment) and its batch answered `engine_stopped`, so this never
  /// blocks much past `grace_ns`. Idempotent (later calls return at once, whatever their
  /// grace). Call without holding anything a worker needs (for a Python backend: the GIL).
  void shutdown(std::int64_t grace_ns = ms_to_ns(defaults.shutdown_grace_ms));

  /// With `config.on_loop` only, on the one thread that drives this scheduler (the event
  /// loop's; a Python backend's GIL held): forms a batch from what is queued, as an idle
  /// instance would, and computes it on this thread when the policy lets it leave (its answers
  /// go to the completion queue). Returns `run_again` when more is ready to run at once, the
  /// steady-clock instant the batch it holds is due, or `no_deadline` with nothing queued.
  /// After `shutdown` it answers what it held engine_stopped. Throws nothing the model throws
  /// (a failing model fails its batch).
  std::int64_t run_on_loop();
  /// What `run_on_loop` returns when more work is ready now.
  static constexpr std::int64_t run_again = std::numeric_limits<std::int64_t>::min();

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
  /// Batches failed by the execution timeout. Thread-safe.
  std::uint64_t timed_out_batches() const noexcept {
    return timed_out_batches_.load(std::memory_order_relaxed);
  }
  /// Worker threads abandoned (after an execution timeout, or still computing at the end of
  /// the shutdown grace). Thread-safe.
  std::uint64_t abandoned_workers() const noexcept {
    return abandoned_workers_.load(std::memory_order_relaxed);
  }
  /// Counts an outcome decided outside the core (e.g. invalid input refused by the bindings).
  void count(outcome o) noexcept { metrics_.count(o); }
  /// The learned batch cost (latency_target only; never measured under the other policies).
  /// Thread-safe, lock-free.
  cost_line batch_cost() const noexcept { return cost_.line(); }
  /// Settings this scheduler runs with.
  const scheduler_config& config() const noexcept { return config_; }
  /// The backend.
  backend& model() noexcept { return *backend_; }
  /// Bytes of one item (all inputs).
  std::size_t item_bytes() const noexcept { return item_bytes_; }
  /// True once `close` or `shutdown` was called.
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

 private:
  struct worker;        // one worker thread's record, shared with the thread (in the .cpp)
  struct answer_chain;  // answered requests pushed to the completion queue at once

  // Starts a worker for `instance`. Caller holds workers_mutex_ (or is start()).
  std::shared_ptr<worker> spawn(int instance);
  void worker_main(const std::shared_ptr<worker>& w);
  void watchdog_main();
  // Takes `w`'s running batch from it if it is still the one observed as `phase`; true when
  // this call did (the worker is then abandoned). Caller holds workers_mutex_.
  bool take_batch(worker& w, std::uint64_t phase) noexcept;
  // Answers the batch take_batch took: `why`, with `msg`, for each request.
  void answer_taken(worker& w, outcome why,
                    const std::shared_ptr<const std::string>& msg) noexcept;
  // Forms the next batch into `items`; false when stopping and nothing is left.
  bool form_batch(std::vector<request*>& items);
  // Moves queued requests into `items` (priority order) up to the batch size and, with
  // max_batch_tokens, up to that summed cost; requests that are cancelled, expired or past
  // their deadline are answered on the way. True when the next live request did not fit the
  // token cap (it stays first in its lane's carried list): the batch is full.
  bool pull(std::vector<request*>& items, std::int64_t now);
  // With max_batch_tokens: true when `r` cannot join `items` (holding `tokens`) without
  // passing the cap; an empty batch takes anything, so an over-cap item runs alone.
  bool over_cap(const std::vector<request*>& items, std::size_t tokens,
                const request* r) const noexcept {
    return config_.max_batch_tokens != 0 && !items.empty() &&
           tokens + r->cost > config_.max_batch_tokens;
  }
  // Answers the dead entries of every lane and carries the live ones. Caller holds form_mutex_.
  void sweep(std::int64_t now);
  // True when `r` (popped or held) is live and in time; otherwise answers it into `chain`.
  bool keep(request* r, std::int64_t now, answer_chain& chain) noexcept;
  // Moves `r` out of `queued` into `to`, uncounting it; false when a cancel did so first.
  bool claim(request* r, request_state to) noexcept;
  // Computes `w`'s batch; false when the worker was abandoned meanwhile (it must then return
  // without touching this scheduler).
  bool compute(worker& w);
  // Answers `items` and everything left in the lanes engine_stopped. Caller holds form_mutex_.
  void answer_stopped(std::span<request* const> items) noexcept;
  void notify_former(std::int64_t ready) noexcept;
  // latency_target admission: can a request with `ahead` items queued before it finish within
  // max_latency by the learned cost? True while the cost is not measured.
  bool can_make_target(std::int64_t ahead) const noexcept;
  // When the batch being formed must leave (steady-clock ns); no_deadline with nothing held.
  std::int64_t batch_due(std::size_t held, std::int64_t oldest) const noexcept;

  scheduler_config config_;
  std::shared_ptr<backend> backend_;
  completion_queue& completions_;
  std::size_t item_bytes_ = 0;
  std::vector<std::size_t> input_offsets_;
  std::vector<std::size_t> region_bytes_;
  batch_cost_model cost_;  // written by workers after compute, read by producers and the former

  model_metrics metrics_;
  std::unique_ptr<request_pool> pool_;
  std::vector<std::unique_ptr<mpmc_queue<request*>>> lanes_;
  // Per lane: live entries a sweep took out of the lane, older than any still in it.
  // Guarded by form_mutex_; allocates only while sweeping (never on the plain request path).
  std::vector<std::deque<request*>> carry_;
  block_pool* blocks_ = nullptr;

  // Admission and wake-up state, written by producers: kept apart from worker-side fields.
  alignas(cache_line) std::atomic<std::int64_t> queued_{0};  // live: admitted, not dispatched
  alignas(cache_line) std::atomic<std::int64_t> ready_{0};   // in lanes or carried, not pulled
  alignas(cache_line) std::atomic<std::int64_t> dead_{0};    // cancelled, not yet answered
  alignas(cache_line) std::atomic<std::int32_t> sleepers_{0};
  std::atomic<std::int64_t> wake_at_{1};  // ready_ level at which a sleeping former wants waking
  std::atomic<bool> closed_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> timed_out_batches_{0};
  std::atomic<std::uint64_t> abandoned_workers_{0};

  std::mutex form_mutex_;   // one batch former at a time; never taken by producers
  std::mutex sleep_mutex_;  // pairs with sleep_cv_; producers take it only to signal a sleeper
  std::condition_variable sleep_cv_;

  // Guards workers_, each worker's `exited`, watch_stop_. Taken by the watchdog, by shutdown
  // and by a worker once as it exits: never on the request path.
  std::mutex workers_mutex_;
  std::condition_variable workers_cv_;  // a worker exited
  std::condition_variable watch_cv_;    // the watchdog should stop
  std::vector<std::shared_ptr<worker>> workers_;
  std::shared_ptr<worker> loop_instance_;  // config_.on_loop: the instance run_on_loop drives
  std::thread watchdog_;
  bool watch_stop_ = false;
  std::once_flag shutdown_once_;
  bool started_ = false;
};

}  // namespace inferline
