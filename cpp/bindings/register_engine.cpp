// Engine bindings: the exception classes, the completion drain (Core) and the per-model
// scheduler handle (Scheduler). Declarations only; the logic lives in drain.cpp,
// py_scheduler.cpp, pending_infer.cpp, python_backend.cpp and checked_backend.cpp.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "drain.hpp"
#include "errors.hpp"
#include "inferline/backend.hpp"
#include "inferline/process_backend.hpp"
#include "pending_infer.hpp"
#include "py_scheduler.hpp"
#include "tensor_spec.hpp"

namespace py = pybind11;

namespace inferline::bindings {

void register_engine(py::module_& m) {
  m.def(
      "set_error_types",
      [](py::object queue_full, py::object deadline, py::object cancelled, py::object model_error,
         py::object stopped, py::object invalid) {
        errors() = {std::move(queue_full), std::move(deadline),  std::move(cancelled),
                    std::move(model_error), std::move(stopped), std::move(invalid)};
      },
      py::arg("queue_full"), py::arg("deadline"), py::arg("cancelled"), py::arg("model_error"),
      py::arg("stopped"), py::arg("invalid"),
      "Sets the Python exception classes the core raises (called once by the package).");

  py::class_<backend, std::shared_ptr<backend>>(m, "Backend",
                                                "A native model backend (opaque handle).")
      .def_property_readonly("platform", &backend::platform);

  py::class_<process_backend, backend, std::shared_ptr<process_backend>>(
      m, "ProcessBackend", "Model instances in child processes fed through shared memory.")
      .def(py::init([](std::string model, std::vector<std::string> argv,
                       std::vector<std::size_t> input_bytes, std::vector<std::size_t> output_bytes,
                       std::size_t max_batch_size, std::size_t instances,
                       double execution_timeout_ms, double start_timeout_s, double stop_grace_s) {
             process_config c{std::move(model), std::move(argv), std::move(input_bytes),
                              std::move(output_bytes), max_batch_size, instances,
                              static_cast<std::int64_t>(execution_timeout_ms * 1e6),
                              static_cast<std::int64_t>(start_timeout_s * 1e9),
                              static_cast<std::int64_t>(stop_grace_s * 1e9)};
             py::gil_scoped_release nogil;  // waits for the children to load their models
             return std::make_shared<process_backend>(std::move(c));
           }),
           py::arg("model"), py::arg("argv"), py::arg("input_bytes"), py::arg("output_bytes"),
           py::arg("max_batch_size"), py::arg("instances"), py::arg("execution_timeout_ms"),
           py::arg("start_timeout_s"), py::arg("stop_grace_s"))
      .def_property_readonly("pids", &process_backend::pids,
                             "Each instance's child pid (-1 while none runs).")
      .def_property_readonly("restarts", &process_backend::restarts)
      .def(
          "shutdown",
          [](process_backend& b) {
            py::gil_scoped_release nogil;  // waits up to the grace for the children to exit
            b.on_shutdown();
          },
          "Ends every child (SIGTERM, then SIGKILL after the grace); later batches fail.");

  py::class_<py_core>(m, "Core", "Engine-wide completion queue and drain (private).")
      .def(py::init<>())
      .def_property_readonly("fd", &py_core::fd,
                             "File descriptor readable when answers wait (add_reader it).")
      .def("drain", &py_core::drain, py::arg("wake") = false,
           "Answers every finished request's future; returns how many. Loop thread only. "
           "wake=True (the loop's reader callback only, no task running) wakes the tasks "
           "waiting on answered PendingInfers at once rather than through loop.call_soon.")
      .def(
          "attach_loop",
          [](py_core& c, const py::object& loop, const py::object& after) {
            c.pump()->attach(loop, after);
          },
          py::arg("loop"), py::arg("after"),
          "Runs the batches of models with isolation 'loop' on `loop` (its thread), then "
          "calls after(), which must drain the answers (as the loop's reader callback does).")
      .def(
          "detach_loop", [](py_core& c) { c.pump()->detach(); },
          "Stops running loop-isolated batches (the engine stopped).")
      .def("reap", &py_core::reap, "Frees schedulers that are stopped and fully answered.")
      .def("set_trace", &py_core::set_trace, py::arg("fn").none(true),
           "Per-request hook fn(model, id, outcome, t_enqueue, t_dispatch, t_compute_start, "
           "t_compute_end, t_answer, batch_size) (ns stamps), or None.");

  py::class_<request_stamps>(m, "Stamps",
                             "One traced request's stage stamps (steady-clock ns, 0 for a "
                             "stage not reached), filled by the drain before its answer.")
      .def(py::init<>())
      .def_readonly("t_enqueue", &request_stamps::t_enqueue)
      .def_readonly("t_dispatch", &request_stamps::t_dispatch)
      .def_readonly("t_compute_start", &request_stamps::t_compute_start)
      .def_readonly("t_compute_end", &request_stamps::t_compute_end)
      .def_readonly("t_answer", &request_stamps::t_answer)
      .def_readonly("batch_size", &request_stamps::batch_size)
      .def_readonly("instance", &request_stamps::instance)
      .def_readonly("filled", &request_stamps::filled);

  py::class_<py_scheduler, std::shared_ptr<py_scheduler>>(m, "Scheduler",
                                                          "One model version's batcher (private).")
      .def(py::init([](py_core& core, const scheduler_config& config,
                       std::vector<tensor_spec> inputs, std::vector<tensor_spec> outputs,
                       const py::object& model) {
             return py_scheduler::create(core, config, std::move(inputs), std::move(outputs),
                                         model);
           }),
           py::arg("core"), py::arg("config"), py::arg("inputs"), py::arg("outputs"),
           py::arg("model"),
           "Several inputs (outputs) are passed to (expected from) the model as a dict.")
      .def("start", [](py_scheduler& s) { s.sched().start(); })
      .def("submit", &py_scheduler::submit, py::arg("x"), py::arg("priority"),
           py::arg("timeout").none(true), py::arg("future"), py::kw_only(),
           py::arg("converted") = false,
           "Queues one item and returns its handle; None when x is not an exact C-contiguous "
           "array (or dict of them) of the declared dtypes and shapes: convert it and call "
           "again with converted=True, which raises InvalidInput naming what was got and "
           "expected instead. timeout: seconds (> 0) or None; the deadline is taken on the "
           "core's steady clock (CLOCK_MONOTONIC, as time.monotonic()) inside this call. "
           "Raises InvalidInput for NaN/Inf in a finite input or a bad priority, "
           "QueueFullError, EngineStopped.")
      .def("submit_traced", &py_scheduler::submit_traced, py::arg("x"), py::arg("priority"),
           py::arg("timeout").none(true), py::arg("future"), py::arg("stamps"), py::kw_only(),
           py::arg("converted") = false,
           "submit(), and the drain fills `stamps` (a Stamps) just before answering `future`.")
      .def("submit_many", &py_scheduler::submit_many, py::arg("x"), py::arg("priority"),
           py::arg("timeout").none(true), py::arg("future"), py::kw_only(),
           py::arg("converted") = false,
           "Queues the N rows of x (one array [N, *shape], or a dict of them) as N items, all "
           "or none (QueueFullError naming the call otherwise), and answers `future` once: the "
           "outputs stacked [N, ...] (an array, or a dict for several outputs), or the first "
           "row's error, the rows still queued then cancelled. Returns the rows' handles "
           "(uint64 array) for cancel_many; None when x is not exact rows: convert it and call "
           "again with converted=True (InvalidInput naming the mismatch instead).")
      .def("cancel_many", &py_scheduler::cancel_many, py::arg("handles"),
           py::arg("expired") = false, "cancel() for every handle of a submit_many call.")
      .def(
          "cancel",
          [](py_scheduler& s, std::uint64_t handle, bool expired) {
            return s.sched().cancel(handle, expired);
          },
          py::arg("handle"), py::arg("expired") = false)
      .def("close", [](py_scheduler& s) { s.sched().close(); })
      .def(
          "shutdown",
          [](py_scheduler& s) {
            py::gil_scoped_release nogil;  // workers may need the GIL to finish their batch
            s.sched().shutdown();
          })
      .def("warmup", &py_scheduler::warmup, py::arg("batch_size"), py::arg("inputs"),
           "Runs one batch outside the queue (inputs: one array [B, ...] or None per input).")
      .def("stats", &py_scheduler::stats)
      .def("histogram_buckets", &py_scheduler::histogram_buckets, py::arg("which"),
           py::arg("bounds"), py::arg("unit"),
           "(cumulative counts at each bound, count, sum); bounds and sum in `unit`s.")
      .def_property_readonly("queue_depth", [](py_scheduler& s) { return s.sched().queue_depth(); })
      .def_property_readonly("in_flight", [](py_scheduler& s) { return s.sched().in_flight(); })
      .def_property_readonly("closed", [](py_scheduler& s) { return s.sched().closed(); })
      .def_property_readonly("platform", [](py_scheduler& s) { return s.sched().model().platform(); })
      .def_property_readonly("name", &py_scheduler::name);
  register_pending(m, m.attr("Scheduler"));  // PendingInfer and Scheduler.submit_await
}

}  // namespace inferline::bindings
