// numpy-facing calls of the native kernels and the native model (see array_kernels.hpp).
#include "array_kernels.hpp"

#include <string>

#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"
#include "inferline/kernels/topk.hpp"

namespace py = pybind11;

namespace inferline::bindings {

namespace k = inferline::kernels;

namespace {

const float* optional_vector(const std::optional<f32_array>& v, std::size_t n, const char* what) {
  if (!v) return nullptr;
  require(v->ndim() == 1 && static_cast<std::size_t>(v->shape(0)) == n,
          std::string(what) + ": expected shape (" + std::to_string(n) + ",)");
  return v->data();
}

}  // namespace

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return {a.shape(), a.shape() + a.ndim()};
}

std::pair<std::size_t, std::size_t> rows_cols(const py::array& a, const char* what) {
  require(a.ndim() >= 1, std::string(what) + ": expected at least one dimension");
  const auto cols = static_cast<std::size_t>(a.shape(a.ndim() - 1));
  return {cols == 0 ? 0 : static_cast<std::size_t>(a.size()) / cols, cols};
}

linear_dims check_linear(const f32_array& x, const f32_array& w,
                         const std::optional<f32_array>& bias, k::weight_layout layout,
                         const std::string& what) {
  require(x.ndim() == 2 && w.ndim() == 2, what + ": x and w must be 2-D");
  const auto m = static_cast<std::size_t>(x.shape(0));
  const auto kk = static_cast<std::size_t>(x.shape(1));
  const bool out_in = layout == k::weight_layout::out_in;
  require(static_cast<std::size_t>(w.shape(out_in ? 1 : 0)) == kk,
          what + ": w's input dimension does not match x");
  const auto n = static_cast<std::size_t>(w.shape(out_in ? 0 : 1));
  return {m, n, kk, optional_vector(bias, n, (what + ": bias").c_str())};
}

f32_array linear(const f32_array& x, const f32_array& w, const std::optional<f32_array>& bias,
                 k::activation act, k::weight_layout layout) {
  const linear_dims d = check_linear(x, w, bias, layout, "linear");
  f32_array y({d.m, d.n});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::linear(x.data(), w.data(), d.bias, yp, d.m, d.n, d.k, layout, act);
  }
  return y;
}

f32_array softmax(const f32_array& x) {
  const auto [rows, cols] = rows_cols(x, "softmax");
  f32_array y(shape_of(x));
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::softmax(x.data(), yp, rows, cols);
  }
  return y;
}

f32_array layer_norm(const f32_array& x, const std::optional<f32_array>& gamma,
                     const std::optional<f32_array>& beta, float eps) {
  const auto [rows, cols] = rows_cols(x, "layer_norm");
  const float* g = optional_vector(gamma, cols, "layer_norm: gamma");
  const float* b = optional_vector(beta, cols, "layer_norm: beta");
  f32_array y(shape_of(x));
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::layer_norm(x.data(), g, b, yp, rows, cols, eps);
  }
  return y;
}

f32_array l2_normalize(const f32_array& x, float eps) {
  const auto [rows, cols] = rows_cols(x, "l2_normalize");
  f32_array y(shape_of(x));
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::l2_normalize(x.data(), yp, rows, cols, eps);
  }
  return y;
}

f32_array masked_mean_pool(const f32_array& x, const std::optional<f32_array>& mask) {
  require(x.ndim() == 3, "masked_mean_pool: x must be [batch, tokens, hidden]");
  const auto bsz = static_cast<std::size_t>(x.shape(0));
  const auto t = static_cast<std::size_t>(x.shape(1));
  const auto h = static_cast<std::size_t>(x.shape(2));
  const float* mp = nullptr;
  if (mask) {
    require(mask->ndim() == 2 && static_cast<std::size_t>(mask->shape(0)) == bsz &&
                static_cast<std::size_t>(mask->shape(1)) == t,
            "masked_mean_pool: mask must be [batch, tokens]");
    mp = mask->data();
  }
  f32_array y({bsz, h});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::masked_mean_pool(x.data(), mp, yp, bsz, t, h);
  }
  return y;
}

topk_arrays make_topk_arrays(const f32_array& x, std::size_t kk, const char* what) {
  const auto [rows, cols] = rows_cols(x, what);
  require(kk <= cols, std::string(what) + ": k exceeds the last dimension");
  std::vector<py::ssize_t> shape = shape_of(x);
  shape.back() = static_cast<py::ssize_t>(kk);
  return {rows, cols, f32_array(shape), py::array_t<std::int64_t>(shape)};
}

