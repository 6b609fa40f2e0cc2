// One model version's scheduler as Python sees it: the submit fast path, answers as numpy,
// stats and warm-up.
#include "py_scheduler.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "batch_call.hpp"
#include "checked_backend.hpp"
#include "drain.hpp"
#include "errors.hpp"
#include "inferline/clock.hpp"
#include "loop_pump.hpp"
#include "python_backend.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

py::dict hist_dict(const histogram& h, double scale) {
  const histogram_snapshot s = h.snapshot();
  py::dict d;
  d["count"] = s.count;
  d["sum"] = static_cast<double>(s.sum) * scale;
  d["mean"] = s.mean() * scale;
  d["max"] = static_cast<double>(s.max) * scale;
  d["p50"] = s.quantile(0.50) * scale;
  d["p90"] = s.quantile(0.90) * scale;
  d["p99"] = s.quantile(0.99) * scale;
  return d;
}

const histogram& pick(const model_metrics& m, const std::string& which) {
  if (which == "queue_wait") return m.queue_wait_ns;
  if (which == "compute") return m.compute_ns;
  if (which == "request") return m.request_ns;
  if (which == "batch_size") return m.batch_size;
  throw py::value_error("unknown histogram '" + which +
                        "'; expected queue_wait, compute, request or batch_size");
}

std::string names_of(const std::vector<tensor_spec>& specs) {
  std::string s = "[";
  for (const auto& t : specs) s += (s.size() > 1 ? ", '" : "'") + t.name + "'";
  return s + "]";
}

std::string keys_of(py::handle d) {
  std::string s = "[";
  for (auto item : py::reinterpret_borrow<py::dict>(d)) {
    if (s.size() > 1) s += ", ";
    s += py::repr(item.first).cast<std::string>();
  }
  return s + "]";
}

// A deadline on the core's steady clock, `timeout_s` seconds from now (none: no_deadline).
std::int64_t deadline_after(std::optional<double> timeout_s) {
  if (!timeout_s) return no_deadline;
  const double t = *timeout_s;
  if (!(t > 0)) {
    raise_error(errors().invalid, "timeout must be a positive number of seconds, got " +
                                      py::repr(py::float_(t)).cast<std::string>());
  }
  const std::int64_t now = now_ns();
  const double ns = t * 1e9;
  if (ns >= static_cast<double>(no_deadline - now)) return no_deadline;  // also inf
  return now + static_cast<std::int64_t>(ns);
}

}  // namespace

std::shared_ptr<py_scheduler> py_scheduler::create(py_core& core, scheduler_config config,
                                                   std::vector<tensor_spec> inputs,
                                                   std::vector<tensor_spec> outputs,
                                                   const py::object& model) {
  if (inputs.empty()) throw py::value_error("a model needs at least one input");
  validate(config);  // before any thread starts: ValueError naming the setting
  std::shared_ptr<backend> be;
  if (py::isinstance<backend>(model)) {
    be = model.cast<std::shared_ptr<backend>>();
    const bool any_finite = std::any_of(outputs.begin(), outputs.end(),
                                        [](const tensor_spec& t) { return t.checks_finite(); });
    if (any_finite) be = std::make_shared<finite_checked_backend>(be, outputs);
  } else if (PyCallable_Check(model.ptr())) {
    be = std::make_shared<python_backend>(model, inputs, outputs);
  } else {
    throw py::type_error("model must be a callable or a native Backend");
  }
  auto s = std::make_shared<py_scheduler>(core.queue(), std::move(config), std::move(inputs),
                                          std::move(outputs), std::move(be));
  if (s->sched().config().on_loop) s->pump_ = core.pump();
  core.adopt(s);
  return s;
}

py_scheduler::py_scheduler(completion_queue& completions, scheduler_config config,
                           std::vector<tensor_spec> inputs, std::vector<tensor_spec> outputs,
                           std::shared_ptr<backend> model)
    : inputs_(std::move(inputs)),
      outputs_(std::move(outputs)),
      dict_inputs_(inputs_.size() > 1),
      dict_outputs_(outputs_.size() > 1) {
  config.input_bytes.clear();
  for (const auto& t : inputs_) config.input_bytes.push_back(t.item_bytes);
  name_ = config.name;
  config.user = this;
  sched_ = std::make_unique<model_scheduler>(std::move(config), std::move(model), completions);
}

