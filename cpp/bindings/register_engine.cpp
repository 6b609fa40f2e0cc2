// Engine bindings: the completion drain, the per-model scheduler handle and the Python backend.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "inferline/backend.hpp"
#include "inferline/clock.hpp"
#include "inferline/completion_queue.hpp"
#include "inferline/scheduler.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

// How `finite=True` is checked for an input's element type.
enum class float_kind : int { none = 0, fp16 = 1, fp32 = 2, fp64 = 3, bf16 = 4 };

// One declared tensor, as the bindings need it.
struct tensor_info {
  std::string name;
  py::dtype dtype;
  int type_num = 0;
  std::vector<py::ssize_t> shape;  // per item
  std::size_t item_bytes = 0;
  float_kind kind = float_kind::none;
  bool finite = false;
};

tensor_info make_info(const py::tuple& spec) {
  // spec: (name, numpy dtype, shape tuple, finite, float kind)
  tensor_info t;
  t.name = spec[0].cast<std::string>();
  t.dtype = py::dtype::from_args(spec[1]);
  t.type_num = t.dtype.num();
  std::size_t n = 1;
  for (auto d : spec[2].cast<py::tuple>()) {
    t.shape.push_back(d.cast<py::ssize_t>());
    n *= static_cast<std::size_t>(t.shape.back());
  }
  t.item_bytes = n * static_cast<std::size_t>(t.dtype.itemsize());
  t.finite = spec[3].cast<bool>();
  t.kind = static_cast<float_kind>(spec[4].cast<int>());
  return t;
}

