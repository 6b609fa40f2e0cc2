// The awaitable a native submit returns (_core.PendingInfer): it creates the request's asyncio
// future, queues the request, and is awaited as the future itself is, so `Engine.infer` needs
// no Python coroutine frame per request. Cancelling the await cancels the request in the core.
#include "pending_infer.hpp"

#include <cstdint>
#include <exception>
#include <optional>

#include "errors.hpp"
#include "py_scheduler.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

// One request's answer, awaitable once. Loop thread, GIL held (like every object of asyncio's).
// Not tracked by the GC: it references only its future, that future's iterator and the
// Scheduler, none of which references it once the future is answered.
struct pending {
  PyObject_HEAD
  PyObject* fut;        // the request's asyncio future (owned); null once finished or refused
  PyObject* iter;       // fut.__await__() while awaited (owned)
  PyObject* owner;      // the Scheduler object (owned): keeps `sched` alive for a cancel
  py_scheduler* sched;  // the scheduler the request is queued in
  PyObject* error;      // the exception submit raised (owned), raised at the first await
  std::uint64_t handle;
  bool finished;  // answered, raised or closed: a further await raises RuntimeError
};

PyTypeObject* pending_type = nullptr;  // created once at import, never freed

// Interned names and asyncio callables, leaked on purpose (they outlive interpreter teardown).
struct statics {
  PyObject* throw_name = PyUnicode_InternFromString("throw");
  PyObject* cancel_name = PyUnicode_InternFromString("cancel");
  PyObject* done_name = PyUnicode_InternFromString("done");
  PyObject* create_future_name = PyUnicode_InternFromString("create_future");
  PyObject* get_running_loop = nullptr;  // asyncio.events._get_running_loop
  PyObject* future_type = nullptr;       // asyncio.Future
  PyObject* base_create_future = nullptr;  // asyncio.BaseEventLoop.create_future
  // The last loop seen and how it makes futures: asyncio.Future(loop=loop) directly when its
  // create_future is BaseEventLoop's (that is all it does), else its bound create_future.
  PyObject* loop = nullptr;
  PyObject* factory = nullptr;
  PyObject* loop_kwargs = nullptr;  // {"loop": loop}, reused: Future.__init__ only reads it
  PyObject* no_args = PyTuple_New(0);
  bool direct = false;
  // The loop last found running on thread `loop_thread` (a thread state's unique id): asking
  // asyncio again costs a getpid() system call per request.
  PyObject* running_loop = nullptr;
  std::uint64_t loop_thread = 0;
};
statics& st() {
  static statics* s = new statics();
  return *s;
}

// A new future of `loop` (as loop.create_future()); null with the error set when it failed.
PyObject* new_future(PyObject* loop) {
  statics& s = st();
  if (loop != s.loop) {
    PyObject* own = PyObject_GetAttr(reinterpret_cast<PyObject*>(Py_TYPE(loop)),
                                     s.create_future_name);
    if (own == nullptr) return nullptr;
    const bool direct = own == s.base_create_future;
    Py_DECREF(own);
    PyObject* factory = direct ? Py_NewRef(s.future_type)
                               : PyObject_GetAttr(loop, s.create_future_name);
    if (factory == nullptr) return nullptr;
    PyObject* kwargs = Py_BuildValue("{sO}", "loop", loop);
    if (kwargs == nullptr) {
      Py_DECREF(factory);
      return nullptr;
    }
    Py_XSETREF(s.factory, factory);
    Py_XSETREF(s.loop_kwargs, kwargs);
    Py_XSETREF(s.loop, Py_NewRef(loop));
    s.direct = direct;
  }
  if (!s.direct) return PyObject_CallNoArgs(s.factory);
  return PyObject_Call(s.factory, s.no_args, s.loop_kwargs);
}

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

// Ends the await: drops the future. A CancelledError (the caller's task was cancelled, or a
// timeout around the await fired) cancels the request in the core at once: a queued request
// is never computed and frees its slot. The Python error, if any, is left set.
void finish(pending* p, bool cancelled) {
  if (cancelled && p->sched != nullptr) p->sched->sched().cancel(p->handle, false);
  p->finished = true;
  Py_CLEAR(p->iter);
  Py_CLEAR(p->fut);
}