py_scheduler::~py_scheduler() {
  if (sched_) {
    py::gil_scoped_release nogil;  // workers of a Python backend need the GIL to finish
    sched_.reset();
  }
}

py::handle py_scheduler::input_of(py::handle x, const tensor_spec& t) const {
  return dict_inputs_ ? py::handle(PyDict_GetItemString(x.ptr(), t.name.c_str())) : x;
}

void py_scheduler::raise_mismatch(py::handle x) const {
  const std::string model = "model '" + name_ + "': ";
  if (!dict_inputs_) {
    raise_error(errors().invalid, model + "input '" + inputs_[0].name + "' " +
                                      mismatch(inputs_[0], x));
  }
  if (!PyDict_Check(x.ptr())) {
    raise_error(errors().invalid, model + "expected a dict of inputs " + names_of(inputs_) +
                                      ", got " +
                                      py::str(py::type::handle_of(x).attr("__name__"))
                                          .cast<std::string>());
  }
  bool same_keys = PyDict_Size(x.ptr()) == static_cast<py::ssize_t>(inputs_.size());
  for (const auto& t : inputs_) same_keys = same_keys && input_of(x, t).ptr() != nullptr;
  if (!same_keys) {
    raise_error(errors().invalid,
                model + "expected inputs " + names_of(inputs_) + ", got keys " + keys_of(x));
  }
  for (const auto& t : inputs_) {
    py::handle v = input_of(x, t);
    if (!is_exact(t, v)) raise_error(errors().invalid, model + "input '" + t.name + "' " +
                                                           mismatch(t, v));
  }
  raise_error(errors().invalid, model + "input does not match its declaration");
}

void py_scheduler::refuse(admit a, std::uint32_t priority, std::size_t rows) {
  const std::string model = "model '" + name_ + "'";
  switch (a) {
    case admit::ok: return;
    case admit::queue_full: {
      sched_->count(outcome::queue_full);
      const std::size_t bound = sched_->config().max_queue_size;
      if (rows > bound) {
        raise_error(errors().queue_full, model + ": a call of " + std::to_string(rows) +
                                             " rows is more than the queue holds (" +
                                             std::to_string(bound) + "); split it");
      }
      raise_error(errors().queue_full,
                  model + ": queue is full (" + std::to_string(bound) +
                      " requests waiting" +
                      (rows > 1 ? "; none of the " + std::to_string(rows) + " rows was queued"
                                : std::string()) +
                      "); retry later");
    }
    case admit::stopped:
      sched_->count(outcome::engine_stopped);
      raise_error(errors().stopped, model + " is stopped or draining; no new requests");
    case admit::bad_priority:
      sched_->count(outcome::invalid_input);
      raise_error(errors().invalid, "priority " + std::to_string(priority) +
                                        " is out of range; expected 0.." +
                                        std::to_string(sched_->config().priority_levels - 1) +
                                        " (0 is the highest)");
  }
}

void py_scheduler::check_finite(py::handle x) const {
  for (const auto& t : inputs_) {
    if (!t.checks_finite()) continue;
    auto a = py::reinterpret_borrow<py::array>(input_of(x, t));
    if (!all_finite(a.data(), static_cast<std::size_t>(a.size()), t.kind)) {
      raise_error(errors().invalid, "model '" + name_ + "': input '" + t.name +
                                        "' contains NaN or Inf; the model accepts finite "
                                        "values only");
    }
  }
}

void take_stamps(request& r, std::int64_t answered_ns) {
  auto owned = py::reinterpret_steal<py::object>(static_cast<PyObject*>(r.trace));
  r.trace = nullptr;
  auto& s = owned.cast<request_stamps&>();
  s.t_enqueue = r.t_enqueue;
  s.t_dispatch = r.t_dispatch;
  s.t_compute_start = r.t_compute_start;
  s.t_compute_end = r.t_compute_end;
  s.t_answer = answered_ns;
  s.batch_size = r.batch_size;
  s.instance = r.instance;
  s.filled = true;
}