bool all_finite(const void* data, std::size_t count, float_kind kind) {
  switch (kind) {
    case float_kind::fp32: {
      const auto* p = static_cast<const std::uint32_t*>(data);
      std::uint32_t bad = 0;
      for (std::size_t i = 0; i < count; ++i) bad |= ((p[i] & 0x7f800000u) == 0x7f800000u);
      return bad == 0;
    }
    case float_kind::fp64: {
      const auto* p = static_cast<const std::uint64_t*>(data);
      std::uint64_t bad = 0;
      for (std::size_t i = 0; i < count; ++i) {
        bad |= ((p[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
      }
      return bad == 0;
    }
    case float_kind::fp16:
    case float_kind::bf16: {
      const std::uint16_t mask = kind == float_kind::fp16 ? 0x7c00 : 0x7f80;
      const auto* p = static_cast<const std::uint16_t*>(data);
      std::uint16_t bad = 0;
      for (std::size_t i = 0; i < count; ++i) bad |= ((p[i] & mask) == mask);
      return bad == 0;
    }
    case float_kind::none: break;
  }
  return true;
}

// Python exception types, set once by the Python package at import.
struct error_types {
  py::object queue_full, deadline, cancelled, model_error, stopped, invalid;
};
error_types& errors() {
  static error_types* e = new error_types();  // leaked on purpose: outlives interpreter teardown
  return *e;
}

// Interned method names used on the drain path.
struct names {
  py::str cancelled{"cancelled"}, set_result{"set_result"}, set_exception{"set_exception"};
  py::object invalid_state = py::module_::import("asyncio").attr("InvalidStateError");
};
names& method_names() {
  static names* n = new names();
  return *n;
}

class py_scheduler;

// Runs a Python callable on a batch: a zero-copy numpy view of the pooled input block, the GIL
// held only around the call and the output checks.
class python_backend final : public backend {
 public:
  python_backend(py::object fn, std::vector<tensor_info> inputs, std::vector<tensor_info> outputs,
                 bool dict_inputs, bool dict_outputs)
      : fn_(std::move(fn)),
        inputs_(std::move(inputs)),
        outputs_(std::move(outputs)),
        dict_inputs_(dict_inputs),
        dict_outputs_(dict_outputs) {}

  ~python_backend() override {
    py::gil_scoped_acquire gil;
    fn_ = py::object();
    for (auto& t : inputs_) t.dtype = py::dtype();
    for (auto& t : outputs_) t.dtype = py::dtype();
  }

  std::string platform() const override { return "python"; }

  void discard_result(void* result) noexcept override {
    py::gil_scoped_acquire gil;
    Py_XDECREF(static_cast<PyObject*>(result));
  }

  void run(batch& b) override {
    py::gil_scoped_acquire gil;
    try {
      run_locked(b);
    } catch (py::error_already_set& e) {
      std::string msg = describe(e);
      throw std::runtime_error(msg);
    }
  }

 private:
  static std::string describe(py::error_already_set& e) {
    std::string type = "Exception";
    try {
      type = py::str(e.type().attr("__name__")).cast<std::string>();
    } catch (...) {
    }
    return type + ": " + py::str(e.value()).cast<std::string>();
  }

  void run_locked(batch& b) {
    const auto n = static_cast<py::ssize_t>(b.size);
    // The views keep the pooled block alive through this capsule; the block returns to the pool
    // when the last view dies (right after the call, unless the model kept one).
    b.inputs->retain();
    py::capsule owner(b.inputs, [](void* p) { static_cast<block*>(p)->release(); });
    py::object arg;
    if (!dict_inputs_) {
      arg = view(inputs_[0], b.inputs->region(0), n, owner);
    } else {
      py::dict d;
      for (std::size_t k = 0; k < inputs_.size(); ++k) {
        d[py::str(inputs_[k].name)] = view(inputs_[k], b.inputs->region(k), n, owner);
      }
      arg = std::move(d);
    }
    py::object out = fn_(arg);
    arg = py::object();
    std::vector<py::array> arrays = check_outputs(out, n);
    if (b.warmup()) return;
    // Split per item: each answer is a row view of the batch output (no copy).
    std::vector<PyObject*> results(b.size, nullptr);
    try {
      for (std::size_t i = 0; i < b.size; ++i) {
        if (!dict_outputs_) {
          results[i] = PySequence_GetItem(arrays[0].ptr(), static_cast<py::ssize_t>(i));
          if (results[i] == nullptr) throw py::error_already_set();
        } else {
          py::dict d;
          for (std::size_t k = 0; k < arrays.size(); ++k) {
            d[py::str(outputs_[k].name)] =
                py::reinterpret_steal<py::object>(
                    PySequence_GetItem(arrays[k].ptr(), static_cast<py::ssize_t>(i)));
          }
          results[i] = d.release().ptr();
        }
      }
    } catch (...) {
      for (PyObject* p : results) Py_XDECREF(p);
      throw;
    }
    for (std::size_t i = 0; i < b.size; ++i) b.requests[i]->result = results[i];
  }

  static py::array view(const tensor_info& t, std::byte* data, py::ssize_t n,
                        const py::capsule& owner) {
    std::vector<py::ssize_t> shape{n};
    shape.insert(shape.end(), t.shape.begin(), t.shape.end());
    return py::array(t.dtype, shape, data, owner);
  }

  std::vector<py::array> check_outputs(const py::object& out, py::ssize_t n) {
    std::vector<py::array> arrays;
    if (outputs_.empty()) {
      // Undeclared outputs: one array, or a dict of arrays, with a leading dimension of n.
      arrays.push_back(as_batch_array(out, "output", n));
      return arrays;
    }
    if (!dict_outputs_) {
      py::object o = out;
      if (py::isinstance<py::dict>(out)) {
        py::dict d = out.cast<py::dict>();
        if (d.size() != 1 || !d.contains(outputs_[0].name)) {
          throw std::runtime_error("model returned a dict with keys " + keys(d) +
                                   "; expected the single output '" + outputs_[0].name + "'");
        }
        o = d[py::str(outputs_[0].name)];
      }
      arrays.push_back(checked(outputs_[0], o, n));
      return arrays;
    }
    if (py::isinstance<py::dict>(out)) {
      py::dict d = out.cast<py::dict>();
      for (const auto& t : outputs_) {
        if (!d.contains(t.name)) {
          throw std::runtime_error("model output is missing '" + t.name + "' (got keys " +
                                   keys(d) + ")");
        }
        arrays.push_back(checked(t, d[py::str(t.name)], n));
      }
      return arrays;
    }
    if (py::isinstance<py::tuple>(out) || py::isinstance<py::list>(out)) {
      py::sequence s = out.cast<py::sequence>();
      if (static_cast<std::size_t>(py::len(s)) != outputs_.size()) {
        throw std::runtime_error("model returned " + std::to_string(py::len(s)) +
                                 " outputs; expected " + std::to_string(outputs_.size()));
      }
      for (std::size_t k = 0; k < outputs_.size(); ++k) arrays.push_back(checked(outputs_[k], s[k], n));
      return arrays;
    }
    throw std::runtime_error("model returned " + type_name(out) + "; expected a dict of " +
                             std::to_string(outputs_.size()) + " outputs");
  }

  static std::string keys(const py::dict& d) {
    std::string s = "[";
    for (auto item : d) {
      if (s.size() > 1) s += ", ";
      s += py::repr(item.first).cast<std::string>();
    }
    return s + "]";
  }

  static std::string type_name(const py::handle& o) {
    return py::str(py::type::handle_of(o).attr("__name__")).cast<std::string>();
  }

  static py::array as_batch_array(const py::object& o, const std::string& what, py::ssize_t n) {
    if (!py::isinstance<py::array>(o)) {
      throw std::runtime_error("model returned " + type_name(o) + " for " + what +
                               "; expected a numpy array");
    }
    py::array a = o.cast<py::array>();
    if (a.ndim() < 1 || a.shape(0) != n) {
      throw std::runtime_error(what + " has shape " + shape_str(a) +
                               "; expected a leading batch dimension of " + std::to_string(n));
    }
    return a;
  }

  static std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
      if (i) s += ", ";
      s += std::to_string(a.shape(i));
    }
    if (a.ndim() == 1) s += ",";
    return s + ")";
  }

  static py::array checked(const tensor_info& t, const py::object& o, py::ssize_t n) {
    py::array a = as_batch_array(o, "output '" + t.name + "'", n);
    bool ok = a.ndim() == static_cast<py::ssize_t>(t.shape.size()) + 1;
    for (std::size_t i = 0; ok && i < t.shape.size(); ++i) ok = a.shape(i + 1) == t.shape[i];
    if (!ok) {
      std::string want = "(" + std::to_string(n);
      for (auto d : t.shape) want += ", " + std::to_string(d);
      want += t.shape.empty() ? ",)" : ")";
      throw std::runtime_error("output '" + t.name + "' has shape " + shape_str(a) +
                               "; expected " + want);
    }
    if (!a.dtype().equal(t.dtype)) {
      throw std::runtime_error("output '" + t.name + "' has dtype " +
                               py::str(a.dtype()).cast<std::string>() + "; expected " +
                               py::str(t.dtype).cast<std::string>());
    }
    if (t.finite && t.kind != float_kind::none) {
      py::array c = py::array::ensure(a, py::array::c_style);
      if (!all_finite(c.data(), static_cast<std::size_t>(c.size()), t.kind)) {
        throw std::runtime_error("output '" + t.name + "' contains NaN or Inf (finite check)");
      }
    }
    return a;
  }

  py::object fn_;
  std::vector<tensor_info> inputs_;
  std::vector<tensor_info> outputs_;
  bool dict_inputs_;
  bool dict_outputs_;
};

// Wraps a native backend so outputs declared `finite` are checked after each batch, as the
// Python backend checks its outputs: a NaN or Inf fails the whole batch with a model error.
class finite_checked_backend final : public backend {
 public:
  finite_checked_backend(std::shared_ptr<backend> inner, std::vector<tensor_info> outputs)
      : inner_(std::move(inner)) {
    for (std::size_t k = 0; k < outputs.size(); ++k) {
      if (outputs[k].finite && outputs[k].kind != float_kind::none) {
        checks_.push_back({k, outputs[k].item_bytes, outputs[k].kind, outputs[k].name,
                           outputs[k].item_bytes / static_cast<std::size_t>(outputs[k].dtype.itemsize())});
      }
    }
  }

  void run(batch& b) override {
    inner_->run(b);
    if (b.warmup() || b.requests.empty() || b.requests[0]->output == nullptr) return;
    for (const auto& c : checks_) {
      for (request* r : b.requests) {
        const std::byte* row = r->output->region(c.index) + r->row * c.item_bytes;
        if (!all_finite(row, c.count, c.kind)) {
          // The core fails the whole batch and releases the outputs its requests hold.
          throw std::runtime_error("output '" + c.name + "' contains NaN or Inf (finite check)");
        }
      }
    }
  }
  void on_worker_start(int instance) override { inner_->on_worker_start(instance); }
  void discard_result(void* result) noexcept override { inner_->discard_result(result); }
  std::string platform() const override { return inner_->platform(); }

 private:
  struct check {
    std::size_t index, item_bytes;
    float_kind kind;
    std::string name;
    std::size_t count;
  };
  std::shared_ptr<backend> inner_;
  std::vector<check> checks_;
};

// Engine-wide: the completion queue and the schedulers whose answers may still be in it.
class py_core {
 public:
  py_core() = default;
  ~py_core();

  completion_queue& queue() noexcept { return queue_; }
  int fd() const noexcept { return queue_.fd(); }
  std::size_t drain();
  void adopt(std::shared_ptr<py_scheduler> s) {
    std::lock_guard lock(mutex_);
    live_.push_back(std::move(s));
  }
  void reap();
  void set_trace(py::object fn) { trace_ = std::move(fn); }

 private:
  completion_queue queue_;
  std::mutex mutex_;
  std::vector<std::shared_ptr<py_scheduler>> live_;
  py::object trace_;
};

// One model version's scheduler, as Python sees it.
class py_scheduler {
 public:
  py_scheduler(py_core& core, scheduler_config cfg, std::vector<tensor_info> inputs,
               std::vector<tensor_info> outputs, bool dict_inputs, bool dict_outputs,
               std::shared_ptr<backend> model)
      : inputs_(std::move(inputs)),
        outputs_(std::move(outputs)),
        dict_inputs_(dict_inputs),
        dict_outputs_(dict_outputs) {
    for (const auto& t : inputs_) cfg.input_bytes.push_back(t.item_bytes);
    name_ = cfg.name;
    cfg.user = this;
    sched_ = std::make_unique<model_scheduler>(std::move(cfg), std::move(model), core.queue());
  }

  ~py_scheduler() {
    if (sched_) {
      py::gil_scoped_release nogil;  // workers of a Python backend need the GIL to finish
      sched_.reset();
    }
  }

  model_scheduler& sched() { return *sched_; }
  const model_scheduler& sched() const { return *sched_; }
  const std::string& name() const { return name_; }

  // Fast path: exact arrays go straight into the slot. Returns the handle (>= 0), or
  // -1 when the input needs conversion (the Python wrapper converts or explains), or
  // -2 when a finite check failed.
  std::int64_t submit(py::handle x, std::uint32_t priority, std::int64_t deadline_ns,
                      py::handle future) {
    const bool single = !dict_inputs_;
    if (single) {
      if (!exact(inputs_[0], x)) return -1;
    } else {
      if (!PyDict_Check(x.ptr()) || PyDict_Size(x.ptr()) != static_cast<py::ssize_t>(inputs_.size())) {
        return -1;
      }
      for (const auto& t : inputs_) {
        PyObject* v = PyDict_GetItemString(x.ptr(), t.name.c_str());
        if (v == nullptr || !exact(t, v)) return -1;
      }
    }
    for (std::size_t k = 0; k < inputs_.size(); ++k) {
      const tensor_info& t = inputs_[k];
      if (!t.finite || t.kind == float_kind::none) continue;
      py::handle a = single ? x : py::handle(PyDict_GetItemString(x.ptr(), t.name.c_str()));
      py::array view = py::reinterpret_borrow<py::array>(a);
      if (!all_finite(view.data(), static_cast<std::size_t>(view.size()), t.kind)) return -2;
    }
    request* r = nullptr;
    switch (sched_->prepare(priority, &r)) {
      case admit::ok: break;
      case admit::queue_full:
        sched_->count(outcome::queue_full);
        throw_error(errors().queue_full,
                    "model '" + name_ + "': queue is full (" +
                        std::to_string(sched_->config().max_queue_size) +
                        " requests waiting); retry later");
      case admit::stopped:
        sched_->count(outcome::engine_stopped);
        throw_error(errors().stopped, "model '" + name_ + "' is stopped or draining; no new requests");
      case admit::bad_priority:
        sched_->count(outcome::invalid_input);
        throw_error(errors().invalid, "priority " + std::to_string(priority) +
                                          " is out of range; expected 0.." +
                                          std::to_string(sched_->config().priority_levels - 1) +
                                          " (0 is the highest)");
    }
    std::byte* dst = r->input;
    for (const auto& t : inputs_) {
      py::handle a = single ? x : py::handle(PyDict_GetItemString(x.ptr(), t.name.c_str()));
      // A short copy: the GIL stays held (releasing it would cost more than the copy).
      std::memcpy(dst, py::reinterpret_borrow<py::array>(a).data(), t.item_bytes);
      dst += t.item_bytes;
    }
    const std::uint64_t handle = r->handle();
    Py_INCREF(future.ptr());  // the request owns a reference until the drain answers it
    sched_->commit(r, future.ptr(), deadline_ns, ++next_id_);
    return static_cast<std::int64_t>(handle);
  }

  // Converts a native output row into numpy arrays (copy), or passes the Python payload on.
  py::object take_result(request* r) {
    if (r->result != nullptr) {
      py::object o = py::reinterpret_steal<py::object>(static_cast<PyObject*>(r->result));
      r->result = nullptr;
      return o;
    }
    if (r->output == nullptr) return py::none();
    auto make = [&](std::size_t k) {
      const tensor_info& t = outputs_[k];
      py::array a(t.dtype, t.shape);
      std::memcpy(a.mutable_data(), r->output->region(k) + r->row * t.item_bytes, t.item_bytes);
      return a;
    };
    if (!dict_outputs_) return make(0);
    py::dict d;
    for (std::size_t k = 0; k < outputs_.size(); ++k) d[py::str(outputs_[k].name)] = make(k);
    return d;
  }

  py::dict stats() const;

 private:
  bool exact(const tensor_info& t, py::handle x) const {
    if (!py::isinstance<py::array>(x)) return false;
    auto a = py::reinterpret_borrow<py::array>(x);
    if (a.ndim() != static_cast<py::ssize_t>(t.shape.size())) return false;
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      if (a.shape(static_cast<py::ssize_t>(i)) != t.shape[i]) return false;
    }
    if (!(a.flags() & py::array::c_style)) return false;
    return a.dtype().equal(t.dtype);
  }

  [[noreturn]] static void throw_error(const py::object& type, const std::string& msg) {
    PyErr_SetString(type.ptr(), msg.c_str());
    throw py::error_already_set();
  }

  std::string name_;
  std::vector<tensor_info> inputs_;
  std::vector<tensor_info> outputs_;
  bool dict_inputs_;
  bool dict_outputs_;
  std::uint64_t next_id_ = 0;
  std::unique_ptr<model_scheduler> sched_;
};

