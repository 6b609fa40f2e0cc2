// numpy-facing calls of the CUDA kernels (see cuda_array_kernels.hpp). Compiled only with CUDA.
#include "cuda_array_kernels.hpp"

#include <stdexcept>

#include "inferline/build_info.hpp"
#include "inferline/kernels/cuda_api.hpp"

namespace py = pybind11;

namespace inferline::bindings {

namespace k = inferline::kernels;
namespace cu = inferline::cuda;

namespace {


void require_gpu() {
  if (cuda_device_count() == 0) throw std::runtime_error("no CUDA device is visible");
}

// The CUDA kernels on numpy arrays: upload, launch on the default stream, download. For tests
// and comparisons, not for serving (every call allocates device memory).
}  // namespace

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

namespace {

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

}  // namespace

f32_array cuda_softmax(const f32_array& x) {
  return cuda_rowwise(x, "cuda_softmax", [](const float* in, float* out, std::size_t r,
                                            std::size_t c) { cu::softmax(in, out, r, c); });
}

f32_array cuda_layer_norm(const f32_array& x, float eps) {
  return cuda_rowwise(x, "cuda_layer_norm",
                      [eps](const float* in, float* out, std::size_t r, std::size_t c) {
                        cu::layer_norm(in, nullptr, nullptr, out, r, c, eps);
                      });
}

f32_array cuda_l2_normalize(const f32_array& x, float eps) {
  return cuda_rowwise(x, "cuda_l2_normalize",
                      [eps](const float* in, float* out, std::size_t r, std::size_t c) {
                        cu::l2_normalize(in, out, r, c, eps);
                      });
}

py::tuple cuda_topk(const f32_array& x, std::size_t kk) {
  require_gpu();
  topk_arrays out = make_topk_arrays(x, kk, "cuda_topk");
  const std::size_t rows = out.rows;
  float* vp = out.values.mutable_data();
  std::int64_t* ip = out.indices.mutable_data();
  {
    py::gil_scoped_release nogil;  // only touches buffers of arrays held alive by this frame
    cu::device_buffer<float> dx(x.data(), rows * out.cols), dv(rows * kk);
    cu::device_buffer<std::int64_t> di(rows * kk);
    cu::topk(dx.data(), rows, out.cols, kk, dv.data(), di.data());
    dv.download(vp);
    di.download(ip);
  }
  return py::make_tuple(out.values, out.indices);
}

}  // namespace inferline::bindings
