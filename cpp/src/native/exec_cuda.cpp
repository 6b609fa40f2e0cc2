// The native model's CUDA executor (compiled only in CUDA builds; exec_no_cuda.cpp otherwise):
// uploads the weights once, then runs a plan's steps through the CUDA launchers on one
// non-blocking stream per instance workspace.
#include <cstring>
#include <utility>

#include "inferline/kernels/cuda_api.hpp"
#include "plan.hpp"

namespace inferline::native {

namespace {

/// A stream owned by a scope. Not thread-safe.
struct scoped_stream {
  void* handle = cuda::stream_create();
  scoped_stream() = default;
  scoped_stream(const scoped_stream&) = delete;
  scoped_stream& operator=(const scoped_stream&) = delete;
  ~scoped_stream() { cuda::stream_destroy(handle); }
};

}  // namespace

/// Device scratch memory of one instance, with the stream its batches run on.
struct native_model::device_workspace {
  std::size_t capacity = 0;  // items the buffers hold
  scoped_stream stream;
  cuda::device_buffer<std::byte> d_in;
  cuda::device_buffer<float> d_mask, d_a, d_b, d_out;
  cuda::device_buffer<std::int64_t> d_idx;
};

void native_model::device_workspace_deleter::operator()(device_workspace* ws) const noexcept {
  delete ws;
}

void native_model::select_device() const { cuda::set_device(cuda_device_); }

void native_model::upload_to_device() {
  cuda::set_device(cuda_device_);
  // The copies go on a stream of their own and are waited for before the constructor returns:
  // a plain cudaMemcpy from pageable memory may return before its DMA has landed, and the
  // batches run on non-blocking streams that do not wait for the legacy default stream.
  const scoped_stream upload;
  auto copy = [&](const float* host, std::size_t count) -> const float* {
    if (host == nullptr) return nullptr;
    void* d = cuda::device_malloc(count * sizeof(float));
    device_weights_.push_back(d);
    cuda::copy_to_device(d, host, count * sizeof(float), upload.handle);
    return static_cast<const float*>(d);
  };
  for (step& s : steps_) {
    if (s.spec.kind == op_kind::linear) {
      s.dw = copy(s.w, s.width_in * s.width_out);
      s.db = copy(s.b, s.width_out);
    } else if (s.spec.kind == op_kind::layer_norm) {
      s.dw = copy(s.w, s.width_in);
      s.db = copy(s.b, s.width_in);
    }
  }
  cuda::stream_synchronize(upload.handle);
}

void native_model::free_device_weights() noexcept {
  for (void* p : device_weights_) cuda::device_free(p);
  device_weights_.clear();
}

void native_model::compute_cuda(workspace& host_ws, const std::byte* in, const std::byte* mask,
                                std::size_t n, float* out, std::int64_t* indices) {
  cuda::set_device(cuda_device_);
  if (!host_ws.device) host_ws.device.reset(new device_workspace());
  device_workspace& ws = *host_ws.device;
  if (n > ws.capacity) {
    ws.d_in = cuda::device_buffer<std::byte>(n * in_bytes_);
    ws.d_mask = cuda::device_buffer<float>(n * in_seq_);
    ws.d_a = cuda::device_buffer<float>(n * max_elems_);
    ws.d_b = cuda::device_buffer<float>(n * max_elems_);
    ws.d_out = cuda::device_buffer<float>(n * out_elems_[0]);
    ws.d_idx = cuda::device_buffer<std::int64_t>(n * out_elems_[1]);
    ws.capacity = n;
  }
  if (n > host_ws.capacity) {
    host_ws.mask.resize(n * in_seq_);
    host_ws.capacity = n;
  }
  void* st = ws.stream.handle;
  cuda::copy_to_device(ws.d_in.data(), in, n * in_bytes_, st);
  const tensor_type in_type = config_.inputs[0].type;
  const std::size_t in_elems = n * in_seq_ * in_width_;
  const float* cur = nullptr;
  if (in_type == tensor_type::f32) {
    cur = reinterpret_cast<const float*>(ws.d_in.data());
  } else if (in_type == tensor_type::f16) {
    cuda::convert_f16_to_f32(reinterpret_cast<const std::uint16_t*>(ws.d_in.data()),
                             ws.d_a.data(), in_elems, st);
    cur = ws.d_a.data();
  } else if (in_type == tensor_type::bf16) {
    cuda::convert_bf16_to_f32(reinterpret_cast<const std::uint16_t*>(ws.d_in.data()),
                              ws.d_a.data(), in_elems, st);
    cur = ws.d_a.data();
  }
  const float* maskf = nullptr;
  if (mask != nullptr) {
    const std::size_t count = n * in_seq_;
    detail::mask_to_f32(mask, config_.inputs[1].type, count, host_ws.mask.data());
    cuda::copy_to_device(ws.d_mask.data(), host_ws.mask.data(), count * sizeof(float), st);
    maskf = ws.d_mask.data();
  }
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    const step& s = steps_[i];
    const bool last = i + 1 == steps_.size();
    float* dst = last ? ws.d_out.data() : (cur == ws.d_a.data() ? ws.d_b.data() : ws.d_a.data());
    const std::size_t rows = n * s.seq_in;
    switch (s.spec.kind) {
      case op_kind::linear:
        cuda::linear(cur, s.dw, s.db, dst, rows, s.width_out, s.width_in, s.spec.layout,
                     s.spec.act, st);
        break;
      case op_kind::activation:
        cuda::copy_on_device(dst, cur, rows * s.width_in * sizeof(float), st);
        cuda::bias_activation(dst, rows, s.width_in, nullptr, s.spec.act, st);
        break;
      case op_kind::softmax:
        cuda::softmax(cur, dst, rows, s.width_in, st);
        break;
      case op_kind::layer_norm:
        cuda::layer_norm(cur, s.dw, s.db, dst, rows, s.width_in, s.eps, st);
        break;
      case op_kind::l2_normalize:
        cuda::l2_normalize(cur, dst, rows, s.width_in, s.eps, st);
        break;
      case op_kind::mean_pool:
        cuda::masked_mean_pool(cur, maskf, dst, n, s.seq_in, s.width_in, st);
        break;
      case op_kind::topk:
        cuda::topk(cur, rows, s.width_in, s.spec.k, ws.d_out.data(), ws.d_idx.data(), st);
        break;
      case op_kind::image_to_float:
        cuda::image_u8_to_f32(reinterpret_cast<const std::uint8_t*>(ws.d_in.data()), n,
                              s.image_h, s.image_w, s.image_c, s.spec.mean.data(),
                              s.spec.std_dev.data(), dst, s.spec.image_out, st);
        break;
    }
    cur = dst;
  }
  if (steps_.empty()) {
    cuda::copy_to_host(out, cur, in_elems * sizeof(float), st);
  } else {
    cuda::copy_to_host(out, ws.d_out.data(), n * out_elems_[0] * sizeof(float), st);
    if (out_count_ > 1) {
      cuda::copy_to_host(indices, ws.d_idx.data(), n * out_elems_[1] * sizeof(std::int64_t), st);
    }
  }
  cuda::stream_synchronize(st);  // also surfaces any asynchronous kernel error of this batch
}

}  // namespace inferline::native