// After a failed set_result/set_exception: a future that was already done (the caller's
// timeout or cancellation answered first) decides the outcome counted; anything else (a closed
// loop) is reported as unraisable and the request still finishes.
outcome already_answered(py::handle fut, outcome fallback) {
  if (!PyErr_ExceptionMatches(method_names().invalid_state.ptr())) {
    PyErr_WriteUnraisable(fut.ptr());
    return fallback;
  }
  PyErr_Clear();
  PyObject* c = PyObject_CallMethodNoArgs(fut.ptr(), method_names().cancelled.ptr());
  const bool cancelled = c == Py_True;
  if (c == nullptr) PyErr_Clear();
  Py_XDECREF(c);
  return cancelled ? outcome::cancelled : outcome::deadline_exceeded;
}

// The drain: answer every request the workers finished, in one call on the loop thread.
std::size_t py_core::drain() {
  request* r = queue_.take_all();
  std::size_t n = 0;
  const names& nm = method_names();
  const error_types& et = errors();
  while (r != nullptr) {
    request* next = r->next;
    auto* owner_sched = r->owner;
    py::handle fut(static_cast<PyObject*>(r->token));
    const std::int64_t now = now_ns();
    outcome counted = r->result_outcome;
    // The core keeps the owning py_scheduler alive until all its answers are drained.
    auto* ps = static_cast<py_scheduler*>(owner_sched->config().user);
    if (r->result_outcome == outcome::success) {
      // The common case costs one C-level method call; a future the caller already finished
      // (its own timeout or cancellation) answers InvalidStateError, handled below.
      PyObject* value = nullptr;
      PyObject* res = nullptr;
      try {
        value = ps ? ps->take_result(r).release().ptr() : Py_NewRef(Py_None);
        res = PyObject_CallMethodOneArg(fut.ptr(), nm.set_result.ptr(), value);
      } catch (py::error_already_set& e) {
        // Building the answer failed (e.g. no memory for its array): still one answer.
        const std::string msg = "model '" + (ps ? ps->name() : std::string("?")) +
                                "' failed: could not build the answer: " + e.what();
        PyObject* exc = PyObject_CallOneArg(et.model_error.ptr(), py::str(msg).ptr());
        res = exc ? PyObject_CallMethodOneArg(fut.ptr(), nm.set_exception.ptr(), exc) : nullptr;
        Py_XDECREF(exc);
        counted = outcome::model_error;
      }
      Py_XDECREF(value);
      if (res != nullptr) {
        Py_DECREF(res);
      } else {
        counted = already_answered(fut, counted);
      }
    } else {
      const py::object* type = &et.model_error;
      std::string prefix = "model '" + (ps ? ps->name() : std::string("?")) + "'";
      switch (r->result_outcome) {
        case outcome::deadline_exceeded: type = &et.deadline; break;
        case outcome::cancelled: type = &et.cancelled; break;
        case outcome::engine_stopped: type = &et.stopped; break;
        case outcome::model_error: prefix += " failed"; break;
        default: break;
      }
      const std::string msg = prefix + ": " + (r->error ? *r->error : std::string("error"));
      PyObject* exc = PyObject_CallOneArg(type->ptr(), py::str(msg).ptr());
      PyObject* res =
          exc ? PyObject_CallMethodOneArg(fut.ptr(), nm.set_exception.ptr(), exc) : nullptr;
      Py_XDECREF(exc);
      if (res != nullptr) {
        Py_DECREF(res);
      } else {
        counted = already_answered(fut, counted);
      }
    }
    if (trace_ && !trace_.is_none()) {
      try {
        trace_(ps ? ps->name() : std::string("?"), r->id, std::string(outcome_name(counted)),
               r->t_enqueue, r->t_dispatch, r->t_compute_start, r->t_compute_end, now,
               r->batch_size);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("inferline: request trace hook");
      }
    }
    if (r->result != nullptr) {  // not taken (the future was already done)
      Py_DECREF(static_cast<PyObject*>(r->result));
      r->result = nullptr;
    }
    owner_sched->finish(r, counted, now);
    Py_DECREF(fut.ptr());
    r = next;
    ++n;
  }
  return n;
}

