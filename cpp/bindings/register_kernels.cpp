// Kernel bindings: the `_core.kernels` submodule with numpy-facing CPU kernels (and CUDA ones
// when compiled in), their enums, and the native model backend. Conversion only, no logic:
// argument checking with helpful messages lives in python/inferline/kernels.py and native.py;
// the checks here only keep a wrong call from reading or writing out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "inferline/build_info.hpp"
#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/cuda_api.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/native_model.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"
#include "inferline/kernels/topk.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

namespace k = inferline::kernels;

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u16_array = py::array_t<std::uint16_t, py::array::c_style | py::array::forcecast>;
using u8_array = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return {a.shape(), a.shape() + a.ndim()};
}

// Rows × last axis of an array with at least one dimension.
std::pair<std::size_t, std::size_t> rows_cols(const py::array& a, const char* what) {
  require(a.ndim() >= 1, std::string(what) + ": expected at least one dimension");
  const auto cols = static_cast<std::size_t>(a.shape(a.ndim() - 1));
  return {cols == 0 ? 0 : static_cast<std::size_t>(a.size()) / cols, cols};
}

const float* optional_vector(const std::optional<f32_array>& v, std::size_t n, const char* what) {
  if (!v) return nullptr;
  require(v->ndim() == 1 && static_cast<std::size_t>(v->shape(0)) == n,
          std::string(what) + ": expected shape (" + std::to_string(n) + ",)");
  return v->data();
}

// Checked dimensions of y = x W (+ bias) for either weight layout.
struct linear_dims {
  std::size_t m, n, k;
  const float* bias;
};

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

py::tuple topk(const f32_array& x, std::size_t kk) {
  const auto [rows, cols] = rows_cols(x, "topk");
  require(kk <= cols, "topk: k exceeds the last dimension");
  std::vector<py::ssize_t> shape = shape_of(x);
  shape.back() = static_cast<py::ssize_t>(kk);
  f32_array values(shape);
  py::array_t<std::int64_t> indices(shape);
  float* vp = values.mutable_data();
  std::int64_t* ip = indices.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    k::topk(x.data(), rows, cols, kk, vp, ip);
  }
  return py::make_tuple(values, indices);
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

// ---- the native model -----------------------------------------------------------------------

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

#ifdef INFERLINE_HAVE_CUDA
namespace cu = inferline::cuda;

void require_gpu() {
  if (cuda_device_count() == 0) throw std::runtime_error("no CUDA device is visible");
}

// The CUDA kernels on numpy arrays: upload, launch on the default stream, download. For tests
// and comparisons, not for serving (every call allocates device memory).
f32_array cuda_linear(const f32_array& x, const f32_array& w, const std::optional<f32_array>& bias,
                      k::activation act, k::weight_layout layout) {
  require_gpu();
  const auto [m, n, kk, b] = check_linear(x, w, bias, layout, "cuda_linear");
  f32_array y({m, n});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    cu::device_buffer<float> dx(x.data(), m * kk), dw(w.data(), n * kk), dy(m * n);
    cu::device_buffer<float> db = b ? cu::device_buffer<float>(b, n) : cu::device_buffer<float>();
    cu::linear(dx.data(), dw.data(), b ? db.data() : nullptr, dy.data(), m, n, kk, layout, act);
    dy.download(yp);
  }
  return y;
}

template <class Launch>
f32_array cuda_rowwise(const f32_array& x, const char* what, Launch launch) {
  require_gpu();
  const auto [rows, cols] = rows_cols(x, what);
  f32_array y(shape_of(x));
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    cu::device_buffer<float> dx(x.data(), rows * cols), dy(rows * cols);
    launch(dx.data(), dy.data(), rows, cols);
    dy.download(yp);
  }
  return y;
}

py::tuple cuda_topk(const f32_array& x, std::size_t kk) {
  require_gpu();
  const auto [rows, cols] = rows_cols(x, "cuda_topk");
  require(kk <= cols, "cuda_topk: k exceeds the last dimension");
  std::vector<py::ssize_t> shape = shape_of(x);
  shape.back() = static_cast<py::ssize_t>(kk);
  f32_array values(shape);
  py::array_t<std::int64_t> indices(shape);
  float* vp = values.mutable_data();
  std::int64_t* ip = indices.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    cu::device_buffer<float> dx(x.data(), rows * cols), dv(rows * kk);
    cu::device_buffer<std::int64_t> di(rows * kk);
    cu::topk(dx.data(), rows, cols, kk, dv.data(), di.data());
    dv.download(vp);
    di.download(ip);
  }
  return py::make_tuple(values, indices);
}
#endif

}  // namespace

