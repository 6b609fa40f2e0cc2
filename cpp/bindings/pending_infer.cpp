// The awaitable a native submit returns (_core.PendingInfer): one queued request's answer,
// which is its own asyncio-compatible future. `Engine.infer`'s common path therefore runs no
// Python coroutine and makes no asyncio.Future: the task awaiting it waits on it directly, and
// the drain answers it natively and wakes that task without a loop.call_soon per request.
#include "pending_infer.hpp"

#include <cstdint>
#include <exception>
#include <optional>

#include "errors.hpp"
#include "pending_state.hpp"
#include "py_scheduler.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

using namespace pending_detail;

PyTypeObject* pending_type = nullptr;  // created once at import, never freed

// 1 when `loop` is the loop running on this thread (as asyncio.events._get_running_loop() is
// loop), 0 when not, -1 with the error set.
int on_loop_thread(PyObject* loop) {
  statics& s = st();
  const std::uint64_t thread = PyThreadState_GetID(PyThreadState_Get());
  if (loop == s.running_loop && thread == s.loop_thread) return 1;
  PyObject* running = PyObject_CallNoArgs(s.get_running_loop);
  if (running == nullptr) return -1;
  const bool same = running == loop && loop != Py_None;
  Py_DECREF(running);
  if (!same) return 0;
  Py_XSETREF(s.running_loop, Py_NewRef(loop));
  s.loop_thread = thread;
  return 1;
}

// Ends a waiting request as cancelled (by cancel(), close() or a CancelledError thrown into its
// await): cancelled in the core at once (a queued request is never computed and frees its
// slot), its callbacks scheduled. The drain's later answer is dropped. False with the error
// set when scheduling a callback raised SystemExit or KeyboardInterrupt.
bool cancel_waiting(pending* p, PyObject* msg) {
  p->st = state::cancelled;
  Py_XSETREF(p->cancel_msg, Py_XNewRef(msg));
  if (p->sched != nullptr) p->sched->sched().cancel(p->handle, false);
  p->sched = nullptr;
  Py_CLEAR(p->owner);
  PyObject* stash = nullptr;
  fire_callbacks(p, false, &stash);
  restore_error(stash);  // a KeyboardInterrupt in call_soon itself: unlikely
  return stash == nullptr;
}

// Sets the CancelledError a cancelled answer raises (with cancel()'s message, if any).
void set_cancelled_error(pending* p) {
  if (p->cancel_msg != nullptr && p->cancel_msg != Py_None) {
    PyErr_SetObject(st().cancelled_error, p->cancel_msg);
  } else {
    PyErr_SetNone(st().cancelled_error);
  }
}

// Raises the stored exception (as Future.result() does).
void set_stored_exception(pending* p) {
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(p->exception)), p->exception);
}

// -- the await protocol -----------------------------------------------------------------------

// The await's step: yields itself to the task (which then waits on it as on a future) while
// waiting; the answer (PYGEN_RETURN) or its error once done. Like asyncio.Future.__await__,
// it can be awaited any number of times.
PySendResult pending_send(PyObject* self, PyObject*, PyObject** result) {
  auto* p = as_pending(self);
  *result = nullptr;
  switch (p->st) {
    case state::waiting:
      p->blocking = true;
      *result = Py_NewRef(self);
      return PYGEN_NEXT;
    case state::cancelled:
      set_cancelled_error(p);
      return PYGEN_ERROR;
    case state::answered:
      break;
  }
  if (p->exception != nullptr) {
    set_stored_exception(p);
    return PYGEN_ERROR;
  }
  *result = Py_NewRef(p->result);
  return PYGEN_RETURN;
}

// __next__ and send(): pending_send with StopIteration carrying the answer.
PyObject* send_as_iterator(PyObject* self, PyObject* arg) {
  PyObject* result = nullptr;
  const PySendResult r = pending_send(self, arg, &result);
  if (r == PYGEN_NEXT) return result;
  if (r == PYGEN_RETURN) {
    if (result == Py_None) {
      PyErr_SetNone(PyExc_StopIteration);
    } else {
      PyObject* stop = PyObject_CallOneArg(PyExc_StopIteration, result);
      if (stop != nullptr) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
      }
    }
    Py_DECREF(result);
  }
  return nullptr;
}

