// The engine-wide completion drain: answers every finished request's asyncio future on the loop
// thread, and keeps each scheduler alive until its last answer is drained.
#include "drain.hpp"

#include <string>

#include "batch_call.hpp"
#include "errors.hpp"
#include "inferline/clock.hpp"
#include "pending_infer.hpp"
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

const std::string& unknown_model() {
  static const std::string* s = new std::string("?");  // leaked on purpose, as method_names
  return *s;
}

// The exception a failed request is answered with (type by outcome, message naming the model).
PyObject* error_for(const request& r, const std::string& model) {
  const error_types& et = errors();
  const py::object* type = &et.model_error;
  std::string prefix = "model '" + model + "'";
  switch (r.result_outcome) {
    case outcome::deadline_exceeded: type = &et.deadline; break;
    case outcome::cancelled: type = &et.cancelled; break;
    case outcome::engine_stopped: type = &et.stopped; break;
    case outcome::model_error: prefix += " failed"; break;
    default: break;
  }
  const std::string msg = prefix + ": " + (r.error ? *r.error : std::string("error"));
  return PyObject_CallOneArg(type->ptr(), py::str(msg).ptr());
}

// fut.set_result(value) (or set_exception); false with the Python error set when it failed.
bool answer(py::handle fut, const py::str& method, PyObject* value) {
  if (value == nullptr) return false;
  PyObject* res = PyObject_CallMethodOneArg(fut.ptr(), method.ptr(), value);
  Py_XDECREF(res);
  return res != nullptr;
}

// A ModelError for an answer that could not be built (e.g. no memory for its array).
PyObject* unbuildable(const std::string& model, const char* why) {
  const std::string msg = "model '" + model + "' failed: could not build the answer: " + why;
  return PyObject_CallOneArg(errors().model_error.ptr(), py::str(msg).ptr());
}

// Answers a single request's PendingInfer natively (no set_result, no call_soon): its
// callbacks wait in `woken`. Returns the outcome to count.
outcome answer_pending(request* r, py_scheduler* ps, const std::string& model,
                       std::vector<PyObject*>& woken) {
  auto* token = static_cast<PyObject*>(r->token);
  // Cancelled first (by its task, cancel() or close()): the answer is dropped.
  if (!pending_waiting(token)) return outcome::cancelled;
  outcome counted = r->result_outcome;
  PyObject* value = nullptr;
  PyObject* exc = nullptr;
  if (r->result_outcome == outcome::success) {
    try {
      value = ps ? ps->take_result(r).release().ptr() : Py_NewRef(Py_None);
    } catch (py::error_already_set& e) {
      exc = unbuildable(model, e.what());
      counted = outcome::model_error;
    }
  } else {
    exc = error_for(*r, model);
  }
  pending_answer(token, value, exc, woken);
  return counted;
}

// Answers a single request's future; returns the outcome to count.
outcome answer_single(request* r, py_scheduler* ps, const std::string& model,
                      std::vector<PyObject*>& woken) {
  if (is_pending_infer(static_cast<PyObject*>(r->token))) {
    return answer_pending(r, ps, model, woken);
  }
  const names& nm = method_names();
  py::handle fut(static_cast<PyObject*>(r->token));
  outcome counted = r->result_outcome;
  bool ok = false;
  if (r->result_outcome == outcome::success) {
    // The common case costs one C-level method call; a future the caller already finished
    // (its own timeout or cancellation) answers InvalidStateError, handled below.
    try {
      py::object value = ps ? ps->take_result(r) : py::none();
      ok = answer(fut, nm.set_result, value.ptr());
    } catch (py::error_already_set& e) {
      PyObject* exc = unbuildable(model, e.what());
      ok = answer(fut, nm.set_exception, exc);
      Py_XDECREF(exc);
      counted = outcome::model_error;
    }
  } else {
    PyObject* exc = error_for(*r, model);
    ok = answer(fut, nm.set_exception, exc);
    Py_XDECREF(exc);
  }
  return ok ? counted : already_answered(fut, counted);
}

