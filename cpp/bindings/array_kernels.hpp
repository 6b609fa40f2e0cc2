// numpy-facing calls of the native kernels and the native model: shape checks that keep a wrong
// call from reading or writing out of bounds, output allocation, the GIL released around the
// kernel. Argument checks with helpful messages live in python/inferline/kernels.py.
#pragma once

#include <pybind11/numpy.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "inferline/kernels/math.hpp"
#include "inferline/native/native_model.hpp"

namespace inferline::bindings {

/// A C-contiguous float32 array (other inputs are converted on the way in).
using f32_array = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;
/// A C-contiguous uint16 array (half or bfloat16 bit patterns).
using u16_array =
    pybind11::array_t<std::uint16_t, pybind11::array::c_style | pybind11::array::forcecast>;
/// A C-contiguous uint8 array (images).
using u8_array =
    pybind11::array_t<std::uint8_t, pybind11::array::c_style | pybind11::array::forcecast>;

// Every function below is called with the GIL held, releases it around the kernel, and only
// touches buffers of arrays its frame holds alive: safe from any Python thread. ValueError for
// shapes that do not fit.

/// Throws ValueError(msg) unless ok.
void require(bool ok, const std::string& msg);
/// The shape of `a` as a vector.
std::vector<pybind11::ssize_t> shape_of(const pybind11::array& a);
/// Rows x last axis of an array with at least one dimension.
std::pair<std::size_t, std::size_t> rows_cols(const pybind11::array& a, const char* what);

/// The outputs of a top-k over the last dimension of `x`, allocated (values and int64 indices,
/// `x`'s shape with k last), with `x` seen as rows x cols. Throws ValueError when k exceeds
/// the last dimension; `what` names the call. Needs the GIL.
struct topk_arrays {
  std::size_t rows;
  std::size_t cols;
  f32_array values;
  pybind11::array_t<std::int64_t> indices;
};
topk_arrays make_topk_arrays(const f32_array& x, std::size_t k, const char* what);

/// Checked dimensions of y = x W (+ bias) for either weight layout.
struct linear_dims {
  std::size_t m, n, k;  ///< rows of x, outputs, inputs
  const float* bias;    ///< the bias data, or nullptr
};
/// Checks x, w and bias for a linear of `layout`; `what` names the call in messages.
linear_dims check_linear(const f32_array& x, const f32_array& w,
                         const std::optional<f32_array>& bias, kernels::weight_layout layout,
                         const std::string& what);

/// act(x W^T + b) (out_in) or act(x W + b) (in_out).
f32_array linear(const f32_array& x, const f32_array& w, const std::optional<f32_array>& bias,
                 kernels::activation act, kernels::weight_layout layout);
/// Softmax over the last axis.
f32_array softmax(const f32_array& x);
/// Layer norm over the last axis with optional affine parameters.
f32_array layer_norm(const f32_array& x, const std::optional<f32_array>& gamma,
                     const std::optional<f32_array>& beta, float eps);
/// x / max(||x||, eps) over the last axis.
f32_array l2_normalize(const f32_array& x, float eps);
/// [B, T, H] -> [B, H] mean over tokens weighted by an optional mask [B, T].
f32_array masked_mean_pool(const f32_array& x, const std::optional<f32_array>& mask);
/// (values, int64 indices) of the k largest along the last axis, descending.
pybind11::tuple topk(const f32_array& x, std::size_t k);
/// uint8 [N, H, W, C] -> (x/255 - mean) / std as float32 NCHW or NHWC.
f32_array image_to_float(const u8_array& img, const std::vector<float>& mean,
                         const std::vector<float>& std_dev, kernels::image_layout layout);
/// float32 -> IEEE half bits.
u16_array f32_to_f16(const f32_array& x);
/// float32 -> bfloat16 bits.
u16_array f32_to_bf16(const f32_array& x);
/// IEEE half (float16 or uint16 bits) -> float32.
f32_array f16_to_f32(const pybind11::array& bits);
/// bfloat16 bits (uint16) -> float32.
f32_array bf16_to_f32(const pybind11::array& bits);

/// Runs a batch through a native model outside the engine: an array, or (values, indices)
/// after a final topk.
pybind11::object forward(kernels::native_model& model, const pybind11::array& x,
                         const std::optional<pybind11::array>& mask);

}  // namespace inferline::bindings
