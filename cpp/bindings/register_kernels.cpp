// Kernel bindings: the `_core.kernels` submodule with numpy-facing CPU kernels (and CUDA ones
// when compiled in), their enums, and the native model backend. Declarations only: the calls
// live in array_kernels.cpp and cuda_array_kernels.cpp; argument checking with helpful
// messages lives in python/inferline/kernels.py and native.py.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "array_kernels.hpp"
#include "bindings.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/native/native_model.hpp"
#ifdef INFERLINE_HAVE_CUDA
#include "cuda_array_kernels.hpp"
#endif

namespace py = pybind11;

namespace inferline::bindings {

namespace k = inferline::kernels;

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
  km.def("f32_to_f16", &f32_to_f16, py::arg("x"),
         "float32 -> IEEE half bits (uint16), round to nearest even.");
  km.def("f16_to_f32", &f16_to_f32, py::arg("bits"),
         "IEEE half (float16 or uint16 bits) -> float32.");
  km.def("f32_to_bf16", &f32_to_bf16, py::arg("x"),
         "float32 -> bfloat16 bits (uint16), round to nearest even.");
  km.def("bf16_to_f32", &bf16_to_f32, py::arg("bits"),
         "bfloat16 bits (uint16) -> float32.");
  km.def("set_blas_threads", &k::set_blas_threads, py::arg("threads"),
         "OpenBLAS threads for every later matmul in the process.");
  km.def("blas_threads", &k::blas_threads, "OpenBLAS's current thread count.");
  km.def("blas_config", &k::blas_config, "The linked BLAS library's configuration string.");

#ifdef INFERLINE_HAVE_CUDA  // the CUDA helpers exist only in CUDA builds
  km.def("cuda_linear", &cuda_linear, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
         py::arg("activation") = k::activation::none,
         py::arg("layout") = k::weight_layout::out_in, "linear on the GPU (test helper).");
  km.def("cuda_softmax", &cuda_softmax, py::arg("x"), "softmax on the GPU (test helper).");
  km.def("cuda_layer_norm", &cuda_layer_norm, py::arg("x"), py::arg("eps") = 1e-5f,
         "layer norm (no affine) on the GPU (test helper).");
  km.def("cuda_l2_normalize", &cuda_l2_normalize, py::arg("x"), py::arg("eps") = 1e-12f,
         "L2 normalisation on the GPU (test helper).");
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