bool cancelled_error_set() {
  return PyErr_Occurred() != nullptr && PyErr_ExceptionMatches(errors().cancelled.ptr());
}

// Abandons a request whose future is still pending: cancels it in the core and the future, so
// the drain's late answer is dropped. Keeps any Python error that is set.
void abandon(pending* p) {
  PyObject *t, *v, *tb;
  PyErr_Fetch(&t, &v, &tb);
  PyObject* done = PyObject_CallMethodNoArgs(p->fut, st().done_name);
  if (done == Py_False) {
    PyObject* r = PyObject_CallMethodNoArgs(p->fut, st().cancel_name);
    if (r == nullptr) PyErr_WriteUnraisable(p->fut);
    Py_XDECREF(r);
  } else if (done == nullptr) {
    PyErr_WriteUnraisable(p->fut);
  }
  Py_XDECREF(done);
  PyErr_Restore(t, v, tb);
  finish(p, true);
}

// fut.__await__(), the future's own iterator; null with the error set.
PyObject* await_iter(PyObject* fut) {
  PyAsyncMethods* am = Py_TYPE(fut)->tp_as_async;
  if (am == nullptr || am->am_await == nullptr) {
    PyErr_Format(PyExc_TypeError, "create_future() returned %.100s, which is not awaitable",
                 Py_TYPE(fut)->tp_name);
    return nullptr;
  }
  return am->am_await(fut);
}

PySendResult pending_send(PyObject* self, PyObject* arg, PyObject** result) {
  auto* p = reinterpret_cast<pending*>(self);
  *result = nullptr;
  if (p->finished) {
    PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
    return PYGEN_ERROR;
  }
  if (p->error != nullptr) {  // refused at submit: raised here, as the coroutine path does
    p->finished = true;
    PyObject* e = p->error;
    p->error = nullptr;
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(e)), e);
    Py_DECREF(e);
    return PYGEN_ERROR;
  }
  if (p->iter == nullptr) {
    // The future's own iterator: it yields the future to the task (which then waits on it)
    // and returns its result once answered.
    p->iter = await_iter(p->fut);
    if (p->iter == nullptr) {
      finish(p, false);
      return PYGEN_ERROR;
    }
  }
  const PySendResult r = PyIter_Send(p->iter, arg, result);
  if (r != PYGEN_NEXT) finish(p, r == PYGEN_ERROR && cancelled_error_set());
  return r;
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

// throw(exc): raised where the await is suspended. A CancelledError (a task cancelled before
// its wait, or woken by its cancelled future) cancels the request in the core.
PyObject* pending_throw(PyObject* self, PyObject* args) {
  auto* p = reinterpret_cast<pending*>(self);
  if (p->fut != nullptr && p->iter == nullptr) {
    p->iter = await_iter(p->fut);
    if (p->iter == nullptr) return nullptr;
  }
  Py_CLEAR(p->error);
  PyObject* res = nullptr;
  if (p->iter != nullptr) {  // the future's iterator raises the exception, normalised
    PyObject* meth = PyObject_GetAttr(p->iter, st().throw_name);
    if (meth == nullptr) return nullptr;
    res = PyObject_Call(meth, args, nullptr);
    Py_DECREF(meth);
  } else {  // finished or refused: raise it as a finished coroutine does
    PyObject *typ = nullptr, *val = nullptr, *tb = nullptr;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb)) return nullptr;
    if (PyExceptionInstance_Check(typ)) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(typ)), typ);
    } else if (PyExceptionClass_Check(typ)) {
      PyErr_SetObject(typ, val);
    } else {
      PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    }
  }
  if (res != nullptr) return res;  // never for a future's iterator; kept for any other
  if (p->fut != nullptr && cancelled_error_set()) {
    abandon(p);
  } else if (p->fut != nullptr) {
    finish(p, false);
  }
  p->finished = true;
  return nullptr;
}

// close(): the answer will never be read; a request still pending is cancelled in the core.
PyObject* pending_close(PyObject* self, PyObject*) {
  auto* p = reinterpret_cast<pending*>(self);
  Py_CLEAR(p->error);
  if (p->fut != nullptr) abandon(p);
  p->finished = true;
  Py_RETURN_NONE;
}

