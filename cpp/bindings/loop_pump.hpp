// Models run on the event loop (isolation "loop"): their batches are formed and computed on the
// loop's thread, between its other callbacks, with no worker thread and no GIL hand-over.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "inferline/clock.hpp"

namespace inferline::bindings {

class py_core;

/// Schedules the loop-run schedulers of one core on its event loop: one `loop.call_soon` while
/// work is ready (so the batch forms from every request the callbacks before it submitted, as a
/// hand-written asyncio batcher's would), and one `loop.call_later` while a batch is held for a
/// fuller one (fixed_window, latency_target). A pass drains the answers it computed itself,
/// through the engine's reader callback, without writing the completion fd. Loop thread, GIL
/// held, for every method.
class loop_pump : public std::enable_shared_from_this<loop_pump> {
 public:
  /// A pump for `core`'s schedulers; attach a loop before it runs anything.
  explicit loop_pump(py_core* core) : core_(core) {}
  /// Runs on `loop` from now on (its call_soon and call_later). After each pass it calls
  /// `after` (no arguments), which must drain the core's answers: the engine's reader
  /// callback, which also settles its own bookkeeping.
  void attach(const pybind11::object& loop, const pybind11::object& after);
  /// Stops scheduling runs; one already scheduled does nothing.
  void detach();
  /// The core is being destroyed: runs still scheduled do nothing.
  void core_gone() noexcept { core_ = nullptr; }
  /// A loop-run scheduler has queued work: schedules a run unless one is already due this
  /// iteration. A loop that refuses (closed) is reported as unraisable; what was queued is
  /// answered when the engine stops.
  void wake();

 private:
  // One pass: each loop-run scheduler forms and computes at most one batch; then schedules the
  // next pass (soon when more is ready, at the earliest due instant when a batch is held).
  void run(bool from_timer);
  void schedule_timer(std::int64_t due);

  py_core* core_;
  pybind11::object call_soon_, call_later_;
  pybind11::object soon_fn_, timer_fn_;  // callables holding this pump weakly
  pybind11::object after_;                // drains the answers after a pass
  bool soon_pending_ = false;
  std::int64_t timer_due_ = no_deadline;  // earliest timer scheduled and not yet run
};

}  // namespace inferline::bindings
