// The backend that runs a Python callable on a batch: zero-copy numpy views of the pooled input
// block in, checked numpy arrays out, shared by the batch's requests (one row each).
#pragma once

#include <pybind11/numpy.h>

#include <string>
#include <vector>

#include "inferline/backend.hpp"
#include "tensor_spec.hpp"

namespace inferline::bindings {

/// Runs a Python callable on each batch. `run` is called on worker threads (several with
/// instances > 1) and takes the GIL only around the call and the output checks; each request
/// then carries (`request::result`, `request::row`) one reference to the batch's outputs, an
/// array (one output) or a tuple of arrays in output order, each C-contiguous. Everything
/// else it reads is immutable after construction. Outputs are checked against the declared
/// specs (dtype, shape, finite); a mismatch fails the batch with a message naming the output.
class python_backend final : public backend {
 public:
  /// `fn` takes one array (one input) or a dict name -> array (several inputs) with a leading
  /// batch dimension. GIL required.
  python_backend(pybind11::object fn, std::vector<tensor_spec> inputs,
                 std::vector<tensor_spec> outputs);
  /// Drops the callable and the dtypes under the GIL (any thread).
  ~python_backend() override;

  /// "python". Thread-safe.
  std::string platform() const override { return "python"; }
  /// Releases a row payload that was never answered (takes the GIL). Thread-safe.
  void discard_result(void* result) noexcept override;
  /// Calls the model on `b` (takes the GIL); a Python exception becomes the batch's error.
  void run(batch& b) override;

 private:
  void run_locked(batch& b);
  std::vector<pybind11::array> check_outputs(const pybind11::object& out, pybind11::ssize_t n);

  pybind11::object fn_;
  std::vector<tensor_spec> inputs_;
  std::vector<tensor_spec> outputs_;
  bool dict_inputs_;
  bool dict_outputs_;
};

}  // namespace inferline::bindings
