// A wrapper around a native backend that checks outputs declared `finite` after each batch, as
// the Python backend checks its own outputs.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/finite.hpp"
#include "tensor_spec.hpp"

namespace inferline::bindings {

/// Runs the inner backend, then scans every answered row of each output declared finite: a NaN
/// or Inf fails the whole batch with a model error. Thread-safe as the inner backend is (the
/// checks read only the batch and immutable state).
class finite_checked_backend final : public backend {
 public:
  /// Wraps `inner`; `outputs` are the declared output specs (those without a float kind or
  /// without `finite` are not checked). Reads the specs only; no GIL needed.
  finite_checked_backend(std::shared_ptr<backend> inner, const std::vector<tensor_spec>& outputs);

  /// Runs the inner backend, then the checks (throws on the first bad row).
  void run(batch& b) override;
  /// Forwards to the inner backend.
  void on_worker_start(int instance) override { inner_->on_worker_start(instance); }
  /// Forwards to the inner backend.
  void discard_result(void* result) noexcept override { inner_->discard_result(result); }
  /// Forwards to the inner backend.
  void on_shutdown() noexcept override { inner_->on_shutdown(); }
  /// The inner backend's platform.
  std::string platform() const override { return inner_->platform(); }

 private:
  struct check {
    std::size_t index, item_bytes, count;
    float_kind kind;
    std::string name;
  };
  std::shared_ptr<backend> inner_;
  std::vector<check> checks_;
};

}  // namespace inferline::bindings
