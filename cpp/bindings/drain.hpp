// The engine-wide completion drain (_core.Core): answers every finished request's asyncio future
// on the loop thread, and keeps each scheduler alive until its last answer is drained.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "inferline/completion_queue.hpp"
#include "loop_pump.hpp"

namespace inferline::bindings {

class py_scheduler;

/// The completion queue every scheduler of one engine answers into, and the schedulers whose
/// answers may still be in it. `drain`, `set_trace` and destruction run on the event-loop
/// thread with the GIL held; `adopt` and `reap` are safe from any thread holding the GIL.
class py_core {
 public:
  /// An empty core. GIL required.
  py_core() : pump_(std::make_shared<loop_pump>(this)) {}
  /// Shuts down every scheduler (GIL released while they stop), answers what is left.
  ~py_core();
  py_core(const py_core&) = delete;
  py_core& operator=(const py_core&) = delete;

  /// The queue workers push answered requests to. Thread-safe.
  completion_queue& queue() noexcept { return queue_; }
  /// File descriptor readable while answers wait (for loop.add_reader). Thread-safe.
  int fd() const noexcept { return queue_.fd(); }
  /// Answers every finished request's future (set_result / set_exception with the engine's
  /// exception classes; a PendingInfer natively), calls the trace hook, and finishes the
  /// request in its scheduler. Then wakes the tasks waiting on the PendingInfers answered:
  /// `wake` calls their wake-ups at once (only from the loop's reader callback, with no task
  /// running), otherwise through loop.call_soon. Returns how many. Loop thread, GIL held.
  std::size_t drain(bool wake = false);
  /// Keeps `s` alive until it is stopped and fully answered. GIL held.
  void adopt(std::shared_ptr<py_scheduler> s);
  /// The live schedulers whose model runs on the event loop (isolation "loop"). GIL held.
  std::vector<std::shared_ptr<py_scheduler>> on_loop();
  /// What runs the loop-run schedulers' batches on the event loop. Loop thread, GIL held.
  const std::shared_ptr<loop_pump>& pump() noexcept { return pump_; }
  /// Frees schedulers that only this core holds, are closed and fully answered. GIL held.
  void reap();
  /// Per-request hook fn(model, id, outcome, t_enqueue, t_dispatch, t_compute_start,
  /// t_compute_end, t_answer, batch_size), or None. Loop thread, GIL held.
  void set_trace(pybind11::object fn) { trace_ = std::move(fn); }

 private:
  completion_queue queue_;
  std::mutex mutex_;
  std::vector<std::shared_ptr<py_scheduler>> live_;
  pybind11::object trace_;
  std::shared_ptr<loop_pump> pump_;
};

}  // namespace inferline::bindings
