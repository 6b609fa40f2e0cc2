// Text encoder bindings: `_core.kernels.TextEncoderConfig` and `_core.kernels.TextEncoder`, a
// native backend the scheduler accepts like NativeModel, with encode() for tests and tools.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>

#include "bindings.hpp"
#include "inferline/backend.hpp"
#include "inferline/encoder/text_encoder_backend.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

using encoder::text_encoder_backend;
using encoder::text_encoder_options;
using i32_array = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>;

py::array_t<float> encode(text_encoder_backend& model, const i32_array& input_ids,
                          const i32_array& lengths) {
  if (input_ids.ndim() != 2) {
    throw py::value_error("encode: input_ids must be int32 [n, seq], got " +
                          std::to_string(input_ids.ndim()) + " dimensions");
  }
  if (lengths.ndim() != 1 || lengths.shape(0) != input_ids.shape(0)) {
    throw py::value_error("encode: lengths must be int32 [n] with n = " +
                          std::to_string(input_ids.shape(0)) + " (rows of input_ids)");
  }
  const auto n = static_cast<std::size_t>(input_ids.shape(0));
  const auto stride = static_cast<std::size_t>(input_ids.shape(1));
  const auto hidden = static_cast<py::ssize_t>(model.config().hidden);
  py::array_t<float> out({static_cast<py::ssize_t>(n), hidden});
  if (n == 0) return out;
  const std::int32_t* ids = input_ids.data();
  const std::int32_t* lens = lengths.data();
  float* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    model.encode(ids, stride, lens, n, op);
  }
  return out;
}

}  // namespace

void register_encoder(py::module_& m) {
  py::module_ km = m.attr("kernels").cast<py::module_>();
  py::class_<text_encoder_options>(km, "TextEncoderConfig", "How to build a TextEncoder.")
      .def(py::init<>())
      .def_readwrite("model_dir", &text_encoder_options::model_dir,
                     "folder with model.safetensors and config.json (BERT)")
      .def_readwrite("device", &text_encoder_options::device, "'cpu', 'cuda' or 'cuda:N'")
      .def_readwrite("blas_threads", &text_encoder_options::blas_threads,
                     "> 0: OpenBLAS's (process-wide) thread count")
      .def_readwrite("max_seq_len", &text_encoder_options::max_seq_len)
      .def_readwrite("max_batch_size", &text_encoder_options::max_batch_size);
  py::class_<text_encoder_backend, backend, std::shared_ptr<text_encoder_backend>>(
      km, "TextEncoder",
      "A BERT sentence encoder (mean pooling, L2 norm) on native kernels; pass it to the engine "
      "as the model with inputs input_ids INT32 [max_seq_len], length INT32 [1] and output "
      "embedding FP32 [hidden] (runs with no GIL).")
      .def(py::init([](const text_encoder_options& c) {
             py::gil_scoped_release nogil;  // reads config.json and the weights: pure C++
             return std::make_shared<text_encoder_backend>(c);
           }),
           py::arg("config"))
      .def("encode", &encode, py::arg("input_ids"), py::arg("lengths"),
           "Encodes rows of token ids (int32 [n, seq], each row's first lengths[i] tokens) "
           "outside the engine: float32 [n, hidden], L2-normalised.")
      .def_property_readonly("hidden",
                             [](const text_encoder_backend& t) { return t.config().hidden; })
      .def_property_readonly("max_seq_len",
                             [](const text_encoder_backend& t) { return t.config().max_seq_len; })
      .def_property_readonly(
          "max_batch_size", [](const text_encoder_backend& t) { return t.config().max_batch_size; })
      .def_property_readonly("device",
                             [](const text_encoder_backend& t) { return t.options().device; })
      .def("token_stats", [](const text_encoder_backend& t) {
        const encoder::token_counts c = t.token_stats();
        py::dict d;
        d["real_tokens"] = c.real_tokens;
        d["computed_tokens"] = c.computed_tokens;
        d["batches"] = c.batches;
        d["largest_batch_tokens"] = c.largest_batch_tokens;
        return d;
      });
}

}  // namespace inferline::bindings