void pending_dealloc(PyObject* self) {
  // Never awaited: the request stays queued and is answered (the core holds the future).
  auto* p = reinterpret_cast<pending*>(self);
  PyTypeObject* tp = Py_TYPE(self);
  Py_XDECREF(p->fut);
  Py_XDECREF(p->iter);
  Py_XDECREF(p->owner);
  Py_XDECREF(p->error);
  PyObject_Free(self);
  Py_DECREF(tp);  // instances of a heap type own a reference to it
}

PyMethodDef pending_methods[] = {
    {"send", pending_send_method, METH_O, "Resumes the await (as a coroutine's send)."},
    {"throw", pending_throw, METH_VARARGS,
     "Raises an exception where the await is suspended; a CancelledError cancels the request "
     "in the core."},
    {"close", pending_close, METH_NOARGS,
     "Abandons the answer; a request still pending is cancelled in the core."},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot pending_slots[] = {
    {Py_tp_doc, const_cast<char*>(
                    "One queued request's answer (from Scheduler.submit_await): await it once, "
                    "or hand it to asyncio.create_task / gather / wait_for like a coroutine. "
                    "Cancelling the await cancels the request in the core.")},
    {Py_tp_dealloc, reinterpret_cast<void*>(pending_dealloc)},
    {Py_tp_iter, reinterpret_cast<void*>(PyObject_SelfIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(pending_iternext)},
    {Py_tp_methods, pending_methods},
    {Py_am_await, reinterpret_cast<void*>(pending_await)},
    {Py_am_send, reinterpret_cast<void*>(pending_send)},
    {0, nullptr},
};

PyType_Spec pending_spec = {"inferline._core.PendingInfer", sizeof(pending), 0,
                            Py_TPFLAGS_DEFAULT, pending_slots};

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
  PyObject* fut = new_future(loop);
  if (fut == nullptr) return nullptr;
  auto* p = PyObject_New(pending, pending_type);
  if (p == nullptr) {
    Py_DECREF(fut);
    return nullptr;
  }
  p->fut = fut;
  p->iter = nullptr;
  p->owner = Py_NewRef(self);
  p->sched = ps;
  p->error = nullptr;
  p->handle = 0;
  p->finished = false;
  try {
    const std::optional<std::uint64_t> h =
        ps->submit(py::handle(x), static_cast<std::uint32_t>(priority), std::nullopt,
                   py::handle(fut), false);
    if (!h) {
      Py_DECREF(p);
      Py_RETURN_NONE;
    }
    p->handle = *h;
  } catch (py::error_already_set& e) {
    // Refused (queue full, stopped, a NaN, a priority out of range): raised at the await.
    e.restore();
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != nullptr) PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    p->error = v;
    Py_CLEAR(p->fut);
    p->sched = nullptr;
  } catch (const std::exception& e) {
    Py_DECREF(p);
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  return reinterpret_cast<PyObject*>(p);
}

PyMethodDef submit_await_def = {
    "submit_await", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(submit_await)),
    METH_FASTCALL,
    "submit_await(x, priority, loop) -> PendingInfer | None\n\n"
    "Creates the request's future on `loop`, queues `x` (no timeout) and returns the "
    "awaitable of its answer; errors of the submit (QueueFullError, EngineStopped, "
    "InvalidInput) are raised when it is awaited. None, with nothing queued, when the call "
    "is not on `loop`'s running thread, the priority is not an int in 0..2**32-1, or x is "
    "not exact "
    "(convert it and use submit)."};

}  // namespace

void register_pending(py::module_& m, py::handle scheduler_type) {
  statics& s = st();
  py::module_ events = py::module_::import("asyncio.events");
  py::module_ asyncio = py::module_::import("asyncio");
  s.get_running_loop = py::object(events.attr("_get_running_loop")).release().ptr();
  s.future_type = py::object(asyncio.attr("Future")).release().ptr();
  s.base_create_future =
      py::object(asyncio.attr("BaseEventLoop").attr("create_future")).release().ptr();
  pending_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&pending_spec));
  if (pending_type == nullptr) throw py::error_already_set();
  m.add_object("PendingInfer", py::handle(reinterpret_cast<PyObject*>(pending_type)));
  PyObject* descr =
      PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(scheduler_type.ptr()), &submit_await_def);
  if (descr == nullptr) throw py::error_already_set();
  scheduler_type.attr("submit_await") = py::reinterpret_steal<py::object>(descr);
}

}  // namespace inferline::bindings