std::optional<std::uint64_t> py_scheduler::submit(py::handle x, std::uint32_t priority,
                                                  std::optional<double> timeout_s,
                                                  py::handle future, bool converted) {
  return submit_one(x, priority, timeout_s, future, nullptr, converted);
}

std::optional<std::uint64_t> py_scheduler::submit_traced(py::handle x, std::uint32_t priority,
                                                         std::optional<double> timeout_s,
                                                         py::handle future, py::handle stamps,
                                                         bool converted) {
  if (!py::isinstance<request_stamps>(stamps)) throw py::type_error("stamps must be a Stamps");
  return submit_one(x, priority, timeout_s, future, stamps.ptr(), converted);
}

std::optional<std::uint64_t> py_scheduler::submit_one(py::handle x, std::uint32_t priority,
                                                      std::optional<double> timeout_s,
                                                      py::handle future, PyObject* stamps,
                                                      bool converted) {
  const std::int64_t deadline_ns = deadline_after(timeout_s);
  // Fast path: exact arrays go straight into the slot; anything else is converted by Python.
  bool exact = true;
  if (!dict_inputs_) {
    exact = is_exact(inputs_[0], x);
  } else if (!PyDict_Check(x.ptr()) ||
             PyDict_Size(x.ptr()) != static_cast<py::ssize_t>(inputs_.size())) {
    exact = false;
  } else {
    for (const auto& t : inputs_) {
      py::handle v = input_of(x, t);
      if (v.ptr() == nullptr || !is_exact(t, v)) {
        exact = false;
        break;
      }
    }
  }
  if (!exact) {
    if (!converted) return std::nullopt;
    raise_mismatch(x);
  }
  check_finite(x);
  request* r = nullptr;
  const admit a = sched_->prepare(priority, &r);
  if (a != admit::ok) refuse(a, priority, 1);
  std::byte* dst = r->input;
  for (const auto& t : inputs_) {
    // A short copy: the GIL stays held (releasing it would cost more than the copy).
    std::memcpy(dst, py::reinterpret_borrow<py::array>(input_of(x, t)).data(), t.item_bytes);
    dst += t.item_bytes;
  }
  const std::uint64_t handle = r->handle();
  if (stamps != nullptr) {
    // A reused slot keeps its last use's stamps: a stage this request never reaches reads 0.
    r->t_dispatch = r->t_compute_start = r->t_compute_end = 0;
    r->batch_size = r->instance = 0;
    Py_INCREF(stamps);  // owned by the request until the drain fills it (take_stamps)
    r->trace = stamps;
  }
  Py_INCREF(future.ptr());  // the request owns a reference until the drain answers it
  sched_->commit(r, future.ptr(), deadline_ns, ++next_id_);
  if (pump_) pump_->wake();
  return handle;
}