void py_core::reap() {
  std::vector<std::shared_ptr<py_scheduler>> dead;
  {
    std::lock_guard lock(mutex_);
    for (auto it = live_.begin(); it != live_.end();) {
      // Only this core holds it, it is shut down and every answer has been drained.
      if (it->use_count() == 1 && (*it)->sched().closed() && (*it)->sched().in_flight() == 0) {
        dead.push_back(std::move(*it));
        it = live_.erase(it);
      } else {
        ++it;
      }
    }
  }
  dead.clear();  // destructors join (already stopped) workers with the GIL released
}

py_core::~py_core() {
  std::vector<std::shared_ptr<py_scheduler>> all;
  {
    std::lock_guard lock(mutex_);
    all = live_;
  }
  for (auto& s : all) {
    py::gil_scoped_release nogil;
    s->sched().shutdown();
  }
  drain();
  std::lock_guard lock(mutex_);
  live_.clear();
}

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

const histogram& pick(const model_metrics& m, const std::string& which) {
  if (which == "queue_wait") return m.queue_wait_ns;
  if (which == "compute") return m.compute_ns;
  if (which == "request") return m.request_ns;
  if (which == "batch_size") return m.batch_size;
  throw py::value_error("unknown histogram '" + which +
                        "'; expected queue_wait, compute, request or batch_size");
}

}  // namespace

