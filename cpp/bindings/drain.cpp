// The engine-wide completion drain: answers every finished request's asyncio future on the loop
// thread, and keeps each scheduler alive until its last answer is drained.
#include "drain.hpp"

#include <string>

#include "errors.hpp"
#include "inferline/clock.hpp"
#include "py_scheduler.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

// Interned method names used on the drain path.
struct names {
  py::str cancelled{"cancelled"}, set_result{"set_result"}, set_exception{"set_exception"};
  py::object invalid_state = py::module_::import("asyncio").attr("InvalidStateError");
};
names& method_names() {
  static names* n = new names();  // leaked on purpose: outlives interpreter teardown
  return *n;
}

// After a failed set_result/set_exception: a future that was already done (the caller's
// timeout or cancellation answered first) decides the outcome counted; anything else (a closed
// loop) is reported as unraisable and the request still finishes.
outcome already_answered(py::handle fut, outcome fallback) {
  if (!PyErr_ExceptionMatches(method_names().invalid_state.ptr())) {
    PyErr_WriteUnraisable(fut.ptr());
    return fallback;
  }
  PyErr_Clear();
  PyObject* c = PyObject_CallMethodNoArgs(fut.ptr(), method_names().cancelled.ptr());
  const bool cancelled = c == Py_True;
  if (c == nullptr) PyErr_Clear();
  Py_XDECREF(c);
  return cancelled ? outcome::cancelled : outcome::deadline_exceeded;
}

}  // namespace

void py_core::adopt(std::shared_ptr<py_scheduler> s) {
  std::lock_guard lock(mutex_);
  live_.push_back(std::move(s));
}

std::size_t py_core::drain() {
  request* r = queue_.take_all();
  std::size_t n = 0;
  const names& nm = method_names();
  const error_types& et = errors();
  while (r != nullptr) {
    request* next = r->next;
    auto* owner_sched = r->owner;
    py::handle fut(static_cast<PyObject*>(r->token));
    const std::int64_t now = now_ns();
    outcome counted = r->result_outcome;
    // The core keeps the owning py_scheduler alive until all its answers are drained.
    auto* ps = static_cast<py_scheduler*>(owner_sched->config().user);
    if (r->result_outcome == outcome::success) {
      // The common case costs one C-level method call; a future the caller already finished
      // (its own timeout or cancellation) answers InvalidStateError, handled below.
      PyObject* value = nullptr;
      PyObject* res = nullptr;
      try {
        value = ps ? ps->take_result(r).release().ptr() : Py_NewRef(Py_None);
        res = PyObject_CallMethodOneArg(fut.ptr(), nm.set_result.ptr(), value);
      } catch (py::error_already_set& e) {
        // Building the answer failed (e.g. no memory for its array): still one answer.
        const std::string msg = "model '" + (ps ? ps->name() : std::string("?")) +
                                "' failed: could not build the answer: " + e.what();
        PyObject* exc = PyObject_CallOneArg(et.model_error.ptr(), py::str(msg).ptr());
        res = exc ? PyObject_CallMethodOneArg(fut.ptr(), nm.set_exception.ptr(), exc) : nullptr;
        Py_XDECREF(exc);
        counted = outcome::model_error;
      }
      Py_XDECREF(value);
      if (res != nullptr) {
        Py_DECREF(res);
      } else {
        counted = already_answered(fut, counted);
      }
    } else {
      const py::object* type = &et.model_error;
      std::string prefix = "model '" + (ps ? ps->name() : std::string("?")) + "'";
      switch (r->result_outcome) {
        case outcome::deadline_exceeded: type = &et.deadline; break;
        case outcome::cancelled: type = &et.cancelled; break;
        case outcome::engine_stopped: type = &et.stopped; break;
        case outcome::model_error: prefix += " failed"; break;
        default: break;
      }
      const std::string msg = prefix + ": " + (r->error ? *r->error : std::string("error"));
      PyObject* exc = PyObject_CallOneArg(type->ptr(), py::str(msg).ptr());
      PyObject* res =
          exc ? PyObject_CallMethodOneArg(fut.ptr(), nm.set_exception.ptr(), exc) : nullptr;
      Py_XDECREF(exc);
      if (res != nullptr) {
        Py_DECREF(res);
      } else {
        counted = already_answered(fut, counted);
      }
    }
    if (trace_ && !trace_.is_none()) {
      try {
        trace_(ps ? ps->name() : std::string("?"), r->id, std::string(outcome_name(counted)),
               r->t_enqueue, r->t_dispatch, r->t_compute_start, r->t_compute_end, now,
               r->batch_size);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("inferline: request trace hook");
      }
    }
    if (r->result != nullptr) {  // not taken (the future was already done)
      Py_DECREF(static_cast<PyObject*>(r->result));
      r->result = nullptr;
    }
    owner_sched->finish(r, counted, now);
    Py_DECREF(fut.ptr());
    r = next;
    ++n;
  }
  return n;
}

void py_core::reap() {
  std::vector<std::shared_ptr<py_scheduler>> dead;
  {
    std::lock_guard lock(mutex_);
    for (auto it = live_.begin(); it != live_.end();) {
      // Only this core holds it, it is shut down and every answer has been drained.
      if (it->use_count() == 1 && (*it)->sched().closed() && (*it)->sched().in_flight() == 0) {
        dead.push_back(std::move(*it));
        it = live_.erase(it);
      } else {
        ++it;
      }
    }
  }
  dead.clear();  // destructors join (already stopped) workers with the GIL released
}

py_core::~py_core() {
  std::vector<std::shared_ptr<py_scheduler>> all;
  {
    std::lock_guard lock(mutex_);
    all = live_;
  }
  for (auto& s : all) {
    py::gil_scoped_release nogil;
    s->sched().shutdown();
  }
  drain();
  std::lock_guard lock(mutex_);
  live_.clear();
}

}  // namespace inferline::bindings