PyObject* pending_iternext(PyObject* self) { return send_as_iterator(self, Py_None); }

PyObject* pending_send_method(PyObject* self, PyObject* arg) {
  return send_as_iterator(self, arg);
}

PyObject* pending_await(PyObject* self) { return Py_NewRef(self); }

// throw(exc): raised where the await is suspended. A CancelledError while waiting (its task
// was cancelled other than through this future) cancels the request in the core.
PyObject* pending_throw(PyObject* self, PyObject* args) {
  auto* p = as_pending(self);
  PyObject *typ = nullptr, *val = nullptr, *tb = nullptr;
  if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb)) return nullptr;
  if (PyExceptionInstance_Check(typ)) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(typ)), typ);
  } else if (PyExceptionClass_Check(typ)) {
    PyErr_SetObject(typ, val);
  } else {
    PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    return nullptr;
  }
  if (p->st == state::waiting && PyErr_ExceptionMatches(st().cancelled_error)) {
    PyObject* exc = take_error();
    const bool ok = cancel_waiting(p, nullptr);
    if (!ok) {
      Py_XDECREF(exc);
      return nullptr;
    }
    restore_error(exc);
  }
  return nullptr;
}

// close(): the answer will never be read; a request still waiting is cancelled in the core.
PyObject* pending_close(PyObject* self, PyObject*) {
  auto* p = as_pending(self);
  if (p->st == state::waiting && !cancel_waiting(p, nullptr)) return nullptr;
  Py_RETURN_NONE;
}

// -- the future protocol ----------------------------------------------------------------------

// True once answered; otherwise false with InvalidStateError(`not_ready`) set while waiting,
// or the CancelledError once cancelled (as asyncio.Future's result() and exception()).
bool answered_or_raise(pending* p, const char* not_ready) {
  if (p->st == state::answered) return true;
  if (p->st == state::waiting) {
    PyErr_SetString(st().invalid_state, not_ready);
  } else {
    set_cancelled_error(p);
  }
  return false;
}

PyObject* pending_result(PyObject* self, PyObject*) {
  auto* p = as_pending(self);
  if (!answered_or_raise(p, "Result is not ready.")) return nullptr;
  if (p->exception != nullptr) {
    set_stored_exception(p);
    return nullptr;
  }
  return Py_NewRef(p->result);
}

PyObject* pending_exception(PyObject* self, PyObject*) {
  auto* p = as_pending(self);
  if (!answered_or_raise(p, "Exception is not set.")) return nullptr;
  return Py_NewRef(p->exception != nullptr ? p->exception : Py_None);
}

PyObject* pending_done(PyObject* self, PyObject*) {
  return PyBool_FromLong(as_pending(self)->st != state::waiting);
}

PyObject* pending_cancelled(PyObject* self, PyObject*) {
  return PyBool_FromLong(as_pending(self)->st == state::cancelled);
}

PyObject* pending_get_loop(PyObject* self, PyObject*) {
  return Py_NewRef(as_pending(self)->loop);
}

// cancel(msg=None): True when it was waiting (the request is cancelled in the core).
PyObject* pending_cancel(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"msg", nullptr};
  PyObject* msg = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:cancel", const_cast<char**>(kwlist), &msg))
    return nullptr;
  auto* p = as_pending(self);
  if (p->st != state::waiting) Py_RETURN_FALSE;
  if (!cancel_waiting(p, msg)) return nullptr;
  Py_RETURN_TRUE;
}

