// Models run on the event loop: their batches are formed and computed on the loop's thread.
#include "loop_pump.hpp"

#include <algorithm>
#include <vector>

#include "drain.hpp"
#include "py_scheduler.hpp"

namespace py = pybind11;

namespace inferline::bindings {

void loop_pump::attach(const py::object& loop, const py::object& after) {
  after_ = after;
  call_soon_ = loop.attr("call_soon");
  call_later_ = loop.attr("call_later");
  std::weak_ptr<loop_pump> weak = weak_from_this();
  // The callables hold the pump weakly: a run scheduled after the core is gone does nothing.
  soon_fn_ = py::cpp_function([weak] {
    if (auto p = weak.lock()) p->run(false);
  });
  timer_fn_ = py::cpp_function([weak] {
    if (auto p = weak.lock()) p->run(true);
  });
  soon_pending_ = false;
  timer_due_ = no_deadline;
}

void loop_pump::detach() {
  call_soon_ = call_later_ = soon_fn_ = timer_fn_ = after_ = py::object();
}

void loop_pump::wake() {
  if (soon_pending_ || !call_soon_) return;
  PyObject* h = PyObject_CallOneArg(call_soon_.ptr(), soon_fn_.ptr());
  if (h == nullptr) {
    PyErr_WriteUnraisable(call_soon_.ptr());
    return;
  }
  Py_DECREF(h);
  soon_pending_ = true;
}

void loop_pump::schedule_timer(std::int64_t due) {
  if (due >= timer_due_ || !call_later_) return;  // an earlier timer runs a pass anyway
  const double delay = static_cast<double>(std::max<std::int64_t>(due - now_ns(), 0)) / 1e9;
  PyObject* h = PyObject_CallFunctionObjArgs(call_later_.ptr(), py::float_(delay).ptr(),
                                             timer_fn_.ptr(), nullptr);
  if (h == nullptr) {
    PyErr_WriteUnraisable(call_later_.ptr());
    return;
  }
  Py_DECREF(h);
  timer_due_ = due;
}

void loop_pump::run(bool from_timer) {
  if (from_timer) {
    timer_due_ = no_deadline;
  } else {
    soon_pending_ = false;
  }
  if (core_ == nullptr || !call_soon_) return;
  // Copied: a model may register or unload versions while it runs.
  const std::vector<std::shared_ptr<py_scheduler>> scheds = core_->on_loop();
  bool again = false;
  std::int64_t next = no_deadline;
  // The answers computed here are drained right after, in this callback (no task is running,
  // so their tasks are woken at once): the fd need not wake the loop for them.
  core_->queue().hold_wake();
  for (const auto& s : scheds) {
    const std::int64_t r = s->sched().run_on_loop();
    if (r == model_scheduler::run_again) {
      again = true;
    } else {
      next = std::min(next, r);
    }
  }
  // The next pass is scheduled before the drain, which runs the callers' code (a woken task
  // that raises must not leave queued work without a pass).
  if (again) {
    wake();  // after the callbacks queued meanwhile
  } else if (next != no_deadline) {
    schedule_timer(next);
  }
  after_();  // take_all first: the held wake is released even if a woken task raises
}

}  // namespace inferline::bindings
