// One infer_batch call in flight: its N rows queued as N requests, the output arrays their
// answers are stacked into, and the one asyncio future answered when the call is decided.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <atomic>
#include <cstdint>
#include <vector>

#include "inferline/metrics.hpp"

namespace inferline::bindings {

/// Created by `py_scheduler::submit_many`, answered and freed by the drain (`py_core::drain`)
/// when its last row has been drained. Every row's `request::token` is `as_token(call)` and its
/// id is `first_id + row`. Touched on the event-loop thread with the GIL held only.
struct batch_call {
  /// Takes a reference to `future`; `n` rows with ids first_id..first_id+n-1.
  batch_call(pybind11::handle future, std::uint64_t first_id, std::size_t n)
      : future(pybind11::reinterpret_borrow<pybind11::object>(future)),
        first_id(first_id),
        handles(n),
        unpushed(static_cast<std::uint32_t>(n)) {}

  pybind11::object future;             ///< answered once: the stacked outputs or the first error
  std::uint64_t first_id;              ///< request id of row 0
  std::vector<std::uint64_t> handles;  ///< each row's handle, to cancel the rest at an error
  std::vector<pybind11::object> outputs;  ///< stacked [N, ...] arrays, made at the first answer
  std::size_t answered = 0;  ///< rows stacked into `outputs`
  std::size_t drained = 0;   ///< rows finished; the call is freed when all N are
  bool done = false;         ///< the future is decided (or found decided by its caller)
  outcome rest = outcome::cancelled;  ///< what rows answered after `done` are counted as
  /// Rows not yet pushed to the completion queue (each row's `request::wake_group`): the loop
  /// is woken by the last row, or a failed one, not once per batch of rows.
  std::atomic<std::uint32_t> unpushed;
};

/// The request token that names `call` (tagged in bit 0: a future pointer never has it set).
inline void* as_token(batch_call* call) noexcept {
  static_assert(alignof(batch_call) >= 2, "bit 0 of a batch_call pointer must be free");
  return reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(call) | 1u);
}

/// The call a request token names, or nullptr when the token is a single request's future.
inline batch_call* batch_call_of(void* token) noexcept {
  const auto bits = reinterpret_cast<std::uintptr_t>(token);
  return (bits & 1u) != 0 ? reinterpret_cast<batch_call*>(bits & ~std::uintptr_t{1}) : nullptr;
}

}  // namespace inferline::bindings