void register_kernels(py::module_& m) {
  py::module_ km = m.def_submodule("kernels", "Native kernels and the native model (private).");

  py::enum_<k::activation>(km, "Activation", "Activation fused into linear.")
      .value("none", k::activation::none)
      .value("relu", k::activation::relu)
      .value("gelu", k::activation::gelu, "exact (erf) GELU")
      .value("gelu_tanh", k::activation::gelu_tanh, "tanh-approximation GELU");
  py::enum_<k::weight_layout>(km, "WeightLayout", "How a linear weight is stored.")
      .value("out_in", k::weight_layout::out_in, "[out, in], PyTorch nn.Linear")
      .value("in_out", k::weight_layout::in_out, "[in, out]");
  py::enum_<k::image_layout>(km, "ImageLayout", "Output order of image_to_float.")
      .value("nhwc", k::image_layout::nhwc)
      .value("nchw", k::image_layout::nchw);
  py::enum_<k::op_kind>(km, "OpKind", "What one native model step does.")
      .value("linear", k::op_kind::linear)
      .value("activation", k::op_kind::activation)
      .value("softmax", k::op_kind::softmax)
      .value("layer_norm", k::op_kind::layer_norm)
      .value("l2_normalize", k::op_kind::l2_normalize)
      .value("mean_pool", k::op_kind::mean_pool)
      .value("topk", k::op_kind::topk)
      .value("image_to_float", k::op_kind::image_to_float);
  py::enum_<k::tensor_type>(km, "TensorType", "Element type of a native model tensor.")
      .value("f32", k::tensor_type::f32)
      .value("f16", k::tensor_type::f16)
      .value("bf16", k::tensor_type::bf16)
      .value("u8", k::tensor_type::u8)
      .value("i64", k::tensor_type::i64);

  km.def("linear", &linear, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
         py::arg("activation") = k::activation::none,
         py::arg("layout") = k::weight_layout::out_in,
         "act(x @ W.T + b) (out_in) or act(x @ W + b) (in_out): OpenBLAS + fused epilogue.");
  km.def("softmax", &softmax, py::arg("x"), "Softmax over the last axis.");
  km.def("layer_norm", &layer_norm, py::arg("x"), py::arg("gamma") = py::none(),
         py::arg("beta") = py::none(), py::arg("eps") = 1e-5f, "Layer norm over the last axis.");
  km.def("l2_normalize", &l2_normalize, py::arg("x"), py::arg("eps") = 1e-12f,
         "x / max(||x||, eps) over the last axis.");
  km.def("masked_mean_pool", &masked_mean_pool, py::arg("x"), py::arg("mask") = py::none(),
         "[B, T, H] -> [B, H] mean over tokens weighted by mask [B, T].");
  km.def("topk", &topk, py::arg("x"), py::arg("k"),
         "(values, int64 indices) of the k largest along the last axis, descending.");
  km.def("image_to_float", &image_to_float, py::arg("image"), py::arg("mean"), py::arg("std"),
         py::arg("layout") = k::image_layout::nchw,
         "uint8 [N, H, W, C] -> (x/255 - mean) / std as float32 NCHW or NHWC.");
  km.def("f32_to_f16", &narrow<k::convert_f32_to_f16>, py::arg("x"),
         "float32 -> IEEE half bits (uint16), round to nearest even.");
  km.def("f16_to_f32", &widen<k::convert_f16_to_f32>, py::arg("bits"),
         "IEEE half (float16 or uint16 bits) -> float32.");
  km.def("f32_to_bf16", &narrow<k::convert_f32_to_bf16>, py::arg("x"),
         "float32 -> bfloat16 bits (uint16), round to nearest even.");
  km.def("bf16_to_f32", &widen<k::convert_bf16_to_f32>, py::arg("bits"),
         "bfloat16 bits (uint16) -> float32.");
  km.def("set_blas_threads", &k::set_blas_threads, py::arg("threads"),
         "OpenBLAS threads for every later matmul in the process.");
  km.def("blas_threads", &k::blas_threads, "OpenBLAS's current thread count.");
  km.def("blas_config", &k::blas_config, "The linked BLAS library's configuration string.");

#ifdef INFERLINE_HAVE_CUDA
  km.def("cuda_linear", &cuda_linear, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
         py::arg("activation") = k::activation::none,
         py::arg("layout") = k::weight_layout::out_in, "linear on the GPU (test helper).");
  km.def(
      "cuda_softmax",
      [](const f32_array& x) {
        return cuda_rowwise(x, "cuda_softmax", [](const float* in, float* out, std::size_t r,
                                                  std::size_t c) { cu::softmax(in, out, r, c); });
      },
      py::arg("x"), "softmax on the GPU (test helper).");
  km.def(
      "cuda_layer_norm",
      [](const f32_array& x, float eps) {
        return cuda_rowwise(x, "cuda_layer_norm",
                            [eps](const float* in, float* out, std::size_t r, std::size_t c) {
                              cu::layer_norm(in, nullptr, nullptr, out, r, c, eps);
                            });
      },
      py::arg("x"), py::arg("eps") = 1e-5f, "layer norm (no affine) on the GPU (test helper).");
  km.def(
      "cuda_l2_normalize",
      [](const f32_array& x, float eps) {
        return cuda_rowwise(x, "cuda_l2_normalize",
                            [eps](const float* in, float* out, std::size_t r, std::size_t c) {
                              cu::l2_normalize(in, out, r, c, eps);
                            });
      },
      py::arg("x"), py::arg("eps") = 1e-12f, "L2 normalisation on the GPU (test helper).");
  km.def("cuda_topk", &cuda_topk, py::arg("x"), py::arg("k"), "top-k on the GPU (test helper).");
#endif

  py::class_<k::op_spec>(km, "NativeOp", "One step of a native model.")
      .def(py::init<>())
      .def_readwrite("kind", &k::op_spec::kind)
      .def_readwrite("weight", &k::op_spec::weight)
      .def_readwrite("bias", &k::op_spec::bias)
      .def_readwrite("activation", &k::op_spec::act)
      .def_readwrite("layout", &k::op_spec::layout)
      .def_readwrite("eps", &k::op_spec::eps)
      .def_readwrite("k", &k::op_spec::k)
      .def_readwrite("mean", &k::op_spec::mean)
      .def_readwrite("std", &k::op_spec::std_dev)
      .def_readwrite("image_layout", &k::op_spec::image_out);
  py::class_<k::tensor_desc>(km, "TensorDesc", "A native model input or output per item.")
      .def(py::init([](std::string name, k::tensor_type type, std::vector<std::size_t> shape) {
             return k::tensor_desc{std::move(name), type, std::move(shape)};
           }),
           py::arg("name"), py::arg("type"), py::arg("shape"))
      .def_readwrite("name", &k::tensor_desc::name)
      .def_readwrite("type", &k::tensor_desc::type)
      .def_readwrite("shape", &k::tensor_desc::shape);
  py::class_<k::native_model_config>(km, "NativeModelConfig", "How to build a NativeModel.")
      .def(py::init<>())
      .def_readwrite("weights_path", &k::native_model_config::weights_path)
      .def_readwrite("ops", &k::native_model_config::ops)
      .def_readwrite("inputs", &k::native_model_config::inputs)
      .def_readwrite("outputs", &k::native_model_config::outputs)
      .def_readwrite("device", &k::native_model_config::device)
      .def_readwrite("allow_cpu_fallback", &k::native_model_config::allow_cpu_fallback)
      .def_readwrite("max_batch_size", &k::native_model_config::max_batch_size)
      .def_readwrite("blas_threads", &k::native_model_config::blas_threads);
  py::class_<k::native_model, backend, std::shared_ptr<k::native_model>>(
      km, "NativeModel",
      "A model of native kernel ops; pass it to the engine as the model (runs with no GIL).")
      .def(py::init([](const k::native_model_config& c) {
             py::gil_scoped_release nogil;  // maps and parses the weights file: pure C++
             return std::make_shared<k::native_model>(c);
           }),
           py::arg("config"))
      .def("forward", &forward, py::arg("x"), py::arg("mask") = py::none(),
           "Runs a batch outside the engine: an array, or (values, indices) after a topk.")
      .def_property_readonly("device", &k::native_model::device)
      .def_property_readonly("fallback_reason", &k::native_model::fallback_reason)
      .def("describe", &k::native_model::describe);
}

}  // namespace inferline::bindings
