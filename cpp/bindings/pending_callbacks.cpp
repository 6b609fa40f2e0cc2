// PendingInfer's done callbacks: run at once from a loop callback (the drain's direct wake:
// what loop.call_soon would do a moment later) or scheduled with loop.call_soon, with errors
// reported as asyncio's Handle reports them; and the drain's entry points that answer a
// PendingInfer and wake what waits on it.
#include "pending_infer.hpp"
#include "pending_state.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace pending_detail {

statics& st() {
  static statics* s = new statics();
  return *s;
}

PyObject* take_error() {
  PyObject *t, *v, *tb;
  PyErr_Fetch(&t, &v, &tb);
  PyErr_NormalizeException(&t, &v, &tb);
  if (tb != nullptr && v != nullptr) PyException_SetTraceback(v, tb);
  Py_XDECREF(t);
  Py_XDECREF(tb);
  return v;
}

void restore_error(PyObject* exc) {
  if (exc == nullptr) return;
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
  Py_DECREF(exc);
}

bool schedule_callback(pending* p, PyObject* cb, PyObject* ctx) {
  PyObject* args[4] = {p->loop, cb, reinterpret_cast<PyObject*>(p), ctx};
  PyObject* r = PyObject_VectorcallMethod(st().call_soon_name, args, 3,
                                          ctx != nullptr ? st().context_kwnames : nullptr);
  Py_XDECREF(r);
  return r != nullptr;
}

// Moves the callbacks out of `p` (their references with them): the first and its context in
// *cb0 / *ctx0, the rest in *more (a list of (callback, context) pairs); any may be null.
static void take_callbacks(pending* p, PyObject** cb0, PyObject** ctx0, PyObject** more) {
  *cb0 = p->cb0;
  *ctx0 = p->ctx0;
  *more = p->more;
  p->cb0 = p->ctx0 = p->more = nullptr;
}

// Reports a callback's error as asyncio's Handle does: SystemExit and KeyboardInterrupt are
// kept in *stash (the first one; raised by the caller once every callback ran), anything else
// goes to loop.call_exception_handler. The Python error is cleared.
static void report_callback_error(pending* p, PyObject* cb, PyObject** stash) {
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
    if (*stash == nullptr) {
      *stash = take_error();
    } else {
      PyErr_WriteUnraisable(cb);
    }
    return;
  }
  PyObject* exc = take_error();
  auto* self = reinterpret_cast<PyObject*>(p);
  PyObject* msg = PyUnicode_FromFormat("Exception in callback %R(%R)", cb, self);
  PyObject* context = msg == nullptr ? nullptr
                                     : Py_BuildValue("{sOsOsO}", "message", msg, "exception",
                                                     exc != nullptr ? exc : Py_None, "future",
                                                     self);
  PyObject* r = context == nullptr
                    ? nullptr
                    : PyObject_CallMethodOneArg(p->loop, st().handler_name, context);
  if (r == nullptr) PyErr_WriteUnraisable(cb);
  Py_XDECREF(r);
  Py_XDECREF(context);
  Py_XDECREF(msg);
  Py_XDECREF(exc);
}

// Calls cb(p) in context `ctx` (null or None: the current one), on the loop thread from a loop
// callback with no task running: what loop.call_soon would do a moment later. A context that
// cannot be entered (it is already) has the call scheduled instead.
static void run_callback(pending* p, PyObject* cb, PyObject* ctx, PyObject** stash) {
  const bool enter = ctx != nullptr && ctx != Py_None;
  if (enter && PyContext_Enter(ctx) < 0) {
    PyErr_Clear();
    if (!schedule_callback(p, cb, ctx)) report_callback_error(p, cb, stash);
    return;
  }
  PyObject* r = PyObject_CallOneArg(cb, reinterpret_cast<PyObject*>(p));
  if (enter) {
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (PyContext_Exit(ctx) < 0) PyErr_WriteUnraisable(cb);
    PyErr_Restore(t, v, tb);
  }
  if (r == nullptr) {
    report_callback_error(p, cb, stash);
  } else {
    Py_DECREF(r);
  }
}

void fire_callbacks(pending* p, bool direct, PyObject** stash) {
  PyObject *cb0, *ctx0, *more;
  take_callbacks(p, &cb0, &ctx0, &more);
  auto one = [&](PyObject* cb, PyObject* ctx) {
    if (ctx == Py_None) ctx = nullptr;
    if (direct) {
      run_callback(p, cb, ctx, stash);
    } else if (!schedule_callback(p, cb, ctx)) {
      report_callback_error(p, cb, stash);
    }
  };
  if (cb0 != nullptr) one(cb0, ctx0);
  if (more != nullptr) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(more); ++i) {
      PyObject* pair = PyList_GET_ITEM(more, i);
      one(PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
    }
  }
  Py_XDECREF(cb0);
  Py_XDECREF(ctx0);
  Py_XDECREF(more);
}

}  // namespace pending_detail

using namespace pending_detail;

bool pending_waiting(PyObject* token) noexcept {
  return as_pending(token)->st == state::waiting;
}

void pending_answer(PyObject* token, PyObject* value, PyObject* exc,
                    std::vector<PyObject*>& woken) {
  auto* p = as_pending(token);
  if (value == nullptr && exc == nullptr) {  // building the answer (or its error) failed
    exc = take_error();
    if (exc == nullptr) {  // no error said why: still an answer, never a hang
      PyErr_SetString(PyExc_RuntimeError, "inferline: no answer could be built");
      exc = take_error();
    }
  }
  p->result = value;
  p->exception = exc;
  p->st = state::answered;
  p->sched = nullptr;
  Py_CLEAR(p->owner);
  if (p->cb0 != nullptr || p->more != nullptr) woken.push_back(Py_NewRef(token));
}

void pending_wake(std::vector<PyObject*>& woken, bool direct) {
  PyObject* stash = nullptr;
  for (PyObject* token : woken) {
    fire_callbacks(as_pending(token), direct, &stash);
    Py_DECREF(token);
  }
  woken.clear();
  if (stash != nullptr) {
    restore_error(stash);
    throw py::error_already_set();
  }
}

}  // namespace inferline::bindings