// add_done_callback(fn, *, context=None): fn(self) once done, in `context` (by default a copy
// of the current one); scheduled with loop.call_soon at once when already done. FASTCALL with
// keywords: the awaiting task calls it on every request with context=..., and the tuple-and-
// dict protocol would build a kwargs dict and compare keyword names as C strings each time.
PyObject* pending_add_done_callback(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                                    PyObject* kwnames) {
  static PyObject* context_name = PyUnicode_InternFromString("context");
  if (context_name == nullptr) return nullptr;
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  PyObject* fn = nullptr;
  PyObject* ctx = Py_None;
  if (nargs == 1) {
    fn = args[0];
  } else {
    PyErr_Format(PyExc_TypeError, "add_done_callback() takes 1 positional argument (%zd given)",
                 nargs);
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, i);
    const int is_context = name == context_name ? 1 : PyObject_RichCompareBool(name, context_name, Py_EQ);
    if (is_context < 0) return nullptr;
    if (is_context == 0) {
      PyErr_Format(PyExc_TypeError, "add_done_callback() got an unexpected keyword argument %R",
                   name);
      return nullptr;
    }
    ctx = args[nargs + i];
  }
  auto* p = as_pending(self);
  PyObject* own_ctx = ctx == Py_None ? PyContext_CopyCurrent() : Py_NewRef(ctx);
  if (own_ctx == nullptr) return nullptr;
  if (p->st != state::waiting) {
    const bool ok = schedule_callback(p, fn, own_ctx);
    Py_DECREF(own_ctx);
    if (!ok) return nullptr;
    Py_RETURN_NONE;
  }
  if (p->cb0 == nullptr && p->more == nullptr) {
    p->cb0 = Py_NewRef(fn);
    p->ctx0 = own_ctx;
    Py_RETURN_NONE;
  }
  if (p->more == nullptr) {
    p->more = PyList_New(0);
    if (p->more == nullptr) {
      Py_DECREF(own_ctx);
      return nullptr;
    }
  }
  PyObject* pair = PyTuple_Pack(2, fn, own_ctx);
  Py_DECREF(own_ctx);
  if (pair == nullptr) return nullptr;
  const int rc = PyList_Append(p->more, pair);
  Py_DECREF(pair);
  if (rc < 0) return nullptr;
  Py_RETURN_NONE;
}

// remove_done_callback(fn): removes every callback equal to fn; returns how many.
PyObject* pending_remove_done_callback(PyObject* self, PyObject* fn) {
  auto* p = as_pending(self);
  Py_ssize_t removed = 0;
  if (p->cb0 != nullptr) {
    const int eq = PyObject_RichCompareBool(p->cb0, fn, Py_EQ);
    if (eq < 0) return nullptr;
    if (eq == 1) {
      Py_CLEAR(p->cb0);
      Py_CLEAR(p->ctx0);
      ++removed;
    }
  }
  if (p->more != nullptr) {
    PyObject* kept = PyList_New(0);
    if (kept == nullptr) return nullptr;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(p->more); ++i) {
      PyObject* pair = PyList_GET_ITEM(p->more, i);
      const int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(pair, 0), fn, Py_EQ);
      if (eq < 0 || (eq == 0 && PyList_Append(kept, pair) < 0)) {
        Py_DECREF(kept);
        return nullptr;
      }
      removed += eq;
    }
    Py_SETREF(p->more, kept);
  }
  return PyLong_FromSsize_t(removed);
}

// _asyncio_future_blocking, the marker by which a task waits on what an await yields, is an
// attribute of each instance only, not of the class: asyncio.isfuture() stays False, so
// ensure_future, gather and wait wrap a PendingInfer in a task, as the coroutine it also is.
bool is_blocking_name(PyObject* name) {
  PyObject* interned = st().blocking_name;
  if (name == interned) return true;
  return PyUnicode_Check(name) && PyUnicode_Compare(name, interned) == 0;
}

PyObject* pending_getattro(PyObject* self, PyObject* name) {
  if (name == st().blocking_name) return PyBool_FromLong(as_pending(self)->blocking);
  PyObject* r = PyObject_GenericGetAttr(self, name);
  if (r == nullptr && PyErr_ExceptionMatches(PyExc_AttributeError) && is_blocking_name(name)) {
    PyErr_Clear();
    return PyBool_FromLong(as_pending(self)->blocking);
  }
  return r;
}

int pending_setattro(PyObject* self, PyObject* name, PyObject* value) {
  if (!is_blocking_name(name)) return PyObject_GenericSetAttr(self, name, value);
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete _asyncio_future_blocking");
    return -1;
  }
  const int truth = PyObject_IsTrue(value);
  if (truth < 0) return -1;
  as_pending(self)->blocking = truth == 1;
  return 0;
}

PyObject* pending_repr(PyObject* self) {
  auto* p = as_pending(self);
  switch (p->st) {
    case state::waiting:
      return PyUnicode_FromFormat("<PendingInfer waiting>");
    case state::cancelled:
      return PyUnicode_FromFormat("<PendingInfer cancelled>");
    case state::answered:
      break;
  }
  if (p->exception != nullptr) {
    return PyUnicode_FromFormat("<PendingInfer exception=%R>", p->exception);
  }
  return PyUnicode_FromFormat("<PendingInfer answered>");
}

