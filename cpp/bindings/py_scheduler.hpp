// One model version's scheduler as Python sees it (_core.Scheduler): the submit fast path that
// copies an exact array into a pooled slot, answers as numpy, stats and warm-up.
#pragma once

#include <pybind11/numpy.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "inferline/scheduler.hpp"
#include "tensor_spec.hpp"

namespace inferline::bindings {

class py_core;
class loop_pump;
struct batch_call;

/// What the core stamped on one traced request (`_core.Stamps`): steady-clock nanoseconds
/// (CLOCK_MONOTONIC, as time.monotonic_ns()), 0 for a stage the request did not reach, and the
/// batch that computed it. Filled by the drain just before the request's future is answered;
/// untraced requests have none. Loop thread, GIL held.
struct request_stamps {
  std::int64_t t_enqueue = 0;        ///< queued (submit)
  std::int64_t t_dispatch = 0;       ///< taken into a batch
  std::int64_t t_compute_start = 0;  ///< its batch started computing
  std::int64_t t_compute_end = 0;    ///< its batch finished computing
  std::int64_t t_answer = 0;         ///< drained on the loop thread
  std::uint32_t batch_size = 0;      ///< rows in the batch that computed it
  std::uint32_t instance = 0;        ///< model instance (worker) that computed it
  bool filled = false;               ///< the drain has filled these
};

/// Copies `r`'s stamps into its traced request's `request_stamps` object (`r.trace`, a
/// PyObject* whose reference submit took), drops that reference and clears `r.trace`. Called by
/// the drain only for requests with a trace. Loop thread, GIL held.
void take_stamps(request& r, std::int64_t answered_ns);

/// Owns a model_scheduler and the specs of its inputs and outputs. Every method is called with
/// the GIL held, from the event-loop thread; the workers it starts never call into it except
/// through the core's thread-safe methods.
class py_scheduler {
 public:
  /// Builds the backend for `model` (a Python callable, or a native Backend wrapped with the
  /// finite output checks when any output asks for them), the scheduler, and hands the result
  /// to `core` to keep until it is stopped and fully answered. Several inputs (or outputs) are
  /// passed to and expected from the model as a dict. Throws ValueError for an invalid config
  /// or no inputs, TypeError for a model that is neither. GIL required.
  static std::shared_ptr<py_scheduler> create(py_core& core, scheduler_config config,
                                              std::vector<tensor_spec> inputs,
                                              std::vector<tensor_spec> outputs,
                                              const pybind11::object& model);

  /// Use create(). GIL required.
  py_scheduler(completion_queue& completions, scheduler_config config,
               std::vector<tensor_spec> inputs, std::vector<tensor_spec> outputs,
               std::shared_ptr<backend> model);
  /// Shuts the scheduler down with the GIL released (a Python backend's workers need it).
  ~py_scheduler();

  /// The core scheduler.
  model_scheduler& sched() { return *sched_; }
  /// The core scheduler.
  const model_scheduler& sched() const { return *sched_; }
  /// The model version's name, for messages.
  const std::string& name() const { return name_; }

  /// Queues one item whose answer resolves `future` (see the binding's docstring for the
  /// contract). Returns the request's handle, or nullopt when `x` is not an exact C-contiguous
  /// array (or dict of them) of the declared dtypes and shapes and `converted` is false. With
  /// `converted` true such an input raises InvalidInput naming what was got and expected.
  /// `timeout_s` (seconds, > 0, or nullopt for none) is added to the core's steady clock
  /// (now_ns(), CLOCK_MONOTONIC, as Python's time.monotonic()) here. Raises InvalidInput for a
  /// NaN or Inf in a `finite` input, QueueFullError, EngineStopped, or InvalidInput for a bad
  /// priority. GIL required.
  std::optional<std::uint64_t> submit(pybind11::handle x, std::uint32_t priority,
                                      std::optional<double> timeout_s, pybind11::handle future,
                                      bool converted);

