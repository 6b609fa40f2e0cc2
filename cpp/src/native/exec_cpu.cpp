// The native model's CPU executor: runs a plan's steps through the CPU kernels, ping-ponging
// between the workspace's two activation buffers, the last step writing the output block.
#include <cstring>

#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"
#include "inferline/kernels/topk.hpp"
#include "plan.hpp"

namespace inferline::native {

void native_model::compute_cpu(workspace& ws, const std::byte* in, const std::byte* mask,
                               std::size_t n, float* out, std::int64_t* indices) {
  if (n > ws.capacity) {
    ws.a.resize(n * max_elems_);
    ws.b.resize(n * max_elems_);
    ws.mask.resize(n * in_seq_);
    ws.capacity = n;
  }
  const tensor_type in_type = config_.inputs[0].type;
  const std::size_t in_elems = n * in_seq_ * in_width_;
  const float* cur = nullptr;
  if (in_type == tensor_type::f32) {
    cur = reinterpret_cast<const float*>(in);  // the batch's own rows: no copy
  } else if (in_type == tensor_type::f16) {
    kernels::convert_f16_to_f32(reinterpret_cast<const std::uint16_t*>(in), ws.a.data(),
                                in_elems);
    cur = ws.a.data();
  } else if (in_type == tensor_type::bf16) {
    kernels::convert_bf16_to_f32(reinterpret_cast<const std::uint16_t*>(in), ws.a.data(),
                                 in_elems);
    cur = ws.a.data();
  }
  const float* maskf = nullptr;
  if (mask != nullptr) {
    if (config_.inputs[1].type == tensor_type::f32) {
      maskf = reinterpret_cast<const float*>(mask);  // the batch's own rows: no copy
    } else {
      detail::mask_to_f32(mask, config_.inputs[1].type, n * in_seq_, ws.mask.data());
      maskf = ws.mask.data();
    }
  }
  if (steps_.empty()) {
    std::memcpy(out, cur, in_elems * sizeof(float));
    return;
  }
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    const step& s = steps_[i];
    const bool last = i + 1 == steps_.size();
    // The last op writes straight into the pooled output block.
    float* dst = last ? out : (cur == ws.a.data() ? ws.b.data() : ws.a.data());
    const std::size_t rows = n * s.seq_in;
    switch (s.spec.kind) {
      case op_kind::linear:
        kernels::linear(cur, s.w, s.b, dst, rows, s.width_out, s.width_in, s.spec.layout,
                        s.spec.act);
        break;
      case op_kind::activation:
        std::memcpy(dst, cur, rows * s.width_in * sizeof(float));
        kernels::bias_activation(dst, rows, s.width_in, nullptr, s.spec.act);
        break;
      case op_kind::softmax:
        kernels::softmax(cur, dst, rows, s.width_in);
        break;
      case op_kind::layer_norm:
        kernels::layer_norm(cur, s.w, s.b, dst, rows, s.width_in, s.eps);
        break;
      case op_kind::l2_normalize:
        kernels::l2_normalize(cur, dst, rows, s.width_in, s.eps);
        break;
      case op_kind::mean_pool:
        kernels::masked_mean_pool(cur, maskf, dst, n, s.seq_in, s.width_in);
        break;
      case op_kind::topk:
        kernels::topk(cur, rows, s.width_in, s.spec.k, out, indices);
        break;
      case op_kind::image_to_float:
        kernels::image_u8_to_f32(reinterpret_cast<const std::uint8_t*>(in), n, s.image_h,
                                 s.image_w, s.image_c, s.spec.mean.data(),
                                 s.spec.std_dev.data(), dst, s.spec.image_out);
        break;
    }
    cur = dst;
  }
}

}  // namespace inferline::native