py::tuple topk(const f32_array& x, std::size_t kk) {
  topk_arrays out = make_topk_arrays(x, kk, "topk");
  float* vp = out.values.mutable_data();
  std::int64_t* ip = out.indices.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::topk(x.data(), out.rows, out.cols, kk, vp, ip);
  }
  return py::make_tuple(out.values, out.indices);
}

f32_array image_to_float(const u8_array& img, const std::vector<float>& mean,
                         const std::vector<float>& std_dev, k::image_layout layout) {
  require(img.ndim() == 4, "image_to_float: image must be [n, h, w, c]");
  const auto n = static_cast<std::size_t>(img.shape(0));
  const auto h = static_cast<std::size_t>(img.shape(1));
  const auto w = static_cast<std::size_t>(img.shape(2));
  const auto c = static_cast<std::size_t>(img.shape(3));
  require(mean.size() == c && std_dev.size() == c,
          "image_to_float: mean and std need one value per channel");
  f32_array y = layout == k::image_layout::nchw ? f32_array({n, c, h, w}) : f32_array({n, h, w, c});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::image_u8_to_f32(img.data(), n, h, w, c, mean.data(), std_dev.data(), yp, layout);
  }
  return y;
}

namespace {

template <void (*fn)(const float*, std::uint16_t*, std::size_t)>
u16_array narrow(const f32_array& x) {
  u16_array y(shape_of(x));
  std::uint16_t* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    fn(x.data(), yp, static_cast<std::size_t>(x.size()));
  }
  return y;
}

template <void (*fn)(const std::uint16_t*, float*, std::size_t)>
f32_array widen(const py::array& bits) {
  // float16 arrays are taken by their bit patterns; anything else must already be uint16.
  require(bits.itemsize() == 2, "expected a float16 or uint16 array");
  const py::array c = py::array::ensure(bits, py::array::c_style);
  f32_array y(shape_of(c));
  float* yp = y.mutable_data();
  const auto* in = static_cast<const std::uint16_t*>(c.data());
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    fn(in, yp, static_cast<std::size_t>(c.size()));
  }
  return y;
}

}  // namespace

u16_array f32_to_f16(const f32_array& x) { return narrow<k::convert_f32_to_f16>(x); }
u16_array f32_to_bf16(const f32_array& x) { return narrow<k::convert_f32_to_bf16>(x); }
f32_array f16_to_f32(const py::array& bits) { return widen<k::convert_f16_to_f32>(bits); }
f32_array bf16_to_f32(const py::array& bits) { return widen<k::convert_bf16_to_f32>(bits); }

py::object forward(k::native_model& model, const py::array& x,
                   const std::optional<py::array>& mask) {
  const k::native_model_config& cfg = model.config();
  const py::array xc = py::array::ensure(x, py::array::c_style);
  require(xc.ndim() >= 1, "forward: x needs a leading batch dimension");
  const auto n = static_cast<std::size_t>(xc.shape(0));
  require(static_cast<std::size_t>(xc.nbytes()) == n * model.input_bytes(0),
          "forward: x must hold batch items of input '" + cfg.inputs[0].name + "' (" +
              std::to_string(model.input_bytes(0)) + " bytes each)");
  py::array mc;
  if (cfg.inputs.size() > 1) {
    require(mask.has_value(), "forward: the model needs its mask input");
    mc = py::array::ensure(*mask, py::array::c_style);
    require(static_cast<std::size_t>(mc.nbytes()) == n * model.input_bytes(1),
            "forward: mask must hold batch items of input '" + cfg.inputs[1].name + "'");
  }
  auto out_shape = [&](std::size_t i) {
    std::vector<py::ssize_t> s{static_cast<py::ssize_t>(n)};
    for (const std::size_t d : cfg.outputs[i].shape) s.push_back(static_cast<py::ssize_t>(d));
    return s;
  };
  f32_array values(out_shape(0));
  py::array_t<std::int64_t> indices;
  std::int64_t* ip = nullptr;
  if (cfg.outputs.size() > 1) {
    indices = py::array_t<std::int64_t>(out_shape(1));
    ip = indices.mutable_data();
  }
  float* vp = values.mutable_data();
  const void* xp = xc.data();
  const void* mp = mc ? mc.data() : nullptr;
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    model.forward(xp, mp, n, vp, ip);
  }
  if (cfg.outputs.size() > 1) return py::make_tuple(values, indices);
  return values;
}

}  // namespace inferline::bindings