int pending_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* p = as_pending(self);
  Py_VISIT(Py_TYPE(self));  // instances of a heap type own a reference to it
  Py_VISIT(p->loop);
  Py_VISIT(p->owner);
  Py_VISIT(p->result);
  Py_VISIT(p->exception);
  Py_VISIT(p->cancel_msg);
  Py_VISIT(p->cb0);
  Py_VISIT(p->ctx0);
  Py_VISIT(p->more);
  return 0;
}

int pending_clear(PyObject* self) {
  auto* p = as_pending(self);
  Py_CLEAR(p->loop);
  Py_CLEAR(p->owner);
  p->sched = nullptr;
  Py_CLEAR(p->result);
  Py_CLEAR(p->exception);
  Py_CLEAR(p->cancel_msg);
  Py_CLEAR(p->cb0);
  Py_CLEAR(p->ctx0);
  Py_CLEAR(p->more);
  return 0;
}

void pending_dealloc(PyObject* self) {
  // Never awaited: the request stays queued and is answered (the core holds a reference, so
  // a queued request's PendingInfer is never freed before its answer).
  PyTypeObject* tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  pending_clear(self);
  PyObject_GC_Del(self);
  Py_DECREF(tp);
}

PyMethodDef pending_methods[] = {
    {"send", pending_send_method, METH_O, "Resumes the await (as a coroutine's send)."},
    {"throw", pending_throw, METH_VARARGS,
     "Raises an exception where the await is suspended; a CancelledError cancels the request "
     "in the core."},
    {"close", pending_close, METH_NOARGS,
     "Abandons the answer; a request still waiting is cancelled in the core."},
    {"result", pending_result, METH_NOARGS,
     "The answer; raises its error, CancelledError, or InvalidStateError while waiting."},
    {"exception", pending_exception, METH_NOARGS,
     "The error it was answered with, or None; as result() while waiting or cancelled."},
    {"done", pending_done, METH_NOARGS, "True once answered or cancelled."},
    {"cancelled", pending_cancelled, METH_NOARGS, "True once cancelled."},
    {"cancel", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(pending_cancel)),
     METH_VARARGS | METH_KEYWORDS,
     "cancel(msg=None): cancels the request in the core (a queued one is never computed); "
     "False when already done."},
    {"add_done_callback",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(pending_add_done_callback)),
     METH_FASTCALL | METH_KEYWORDS,
     "add_done_callback(fn, *, context=None): fn(self) once done, as asyncio.Future's."},
    {"remove_done_callback", pending_remove_done_callback, METH_O,
     "Removes every callback equal to fn; returns how many."},
    {"get_loop", pending_get_loop, METH_NOARGS, "The event loop it belongs to."},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot pending_slots[] = {
    {Py_tp_doc, const_cast<char*>(
                    "One queued request's answer (from Scheduler.submit_await): a coroutine "
                    "for asyncio (await it, any number of times, or hand it to create_task, "
                    "gather, wait_for, shield), which a task awaits as a future of the "
                    "engine's loop; it has asyncio.Future's methods (result, done, cancel, "
                    "add_done_callback, ...). Cancelling it, or the task awaiting it, cancels "
                    "the request in the core.")},
    {Py_tp_dealloc, reinterpret_cast<void*>(pending_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(pending_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(pending_clear)},
    {Py_tp_repr, reinterpret_cast<void*>(pending_repr)},
    {Py_tp_iter, reinterpret_cast<void*>(PyObject_SelfIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(pending_iternext)},
    {Py_tp_methods, pending_methods},
    {Py_tp_getattro, reinterpret_cast<void*>(pending_getattro)},
    {Py_tp_setattro, reinterpret_cast<void*>(pending_setattro)},
    {Py_am_await, reinterpret_cast<void*>(pending_await)},
    {Py_am_send, reinterpret_cast<void*>(pending_send)},
    {0, nullptr},
};

PyType_Spec pending_spec = {"inferline._core.PendingInfer", sizeof(pending), 0,
                            Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, pending_slots};

// A new PendingInfer of `loop`, waiting, GC-tracked; null with the error set.
pending* new_pending(PyObject* loop, PyObject* owner, py_scheduler* sched) {
  auto* p = PyObject_GC_New(pending, pending_type);
  if (p == nullptr) return nullptr;
  p->loop = Py_NewRef(loop);
  p->owner = Py_NewRef(owner);
  p->sched = sched;
  p->result = p->exception = p->cancel_msg = nullptr;
  p->cb0 = p->ctx0 = p->more = nullptr;
  p->handle = 0;
  p->st = state::waiting;
  p->blocking = false;
  PyObject_GC_Track(p);
  return p;
}

// Scheduler.submit_await(x, priority, loop): METH_FASTCALL, so a call costs no pybind11
// dispatch. None when the request needs the coroutine path: not on `loop`'s running thread,
// a priority that is not an exact int in uint32 range, or an input to convert first.
PyObject* submit_await(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "submit_await(x, priority, loop) takes 3 arguments");
    return nullptr;
  }
  PyObject* x = args[0];
  PyObject* loop = args[2];
  // Off the loop's thread the caller's coroutine runs on the loop instead (the core's submit
  // and the drain are for that thread).
  const int on_loop = on_loop_thread(loop);
  if (on_loop < 0) return nullptr;
  if (on_loop == 0) Py_RETURN_NONE;
  if (!PyLong_CheckExact(args[1])) Py_RETURN_NONE;  // a bool or another type: checked there
  const unsigned long priority = PyLong_AsUnsignedLong(args[1]);
  if (priority == static_cast<unsigned long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  if (priority > UINT32_MAX) Py_RETURN_NONE;
  py_scheduler* ps = nullptr;
  try {
    ps = py::cast<py_scheduler*>(py::handle(self));
  } catch (py::error_already_set& e) {
    e.restore();
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_TypeError, e.what());
    return nullptr;
  }
  pending* p = new_pending(loop, self, ps);
  if (p == nullptr) return nullptr;
  auto* obj = reinterpret_cast<PyObject*>(p);
  try {
    // The request's token is the PendingInfer itself: the drain answers it natively.
    const std::optional<std::uint64_t> h =
        ps->submit(py::handle(x), static_cast<std::uint32_t>(priority), std::nullopt,
                   py::handle(obj), false);
    if (!h) {
      Py_DECREF(obj);
      Py_RETURN_NONE;
    }
    p->handle = *h;
  } catch (py::error_already_set& e) {
    // Refused (queue full, stopped, a NaN, a priority out of range): answered with the error,
    // raised at the await.
    e.restore();
    p->exception = take_error();
    p->st = state::answered;
    p->sched = nullptr;
    Py_CLEAR(p->owner);
  } catch (const std::exception& e) {
    Py_DECREF(obj);
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  return obj;
}

PyMethodDef submit_await_def = {
    "submit_await", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(submit_await)),
    METH_FASTCALL,
    "submit_await(x, priority, loop) -> PendingInfer | None\n\n"
    "Queues `x` (no timeout) and returns its answer, a future of `loop`; errors of the "
    "submit (QueueFullError, EngineStopped, InvalidInput) are raised when it is awaited. "
    "None, with nothing queued, when the call is not on `loop`'s running thread, the priority "
    "is not an int in 0..2**32-1, or x is not exact (convert it and use submit)."};

}  // namespace

using namespace pending_detail;

bool is_pending_infer(PyObject* token) noexcept { return Py_IS_TYPE(token, pending_type); }

void register_pending(py::module_& m, py::handle scheduler_type) {
  statics& s = st();
  py::module_ events = py::module_::import("asyncio.events");
  py::module_ asyncio = py::module_::import("asyncio");
  s.get_running_loop = py::object(events.attr("_get_running_loop")).release().ptr();
  s.cancelled_error = py::object(asyncio.attr("CancelledError")).release().ptr();
  s.invalid_state = py::object(asyncio.attr("InvalidStateError")).release().ptr();
  pending_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&pending_spec));
  if (pending_type == nullptr) throw py::error_already_set();
  m.add_object("PendingInfer", py::handle(reinterpret_cast<PyObject*>(pending_type)));
  PyObject* descr =
      PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(scheduler_type.ptr()), &submit_await_def);
  if (descr == nullptr) throw py::error_already_set();
  scheduler_type.attr("submit_await") = py::reinterpret_steal<py::object>(descr);
}

}  // namespace inferline::bindings