void register_engine(py::module_& m) {
  m.def(
      "set_error_types",
      [](py::object queue_full, py::object deadline, py::object cancelled, py::object model_error,
         py::object stopped, py::object invalid) {
        error_types& e = errors();
        e.queue_full = std::move(queue_full);
        e.deadline = std::move(deadline);
        e.cancelled = std::move(cancelled);
        e.model_error = std::move(model_error);
        e.stopped = std::move(stopped);
        e.invalid = std::move(invalid);
      },
      "Sets the Python exception classes the core raises (called once by the package).");

  py::class_<backend, std::shared_ptr<backend>>(m, "Backend",
                                                "A native model backend (opaque handle).")
      .def_property_readonly("platform", &backend::platform);

  py::class_<py_core>(m, "Core", "Engine-wide completion queue and drain (private).")
      .def(py::init<>())
      .def_property_readonly("fd", &py_core::fd,
                             "File descriptor readable when answers wait (add_reader it).")
      .def("drain", &py_core::drain,
           "Answers every finished request's future; returns how many. Loop thread only.")
      .def("reap", &py_core::reap, "Frees schedulers that are stopped and fully answered.")
      .def("set_trace", &py_core::set_trace, py::arg("fn").none(true),
           "Per-request hook fn(model, id, outcome, t_enqueue, t_dispatch, t_compute_start, "
           "t_compute_end, t_answer, batch_size) (ns stamps), or None.");

  py::class_<py_scheduler, std::shared_ptr<py_scheduler>>(m, "Scheduler",
                                                          "One model version's batcher (private).")
      .def(py::init([](py_core& core, const std::string& name, const py::list& inputs,
                       const py::list& outputs, bool dict_inputs, bool dict_outputs,
                       py::object model, std::size_t max_batch_size, std::int64_t max_delay_ns,
                       std::size_t max_queue_size, std::size_t priority_levels,
                       std::size_t instances, std::int64_t idle_spin_ns) {
             std::vector<tensor_info> in, out;
             for (auto s : inputs) in.push_back(make_info(s.cast<py::tuple>()));
             for (auto s : outputs) out.push_back(make_info(s.cast<py::tuple>()));
             if (in.empty()) throw py::value_error("a model needs at least one input");
             std::shared_ptr<backend> be;
             if (py::isinstance<backend>(model)) {
               be = model.cast<std::shared_ptr<backend>>();
               const bool any_finite = std::any_of(out.begin(), out.end(), [](const auto& t) {
                 return t.finite && t.kind != float_kind::none;
               });
               if (any_finite) be = std::make_shared<finite_checked_backend>(be, out);
             } else if (PyCallable_Check(model.ptr())) {
               be = std::make_shared<python_backend>(model, in, out, dict_inputs, dict_outputs);
             } else {
               throw py::type_error("model must be a callable or a native Backend");
             }
             scheduler_config cfg;
             cfg.name = name;
             cfg.max_batch_size = max_batch_size;
             cfg.max_queue_delay_ns = max_delay_ns;
             cfg.max_queue_size = max_queue_size;
             cfg.priority_levels = priority_levels;
             cfg.instances = instances;
             cfg.idle_spin_ns = idle_spin_ns;
             auto s = std::make_shared<py_scheduler>(core, std::move(cfg), std::move(in),
                                                     std::move(out), dict_inputs, dict_outputs,
                                                     std::move(be));
             core.adopt(s);
             return s;
           }),
           py::arg("core"), py::arg("name"), py::arg("inputs"), py::arg("outputs"),
           py::arg("dict_inputs"), py::arg("dict_outputs"), py::arg("model"),
           py::arg("max_batch_size"), py::arg("max_delay_ns"), py::arg("max_queue_size"),
           py::arg("priority_levels"), py::arg("instances"), py::arg("idle_spin_ns"))
      .def("start", [](py_scheduler& s) { s.sched().start(); })
      .def("submit", &py_scheduler::submit, py::arg("x"), py::arg("priority"),
           py::arg("deadline_ns"), py::arg("future"),
           "Queues one item; returns its handle, -1 if it needs conversion, -2 if not finite.")
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
      .def(
          "warmup",
          [](py_scheduler& s, std::size_t batch_size, const py::list& inputs) {
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
            s.sched().run_direct(batch_size, ptrs);
          },
          py::arg("batch_size"), py::arg("inputs"),
          "Runs one batch outside the queue (inputs: one array [B, ...] or None per input).")
      .def("stats", &py_scheduler::stats)
      .def(
          "histogram_buckets",
          [](py_scheduler& s, const std::string& which, const std::vector<double>& bounds,
             double unit) {
            // Cumulative counts at each bound (in `unit`s, e.g. 1e-9 for seconds of ns).
            const histogram_snapshot snap = pick(s.sched().metrics(), which).snapshot();
            std::vector<std::uint64_t> out;
            out.reserve(bounds.size());
            for (double b : bounds) {
              out.push_back(snap.count_at_most(static_cast<std::uint64_t>(b / unit)));
            }
            return py::make_tuple(out, snap.count, static_cast<double>(snap.sum) * unit);
          },
          py::arg("which"), py::arg("bounds"), py::arg("unit"))
      .def_property_readonly("queue_depth", [](py_scheduler& s) { return s.sched().queue_depth(); })
      .def_property_readonly("in_flight", [](py_scheduler& s) { return s.sched().in_flight(); })
      .def_property_readonly("closed", [](py_scheduler& s) { return s.sched().closed(); })
      .def_property_readonly("platform", [](py_scheduler& s) { return s.sched().model().platform(); })
      .def_property_readonly("name", &py_scheduler::name);
}

}  // namespace inferline::bindings
