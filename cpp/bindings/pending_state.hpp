// What the PendingInfer type (pending_infer.cpp) and its done-callback runner
// (pending_callbacks.cpp) share: the object's layout, the interned names, error helpers and the
// callback entry points. Private to those two files. Loop thread, GIL held, for everything.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace inferline::bindings {

class py_scheduler;

namespace pending_detail {

enum class state : std::uint8_t { waiting, answered, cancelled };

// One request's answer. Loop thread, GIL held (like every object of asyncio's). Tracked by
// the GC: a waiting task's wake-up callback references the task, which references this.
struct pending {
  PyObject_HEAD
  PyObject* loop;        // the loop it belongs to (owned)
  PyObject* owner;       // the Scheduler object (owned) while waiting: keeps `sched` alive
  py_scheduler* sched;   // the scheduler the request is queued in; null when not queued
  PyObject* result;      // the answer (owned), once answered
  PyObject* exception;   // the error (owned), once answered with one (or refused at submit)
  PyObject* cancel_msg;  // cancel(msg)'s message (owned), or null
  PyObject* cb0;         // the first done callback (owned), or null: most have exactly one
  PyObject* ctx0;        // its context (owned), or null
  PyObject* more;        // further callbacks: a list of (callback, context) tuples, or null
  std::uint64_t handle;
  state st;
  bool blocking;  // asyncio's _asyncio_future_blocking: set while a task is to wait on it
};

// Interned names and asyncio objects, leaked on purpose (they outlive interpreter teardown).
struct statics {
  PyObject* call_soon_name = PyUnicode_InternFromString("call_soon");
  PyObject* handler_name = PyUnicode_InternFromString("call_exception_handler");
  PyObject* context_kwnames = Py_BuildValue("(s)", "context");
  PyObject* blocking_name = PyUnicode_InternFromString("_asyncio_future_blocking");
  PyObject* get_running_loop = nullptr;  // asyncio.events._get_running_loop
  PyObject* cancelled_error = nullptr;   // asyncio.CancelledError
  PyObject* invalid_state = nullptr;     // asyncio.InvalidStateError
  // The loop last found running on thread `loop_thread` (a thread state's unique id): asking
  // asyncio again costs a getpid() system call per request.
  PyObject* running_loop = nullptr;
  std::uint64_t loop_thread = 0;
};
/// The one statics record (made at first use, never freed).
statics& st();

inline pending* as_pending(PyObject* self) { return reinterpret_cast<pending*>(self); }

/// The Python error now set, normalised, with its traceback attached; cleared. (3.12's
/// PyErr_GetRaisedException, for 3.10 and 3.11 too.)
PyObject* take_error();
/// Raises `exc` (a reference stolen; null: nothing).
void restore_error(PyObject* exc);

/// loop.call_soon(cb, p, context=ctx) (no context keyword when ctx is null); false with the
/// error set when it failed.
bool schedule_callback(pending* p, PyObject* cb, PyObject* ctx);
/// Runs (`direct`) or schedules with loop.call_soon every done callback of `p`, in the order
/// they were added; each is dropped from `p` first. A SystemExit or KeyboardInterrupt of a
/// callback is kept in *stash (the first one) for the caller to raise; other errors go to the
/// loop's exception handler.
void fire_callbacks(pending* p, bool direct, PyObject** stash);

}  // namespace pending_detail
}  // namespace inferline::bindings
