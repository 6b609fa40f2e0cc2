// The awaitable a native submit returns (_core.PendingInfer): one queued request's answer as a
// coroutine-like object, so `Engine.infer`'s common path runs no Python coroutine.
#pragma once

#include <pybind11/pybind11.h>

namespace inferline::bindings {

/// Adds `PendingInfer` to the module and `Scheduler.submit_await` (a METH_FASTCALL method, no
/// pybind11 dispatch) to `scheduler_type`. Import time, GIL held; after the Scheduler class.
void register_pending(pybind11::module_& m, pybind11::handle scheduler_type);

}  // namespace inferline::bindings
