// One declared tensor as the bindings see it (_core.TensorSpec): name, numpy dtype, per-item
// shape, finite flag, and what C++ derives from them (float kind, bytes per item).
#pragma once

#include <pybind11/numpy.h>

#include <cstddef>
#include <string>
#include <vector>

#include "inferline/finite.hpp"

namespace inferline::bindings {

/// One model input or output, per item (no batch dimension). Immutable once made; copying or
/// destroying one touches a Python object (its dtype), so the GIL must be held for both.
struct tensor_spec {
  std::string name;                   ///< the tensor's name (dict key for several tensors)
  pybind11::dtype dtype;              ///< numpy dtype of its elements (BF16: uint16)
  std::vector<pybind11::ssize_t> shape;  ///< per-item dimensions, each >= 1
  bool finite = false;                ///< refuse (inputs) or fail on (outputs) NaN and Inf
  bool bf16 = false;                  ///< uint16 elements that carry bfloat16 bit patterns
  float_kind kind = float_kind::none;  ///< derived: which float the finite check reads
  std::size_t count = 1;              ///< derived: elements per item
  std::size_t item_bytes = 0;         ///< derived: bytes per item

  /// True when `finite` is set and the elements are floats (so the check applies).
  bool checks_finite() const noexcept { return finite && kind != float_kind::none; }
};

/// Builds a spec, deriving the float kind from the dtype (float16/32/64) or from `bf16`.
/// Throws std::invalid_argument (ValueError in Python) for an empty name, an object or string
/// dtype (BYTES cannot be batched natively), a dimension < 1, more than limits.max_ndim
/// dimensions, or `bf16` with a dtype other than uint16. GIL required.
tensor_spec make_tensor_spec(std::string name, const pybind11::object& dtype,
                             const std::vector<pybind11::ssize_t>& shape, bool finite, bool bf16);

/// "(2, 3)", "(4,)" or "()" for a shape. Thread-safe.
std::string shape_str(const std::vector<pybind11::ssize_t>& shape);

/// True when `x` is a numpy array of exactly the spec's dtype and shape, C-contiguous: the
/// input the scheduler copies as is. GIL required.
bool is_exact(const tensor_spec& t, pybind11::handle x);

/// True when `x` is a numpy array of the spec's dtype with a leading batch dimension and then
/// the spec's shape, C-contiguous: the rows a batch call copies as they are. `*rows` is then
/// its leading dimension (which may be 0). GIL required.
bool is_exact_rows(const tensor_spec& t, pybind11::handle x, pybind11::ssize_t* rows);

/// Why `x` is not rows of `t`: "has dtype float64 and shape (4,); expected float32 and shape
/// (N, 4) (a leading batch dimension N)". GIL required.
std::string mismatch_rows(const tensor_spec& t, pybind11::handle x);

/// Why `x` is not exact for `t`, as "has dtype float64 and shape (3,); expected float32 and
/// shape (4,)" (or the type when `x` is not an array). GIL required.
std::string mismatch(const tensor_spec& t, pybind11::handle x);

}  // namespace inferline::bindings