std::optional<py::array_t<std::uint64_t>> py_scheduler::submit_many(
    py::handle x, std::uint32_t priority, std::optional<double> timeout_s, py::handle future,
    bool converted) {
  const std::int64_t deadline_ns = deadline_after(timeout_s);
  // Exact rows only: one array [N, *shape] per input, all with the same N >= 1.
  py::ssize_t n = -1;
  bool exact = !dict_inputs_ || (PyDict_Check(x.ptr()) &&
                                 PyDict_Size(x.ptr()) == static_cast<py::ssize_t>(inputs_.size()));
  for (std::size_t k = 0; exact && k < inputs_.size(); ++k) {
    py::handle v = input_of(x, inputs_[k]);
    py::ssize_t rows = 0;
    exact = v.ptr() != nullptr && is_exact_rows(inputs_[k], v, &rows) && (n < 0 || rows == n);
    n = rows;
  }
  if (!exact || n < 1) {
    if (!converted) return std::nullopt;
    const std::string model = "model '" + name_ + "': ";
    if (exact) raise_error(errors().invalid, model + "the batch is empty (0 rows)");
    for (const auto& t : inputs_) {
      py::handle v = dict_inputs_ && PyDict_Check(x.ptr()) ? input_of(x, t) : x;
      py::ssize_t rows = 0;
      if (v.ptr() != nullptr && !is_exact_rows(t, v, &rows)) {
        raise_error(errors().invalid, model + "input '" + t.name + "' " + mismatch_rows(t, v));
      }
    }
    raise_error(errors().invalid, model + "inputs need the same leading batch dimension");
  }
  check_finite(x);
  const auto rows = static_cast<std::size_t>(n);
  std::vector<request*> slots(rows);
  const admit a = sched_->prepare_many(priority, rows, slots.data());
  if (a != admit::ok) refuse(a, priority, rows);
  // Freed by the drain once its last row is answered (py_core::drain).
  auto* call = new batch_call(future, next_id_ + 1, rows);
  next_id_ += rows;
  std::vector<const std::byte*> src;
  for (const auto& t : inputs_) {
    src.push_back(static_cast<const std::byte*>(
        py::reinterpret_borrow<py::array>(input_of(x, t)).data()));
  }
  py::array_t<std::uint64_t> handles(static_cast<py::ssize_t>(rows));
  std::uint64_t* h = handles.mutable_data();
  for (std::size_t i = 0; i < rows; ++i) {
    request* r = slots[i];
    std::byte* dst = r->input;
    for (std::size_t k = 0; k < inputs_.size(); ++k) {
      const std::size_t bytes = inputs_[k].item_bytes;
      std::memcpy(dst, src[k] + i * bytes, bytes);  // short copies: the GIL stays held
      dst += bytes;
    }
    h[i] = call->handles[i] = r->handle();
    r->wake_group = &call->unpushed;
    sched_->commit(r, as_token(call), deadline_ns, call->first_id + i);
  }
  if (pump_) pump_->wake();
  return handles;
}

void py_scheduler::cancel_many(const py::array_t<std::uint64_t>& handles, bool expired) {
  const std::uint64_t* h = handles.data();
  for (py::ssize_t i = 0; i < handles.size(); ++i) sched_->cancel(h[i], expired);
}

void py_scheduler::stack_row(request* r, batch_call& call) {
  const auto n = static_cast<py::ssize_t>(call.handles.size());
  const std::size_t row = static_cast<std::size_t>(r->id - call.first_id);
  const std::size_t count = outputs_.empty() ? 1 : outputs_.size();
  auto* shared = static_cast<PyObject*>(r->result);
  for (std::size_t k = 0; k < count; ++k) {
    const std::byte* src = nullptr;
    std::size_t bytes = 0;
    // Null unless a Python model answered: a default py::array would allocate an empty
    // numpy array for every row.
    auto from = py::reinterpret_borrow<py::array>(py::handle());
    if (shared != nullptr) {  // a Python model's batch outputs (see python_backend)
      from = py::reinterpret_borrow<py::array>(dict_outputs_ ? PyTuple_GET_ITEM(shared, k)
                                                             : shared);
      bytes = static_cast<std::size_t>(from.itemsize());
      for (py::ssize_t d = 1; d < from.ndim(); ++d) bytes *= static_cast<std::size_t>(from.shape(d));
      src = static_cast<const std::byte*>(from.data()) + r->row * bytes;
    } else if (r->output != nullptr) {  // a native model's pooled output block
      bytes = outputs_[k].item_bytes;
      src = r->output->region(k) + r->row * bytes;
    } else {
      throw std::runtime_error("the model left a row without an answer");
    }
    if (call.outputs.size() <= k) {
      std::vector<py::ssize_t> shape{n};
      if (k < outputs_.size()) {
        shape.insert(shape.end(), outputs_[k].shape.begin(), outputs_[k].shape.end());
        call.outputs.push_back(py::array(outputs_[k].dtype, shape));
      } else {  // undeclared output: as the first answered row says
        shape.insert(shape.end(), from.shape() + 1, from.shape() + from.ndim());
        call.outputs.push_back(py::array(from.dtype(), shape));
      }
    }
    auto dst = py::reinterpret_borrow<py::array>(call.outputs[k]);
    // Only a Python model's rows have an array to compare: a default py::array is an empty
    // float64 array, not null, so testing `from` failed every native non-float64 output.
    if (static_cast<std::size_t>(dst.nbytes()) != bytes * call.handles.size() ||
        (shared != nullptr && !dst.dtype().equal(from.dtype()))) {
      throw std::runtime_error("rows of one call were answered with outputs of different "
                               "dtypes or shapes (declare the model's outputs)");
    }
    std::memcpy(static_cast<std::byte*>(dst.mutable_data()) + row * bytes, src, bytes);
  }
  if (shared != nullptr) {
    r->result = nullptr;
    Py_DECREF(shared);  // this row's reference to the batch outputs
  }
}

