// The native model's plan, private to cpp/src/native: a planned op (step), an instance's
// scratch memory (workspace), and the small helpers that planning, the executors and the
// messages share. exec_cpu.cpp and exec_cuda.cpp run a plan; plan.cpp builds it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inferline/native/native_model.hpp"

namespace inferline::native {

/// One planned op: its spec, shapes per item and resolved weights (host, and device on CUDA).
/// Immutable after planning (upload_to_device fills dw/db once, before any run).
struct native_model::step {
  op_spec spec;
  std::size_t seq_in = 1, width_in = 0, seq_out = 1, width_out = 0;
  const float* w = nullptr;   // host weights: in the mapping, or in owned_
  const float* b = nullptr;
  const float* dw = nullptr;  // device copies (CUDA only)
  const float* db = nullptr;
  float eps = 0.0f;
  std::size_t image_h = 0, image_w = 0, image_c = 0;
};

/// Scratch memory of one instance; grows to the largest batch seen, never shrinks. Used by one
/// thread at a time (its slot's mutex).
struct native_model::workspace {
  std::size_t capacity = 0;  // items the host buffers hold
  std::vector<float> a, b, mask;
  std::unique_ptr<device_workspace, device_workspace_deleter> device;  // CUDA runs only
};

namespace detail {

/// "linear", "softmax", ... Pure; thread-safe.
const char* op_name(op_kind k) noexcept;

/// "FP32", "INT64", ... (Open Inference Protocol names). Pure; thread-safe.
const char* type_name(tensor_type t) noexcept;

/// Bytes per element of `t`. Pure; thread-safe.
std::size_t type_size(tensor_type t) noexcept;

/// "[2, 3]". Pure; thread-safe.
std::string shape_str(const std::vector<std::size_t>& shape);

/// "native model op 3 (layer_norm)", the prefix of every per-op message. Thread-safe.
std::string op_where(std::size_t index, op_kind kind);

/// a·b, or std::invalid_argument saying that `what` is too large when the product does not fit
/// in size_t. Pure; thread-safe.
std::size_t checked_mul(std::size_t a, std::size_t b, const char* what);

/// Writes `count` mask values as float32 to `out`: FP32 masks are copied, INT64 ones converted
/// (their bytes need not be aligned). Thread-safe for distinct outputs.
void mask_to_f32(const std::byte* mask, tensor_type type, std::size_t count, float* out);

}  // namespace detail
}  // namespace inferline::native