  /// As `submit`, and the drain fills `stamps` (a `_core.Stamps`) with the request's stage
  /// stamps just before answering `future`. For traced requests only: `submit` stays as it was.
  /// GIL required.
  std::optional<std::uint64_t> submit_traced(pybind11::handle x, std::uint32_t priority,
                                             std::optional<double> timeout_s,
                                             pybind11::handle future, pybind11::handle stamps,
                                             bool converted);

  /// Queues the N rows of `x` (one array [N, *shape] per input, N >= 1) as N items of one
  /// call, all or none (QueueFullError naming the call when the queue cannot take every row),
  /// answered through `future` once: with the outputs stacked [N, ...] (an array, or a dict for
  /// several outputs) when the last row is answered, or with the first row's error (the rows
  /// still queued are then cancelled). Returns the rows' handles, or nullopt when `x` is not
  /// exact rows and `converted` is false (with it, InvalidInput naming what was got and
  /// expected). Deadline, finite check and refusals as `submit`. GIL required.
  std::optional<pybind11::array_t<std::uint64_t>> submit_many(pybind11::handle x,
                                                              std::uint32_t priority,
                                                              std::optional<double> timeout_s,
                                                              pybind11::handle future,
                                                              bool converted);
  /// Cancels every request of `handles` (as `model_scheduler::cancel`). GIL required.
  void cancel_many(const pybind11::array_t<std::uint64_t>& handles, bool expired);
  /// Copies an answered row of `call` into its stacked outputs (made at the first row) and
  /// drops the row's payload. Throws std::runtime_error when undeclared outputs disagree
  /// between rows. Loop thread, GIL held.
  void stack_row(request* r, batch_call& call);
  /// The answer of a call whose every row is stacked: an array, or a dict for several outputs.
  /// GIL required.
  pybind11::object batch_value(batch_call& call) const;

  /// Moves an answered request's payload out as a Python object: the Python backend's row, or
  /// a numpy copy of a native output row (a dict for several outputs). GIL required.
  pybind11::object take_result(request* r);

  /// Runs one batch outside the queue (inputs: one array [B, ...] or None per input), the GIL
  /// released while it runs. GIL required on entry.
  void warmup(std::size_t batch_size, const pybind11::list& inputs);

  /// Counters, gauges and latency summaries (seconds) as a dict. GIL required.
  pybind11::dict stats() const;

  /// Cumulative counts at each bound (in `unit`s, e.g. 1e-9 for seconds of ns), the total
  /// count and the sum, of histogram `which` (queue_wait, compute, request or batch_size).
  /// GIL required.
  pybind11::tuple histogram_buckets(const std::string& which, const std::vector<double>& bounds,
                                    double unit) const;

 private:
  // submit, with `stamps` (nullptr: untraced) attached to the request.
  std::optional<std::uint64_t> submit_one(pybind11::handle x, std::uint32_t priority,
                                          std::optional<double> timeout_s,
                                          pybind11::handle future, PyObject* stamps,
                                          bool converted);
  pybind11::handle input_of(pybind11::handle x, const tensor_spec& t) const;
  [[noreturn]] void raise_mismatch(pybind11::handle x) const;
  // Raises the error for a refused admission (counting it); returns only for admit::ok.
  void refuse(admit a, std::uint32_t priority, std::size_t rows);
  // InvalidInput for a NaN or Inf in an input declared finite.
  void check_finite(pybind11::handle x) const;

  std::string name_;
  std::vector<tensor_spec> inputs_;
  std::vector<tensor_spec> outputs_;
  bool dict_inputs_;
  bool dict_outputs_;
  std::uint64_t next_id_ = 0;
  std::unique_ptr<model_scheduler> sched_;
  std::shared_ptr<loop_pump> pump_;  // on_loop models: woken at each submit
};

}  // namespace inferline::bindings