py::object py_scheduler::batch_value(batch_call& call) const {
  if (!dict_outputs_) return call.outputs.at(0);
  py::dict d;
  for (std::size_t k = 0; k < outputs_.size(); ++k) d[py::str(outputs_[k].name)] = call.outputs[k];
  return d;
}

py::object py_scheduler::take_result(request* r) {
  if (r->result != nullptr) {
    // A Python model's batch outputs (an array, or a tuple of arrays for several outputs):
    // this request's answer is a row view of each, made here on the loop thread so that the
    // worker holds the GIL for the model call only.
    auto shared = py::reinterpret_steal<py::object>(static_cast<PyObject*>(r->result));
    r->result = nullptr;
    const auto row = static_cast<py::ssize_t>(r->row);
    auto row_of = [row](PyObject* a) {
      PyObject* v = PySequence_GetItem(a, row);
      if (v == nullptr) throw py::error_already_set();
      return py::reinterpret_steal<py::object>(v);
    };
    if (!dict_outputs_) return row_of(shared.ptr());
    py::dict d;
    for (std::size_t k = 0; k < outputs_.size(); ++k) {
      d[py::str(outputs_[k].name)] = row_of(PyTuple_GET_ITEM(shared.ptr(), k));
    }
    return d;
  }
  if (r->output == nullptr) return py::none();
  auto make = [&](std::size_t k) {
    const tensor_spec& t = outputs_[k];
    py::array a(t.dtype, t.shape);
    std::memcpy(a.mutable_data(), r->output->region(k) + r->row * t.item_bytes, t.item_bytes);
    return a;
  };
  if (!dict_outputs_) return make(0);
  py::dict d;
  for (std::size_t k = 0; k < outputs_.size(); ++k) d[py::str(outputs_[k].name)] = make(k);
  return d;
}

void py_scheduler::warmup(std::size_t batch_size, const py::list& inputs) {
  std::vector<py::array> keep;
  std::vector<const std::byte*> ptrs;
  for (auto a : inputs) {
    if (a.is_none()) {
      ptrs.push_back(nullptr);
      continue;
    }
    keep.push_back(py::array::ensure(a, py::array::c_style));
    ptrs.push_back(static_cast<const std::byte*>(keep.back().data()));
  }
  py::gil_scoped_release nogil;  // the backend takes the GIL itself if it needs it
  sched_->run_direct(batch_size, ptrs);
}

py::dict py_scheduler::stats() const {
  const model_metrics& m = sched_->metrics();
  py::dict requests;
  for (std::size_t i = 0; i < outcome_count; ++i) {
    requests[py::str(std::string(outcome_name(static_cast<outcome>(i))))] =
        m.requests[i].load(std::memory_order_relaxed);
  }
  py::dict d;
  d["requests"] = requests;
  d["batches"] = m.batches.load(std::memory_order_relaxed);
  d["items_computed"] = m.items_computed.load(std::memory_order_relaxed);
  d["queue_depth"] = sched_->queue_depth();
  d["in_flight"] = sched_->in_flight();
  d["queue_wait"] = hist_dict(m.queue_wait_ns, 1e-9);
  d["compute"] = hist_dict(m.compute_ns, 1e-9);
  d["request"] = hist_dict(m.request_ns, 1e-9);
  d["batch_size"] = hist_dict(m.batch_size, 1.0);
  return d;
}

py::tuple py_scheduler::histogram_buckets(const std::string& which,
                                          const std::vector<double>& bounds, double unit) const {
  const histogram_snapshot snap = pick(sched_->metrics(), which).snapshot();
  std::vector<std::uint64_t> out;
  out.reserve(bounds.size());
  for (double b : bounds) out.push_back(snap.count_at_most(static_cast<std::uint64_t>(b / unit)));
  return py::make_tuple(out, snap.count, static_cast<double>(snap.sum) * unit);
}

}  // namespace inferline::bindings
