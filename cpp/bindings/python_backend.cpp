// The backend that runs a Python callable on a batch: zero-copy numpy views of the pooled input
// block in, checked numpy arrays out, shared by the batch's requests (one row each).
#include "python_backend.hpp"

#include <stdexcept>
#include <utility>

namespace py = pybind11;

namespace inferline::bindings {
namespace {

std::string describe(py::error_already_set& e) {
  std::string type = "Exception";
  try {
    type = py::str(e.type().attr("__name__")).cast<std::string>();
  } catch (...) {
  }
  return type + ": " + py::str(e.value()).cast<std::string>();
}

std::string keys(const py::dict& d) {
  std::string s = "[";
  for (auto item : d) {
    if (s.size() > 1) s += ", ";
    s += py::repr(item.first).cast<std::string>();
  }
  return s + "]";
}

std::string type_name(const py::handle& o) {
  return py::str(py::type::handle_of(o).attr("__name__")).cast<std::string>();
}

std::string shape_of(const py::array& a) {
  return shape_str(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
}

bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// A worker thread's Python thread state, made at its first batch and kept until the thread
// exits. Without one, each gil_scoped_acquire makes and frees a thread state per batch, with
// its frame stack (an mmap, page faults, a munmap) while holding the GIL: time the event loop
// spends waiting for the GIL.
struct kept_thread_state {
  PyThreadState* ts = nullptr;
  kept_thread_state() = default;
  kept_thread_state(const kept_thread_state&) = delete;
  kept_thread_state& operator=(const kept_thread_state&) = delete;
  ~kept_thread_state() {
    // During finalization a thread may not take the GIL; the interpreter frees the state.
    if (ts == nullptr || Py_IsInitialized() == 0 || finalizing()) return;
    PyEval_RestoreThread(ts);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
  }
};

// Gives the calling thread a kept thread state unless it has one (a Python thread running a
// warm-up has its own). Call without the GIL.
void keep_thread_state() {
  thread_local kept_thread_state kept;
  if (kept.ts != nullptr || PyGILState_GetThisThreadState() != nullptr) return;
  // Also this thread's PyGILState state, which gil_scoped_acquire finds and uses.
  PyThreadState* ts = PyThreadState_New(PyInterpreterState_Main());
  if (ts == nullptr) return;  // gil_scoped_acquire makes a transient one instead
  ts->gilstate_counter = 1;   // held by `kept`: gil_scoped_acquire's release never deletes it
  kept.ts = ts;
}

py::array view(const tensor_spec& t, std::byte* data, py::ssize_t n, const py::capsule& owner) {
  std::vector<py::ssize_t> shape{n};
  shape.insert(shape.end(), t.shape.begin(), t.shape.end());
  return py::array(t.dtype, shape, data, owner);
}

py::array as_batch_array(const py::object& o, const std::string& what, py::ssize_t n) {
  if (!py::isinstance<py::array>(o)) {
    throw std::runtime_error("model returned " + type_name(o) + " for " + what +
                             "; expected a numpy array");
  }
  py::array a = o.cast<py::array>();
  if (a.ndim() < 1 || a.shape(0) != n) {
    throw std::runtime_error(what + " has shape " + shape_of(a) +
                             "; expected a leading batch dimension of " + std::to_string(n));
  }
  // Rows are read as contiguous bytes when a batch call stacks them (a copy only if not).
  return py::array::ensure(a, py::array::c_style);
}

py::array checked(const tensor_spec& t, const py::object& o, py::ssize_t n) {
  py::array a = as_batch_array(o, "output '" + t.name + "'", n);
  bool ok = a.ndim() == static_cast<py::ssize_t>(t.shape.size()) + 1;
  for (std::size_t i = 0; ok && i < t.shape.size(); ++i) ok = a.shape(i + 1) == t.shape[i];
  if (!ok) {
    std::string want = "(" + std::to_string(n);
    for (auto d : t.shape) want += ", " + std::to_string(d);
    want += t.shape.empty() ? ",)" : ")";
    throw std::runtime_error("output '" + t.name + "' has shape " + shape_of(a) +
                             "; expected " + want);
  }
  if (!a.dtype().equal(t.dtype)) {
    throw std::runtime_error("output '" + t.name + "' has dtype " +
                             py::str(a.dtype()).cast<std::string>() + "; expected " +
                             py::str(t.dtype).cast<std::string>());
  }
  if (t.checks_finite()) {
    py::array c = py::array::ensure(a, py::array::c_style);
    if (!all_finite(c.data(), static_cast<std::size_t>(c.size()), t.kind)) {
      throw std::runtime_error("output '" + t.name + "' contains NaN or Inf (finite check)");
    }
  }
  return a;
}

}  // namespace

python_backend::python_backend(py::object fn, std::vector<tensor_spec> inputs,
                               std::vector<tensor_spec> outputs)
    : fn_(std::move(fn)),
      inputs_(std::move(inputs)),
      outputs_(std::move(outputs)),
      dict_inputs_(inputs_.size() > 1),
      dict_outputs_(outputs_.size() > 1) {}

python_backend::~python_backend() {
  py::gil_scoped_acquire gil;
  fn_ = py::object();
  for (auto& t : inputs_) t.dtype = py::dtype();
  for (auto& t : outputs_) t.dtype = py::dtype();
}

void python_backend::discard_result(void* result) noexcept {
  py::gil_scoped_acquire gil;
  Py_XDECREF(static_cast<PyObject*>(result));
}

void python_backend::run(batch& b) {
  keep_thread_state();
  py::gil_scoped_acquire gil;
  try {
    run_locked(b);
  } catch (py::error_already_set& e) {
    std::string msg = describe(e);
    throw std::runtime_error(msg);
  }
}

void python_backend::run_locked(batch& b) {
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
  // Every row gets one reference to the batch's outputs (the array, or a tuple of the arrays
  // for several outputs) and its row number; the loop makes each answer from them when it
  // drains the row. No per-row Python here: the loop waits for the GIL while a worker holds it.
  py::object shared;
  if (arrays.size() == 1) {
    shared = arrays[0];
  } else {
    py::tuple t(arrays.size());
    for (std::size_t k = 0; k < arrays.size(); ++k) t[k] = arrays[k];
    shared = std::move(t);
  }
  for (std::size_t i = 0; i < b.size; ++i) {
    Py_INCREF(shared.ptr());
    b.requests[i]->result = shared.ptr();
    b.requests[i]->row = static_cast<std::uint32_t>(i);
  }
}

std::vector<py::array> python_backend::check_outputs(const py::object& out, py::ssize_t n) {
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
    for (std::size_t k = 0; k < outputs_.size(); ++k) {
      arrays.push_back(checked(outputs_[k], s[k], n));
    }
    return arrays;
  }
  throw std::runtime_error("model returned " + type_name(out) + "; expected a dict of " +
                           std::to_string(outputs_.size()) + " outputs");
}

}  // namespace inferline::bindings
