// The awaitable a native submit returns (_core.PendingInfer): one queued request's answer, an
// asyncio-compatible future of its own, so `Engine.infer`'s common path runs no Python
// coroutine and makes no asyncio.Future.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

namespace inferline::bindings {

/// Adds `PendingInfer` to the module and `Scheduler.submit_await` (a METH_FASTCALL method, no
/// pybind11 dispatch) to `scheduler_type`. Import time, GIL held; after the Scheduler class.
void register_pending(pybind11::module_& m, pybind11::handle scheduler_type);

/// True when a request's token is a PendingInfer (answered by `pending_answer`, not through
/// set_result). GIL held.
bool is_pending_infer(PyObject* token) noexcept;

/// True while the PendingInfer `token` waits for its answer (not cancelled). GIL held.
bool pending_waiting(PyObject* token) noexcept;

/// Answers the waiting PendingInfer `token` with `value` or, when null, `exc` (references
/// stolen; both null: the Python error now set). A new reference to it is appended to `woken`
/// when it has done callbacks to run (a task waiting on it). Loop thread, GIL held.
void pending_answer(PyObject* token, PyObject* value, PyObject* exc,
                    std::vector<PyObject*>& woken);

/// Runs the done callbacks of the PendingInfers in `woken` and drops its references (clears
/// it). `direct`: called at once, each in its context, as loop.call_soon would a moment later;
/// only from a loop callback with no task running. Otherwise they go through loop.call_soon.
/// Errors go to the loop's exception handler; a SystemExit or KeyboardInterrupt is raised
/// (py::error_already_set) once every callback ran. Loop thread, GIL held.
void pending_wake(std::vector<PyObject*>& woken, bool direct);

}  // namespace inferline::bindings