// Answers one row of a batch call: stacks a success, decides the call at its last row or its
// first failure (cancelling the rows still queued). Returns the outcome to count for the row.
outcome answer_row(batch_call& call, request* r, py_scheduler* ps, const std::string& model) {
  const names& nm = method_names();
  if (call.done) return r->result_outcome == outcome::success ? call.rest : r->result_outcome;
  PyObject* exc = nullptr;
  outcome counted = r->result_outcome;
  if (r->result_outcome == outcome::success) {
    try {
      ps->stack_row(r, call);
      if (++call.answered < call.handles.size()) return outcome::success;
      py::object value = ps->batch_value(call);
      call.done = true;
      call.outputs.clear();
      if (answer(call.future, nm.set_result, value.ptr())) return outcome::success;
      call.rest = already_answered(call.future, outcome::success);
      return call.rest;
    } catch (py::error_already_set& e) {
      exc = unbuildable(model, e.what());
      counted = outcome::model_error;
    } catch (const std::exception& e) {
      exc = unbuildable(model, e.what());
      counted = outcome::model_error;
    }
  } else {
    exc = error_for(*r, model);
  }
  // The first failure decides the call: its rows still waiting are not computed.
  call.done = true;
  call.outputs.clear();
  for (std::uint64_t h : call.handles) ps->sched().cancel(h, false);
  const bool ok = answer(call.future, nm.set_exception, exc);
  Py_XDECREF(exc);
  if (!ok) counted = call.rest = already_answered(call.future, counted);
  return counted;
}

}  // namespace

void py_core::adopt(std::shared_ptr<py_scheduler> s) {
  std::lock_guard lock(mutex_);
  live_.push_back(std::move(s));
}

std::size_t py_core::drain(bool wake) {
  request* r = queue_.take_all();
  std::size_t n = 0;
  // PendingInfers answered: their tasks are woken once every request here is finished in its
  // scheduler, so a woken caller sees its request's counts settled.
  std::vector<PyObject*> woken;
  while (r != nullptr) {
    request* next = r->next;
    auto* owner_sched = r->owner;
    const std::int64_t now = now_ns();
    // The core keeps the owning py_scheduler alive until all its answers are drained.
    auto* ps = static_cast<py_scheduler*>(owner_sched->config().user);
    const std::string& model = ps ? ps->name() : unknown_model();
    batch_call* call = batch_call_of(r->token);
    if (r->trace != nullptr) take_stamps(*r, now);  // traced requests only (submit_traced)
    const outcome counted = call != nullptr && ps != nullptr ? answer_row(*call, r, ps, model)
                                                             : answer_single(r, ps, model, woken);
    if (trace_ && !trace_.is_none()) {
      try {
        trace_(model, r->id, std::string(outcome_name(counted)), r->t_enqueue, r->t_dispatch,
               r->t_compute_start, r->t_compute_end, now, r->batch_size);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("inferline: request trace hook");
      }
    }
    if (r->result != nullptr) {  // not taken (the future was already done)
      Py_DECREF(static_cast<PyObject*>(r->result));
      r->result = nullptr;
    }
    owner_sched->finish(r, counted, now);
    if (call == nullptr) {
      Py_DECREF(static_cast<PyObject*>(r->token));  // the reference submit took
    } else if (++call->drained == call->handles.size()) {
      delete call;  // every row answered: the call (and its future reference) goes
    }
    r = next;
    ++n;
  }
  if (!woken.empty()) pending_wake(woken, wake);
  return n;
}

std::vector<std::shared_ptr<py_scheduler>> py_core::on_loop() {
  std::vector<std::shared_ptr<py_scheduler>> out;
  std::lock_guard lock(mutex_);
  for (const auto& s : live_) {
    if (s->sched().config().on_loop) out.push_back(s);
  }
  return out;
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
  pump_->core_gone();
  pump_->detach();
  std::vector<std::shared_ptr<py_scheduler>> all;
  {
    std::lock_guard lock(mutex_);
    all = live_;
  }
  for (auto& s : all) {
    py::gil_scoped_release nogil;
    s->sched().shutdown();
  }
  try {
    drain(false);
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable("inferline: answering the last requests");
  }
  std::lock_guard lock(mutex_);
  live_.clear();
}

}  // namespace inferline::bindings
