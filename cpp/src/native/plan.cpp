// The native model's plan: checks every op against the inputs, the weights file and the
// declared outputs, resolves each op's weights (in place from the mapping when possible), and
// sizes the workspaces. Also the helpers (names, sizes, messages) the other rooms share.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "plan.hpp"

namespace inferline::native {

namespace detail {

const char* op_name(op_kind k) noexcept {
  switch (k) {
    case op_kind::linear: return "linear";
    case op_kind::activation: return "activation";
    case op_kind::softmax: return "softmax";
    case op_kind::layer_norm: return "layer_norm";
    case op_kind::l2_normalize: return "l2_normalize";
    case op_kind::mean_pool: return "mean_pool";
    case op_kind::topk: return "topk";
    case op_kind::image_to_float: return "image_to_float";
  }
  return "?";
}

const char* type_name(tensor_type t) noexcept {
  switch (t) {
    case tensor_type::f32: return "FP32";
    case tensor_type::f16: return "FP16";
    case tensor_type::bf16: return "BF16";
    case tensor_type::u8: return "UINT8";
    case tensor_type::i64: return "INT64";
  }
  return "?";
}

std::size_t type_size(tensor_type t) noexcept {
  switch (t) {
    case tensor_type::f32: return 4;
    case tensor_type::f16:
    case tensor_type::bf16: return 2;
    case tensor_type::u8: return 1;
    case tensor_type::i64: return 8;
  }
  return 1;
}

std::string shape_str(const std::vector<std::size_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string op_where(std::size_t index, op_kind kind) {
  return "native model op " + std::to_string(index) + " (" + op_name(kind) + ")";
}

std::size_t checked_mul(std::size_t a, std::size_t b, const char* what) {
  std::size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    throw std::invalid_argument(std::string("native model: ") + what +
                                " is too large (its size in elements or bytes overflows)");
  }
  return r;
}

void mask_to_f32(const std::byte* mask, tensor_type type, std::size_t count, float* out) {
  if (type == tensor_type::f32) {
    std::memcpy(out, mask, count * sizeof(float));
    return;
  }
  for (std::size_t i = 0; i < count; ++i) {
    std::int64_t v;
    std::memcpy(&v, mask + i * sizeof(v), sizeof(v));
    out[i] = static_cast<float>(v);
  }
}

}  // namespace detail

namespace {

using detail::checked_mul;
using detail::op_where;
using detail::shape_str;
using detail::type_name;

std::size_t product(const std::vector<std::size_t>& shape, const char* what) {
  std::size_t n = 1;
  for (const std::size_t d : shape) n = checked_mul(n, d, what);
  return n;
}

bool aligned_f32(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % alignof(float) == 0;
}

}  // namespace

const float* native_model::host_tensor(const std::string& name, std::size_t expect,
                                       const char* what, std::size_t op_index) {
  const std::string where = op_where(op_index, steps_[op_index].spec.kind);
  if (!weights_) {
    throw std::runtime_error(where + ": needs tensor \"" + name + "\" but no weights file is set");
  }
  const st_tensor& t = weights_->at(name);
  if (t.elements() != expect) {
    throw std::runtime_error(where + ": " + what + " \"" + name + "\" has shape " +
                             shape_str(t.shape) + " (" + std::to_string(t.elements()) +
                             " elements); expected " + std::to_string(expect) + " elements");
  }
  if (t.dtype == st_dtype::f32 && aligned_f32(t.data)) {
    return reinterpret_cast<const float*>(t.data);  // used in place from the mapping
  }
  try {
    owned_.emplace_back();
    tensor_to_f32(t, owned_.back());
  } catch (const std::exception& e) {
    throw std::runtime_error(where + ": " + what + " \"" + name + "\": " + e.what());
  }
  return owned_.back().data();
}

void native_model::plan() {
  const auto& ins = config_.inputs;
  const auto& outs = config_.outputs;
  if (ins.empty() || ins.size() > 2) {
    throw std::invalid_argument("native model: expected 1 input (data) or 2 (data, mask), got " +
                                std::to_string(ins.size()));
  }
  const bool image = !config_.ops.empty() && config_.ops[0].kind == op_kind::image_to_float;
  const tensor_desc& x = ins[0];
  if (image) {
    if (x.type != tensor_type::u8 || x.shape.size() != 3) {
      throw std::invalid_argument("native model: image_to_float needs input \"" + x.name +
                                  "\" to be UINT8 [H, W, C], got " + type_name(x.type) + " " +
                                  shape_str(x.shape));
    }
    in_seq_ = 1;
    in_width_ = product(x.shape, "the input shape");
  } else {
    if (x.type != tensor_type::f32 && x.type != tensor_type::f16 && x.type != tensor_type::bf16) {
      throw std::invalid_argument("native model: input \"" + x.name + "\" must be FP32, FP16 or "
                                  "BF16 (UINT8 only with a first image_to_float op), got " +
                                  type_name(x.type));
    }
    if (x.shape.size() == 1) {
      in_seq_ = 1;
      in_width_ = x.shape[0];
    } else if (x.shape.size() == 2) {
      in_seq_ = x.shape[0];
      in_width_ = x.shape[1];
    } else {
      throw std::invalid_argument("native model: input \"" + x.name + "\" must be [features] or "
                                  "[seq, width], got " + shape_str(x.shape));
    }
  }
  in_bytes_ = checked_mul(product(x.shape, "the input shape"), detail::type_size(x.type),
                          "the input shape");
  if (in_seq_ == 0 || in_width_ == 0) {
    throw std::invalid_argument("native model: input \"" + x.name + "\" has an empty shape " +
                                shape_str(x.shape));
  }
  const bool has_pool = std::any_of(config_.ops.begin(), config_.ops.end(),
                                    [](const op_spec& o) { return o.kind == op_kind::mean_pool; });
  if (ins.size() == 2) {
    const tensor_desc& m = ins[1];
    if (!has_pool) {
      throw std::invalid_argument("native model: input \"" + m.name + "\" can only be the "
                                  "mean_pool mask, and the model has no mean_pool op");
    }
    if (product(m.shape, "the mask shape") != in_seq_ ||
        (m.type != tensor_type::f32 && m.type != tensor_type::i64)) {
      throw std::invalid_argument("native model: mask input \"" + m.name + "\" must be FP32 or "
                                  "INT64 [" + std::to_string(in_seq_) + "], got " +
                                  type_name(m.type) + " " + shape_str(m.shape));
    }
    mask_bytes_ = in_seq_ * detail::type_size(m.type);
  }

  std::size_t seq = in_seq_, width = in_width_;
  max_elems_ = seq * width;
  steps_.clear();
  steps_.reserve(config_.ops.size());
  for (std::size_t i = 0; i < config_.ops.size(); ++i) {
    steps_.push_back(step{});
    step& s = steps_.back();
    s.spec = config_.ops[i];
    s.seq_in = seq;
    s.width_in = width;
    const std::string where = op_where(i, s.spec.kind);
    switch (s.spec.kind) {
      case op_kind::linear: {
        if (s.spec.weight.empty()) throw std::invalid_argument(where + ": needs a weight tensor");
        if (!weights_) throw std::invalid_argument(where + ": needs a weights file");
        const st_tensor& w = weights_->at(s.spec.weight);
        const bool out_in = s.spec.layout == kernels::weight_layout::out_in;
        if (w.shape.size() != 2 || w.shape[out_in ? 1 : 0] != width) {
          throw std::invalid_argument(
              where + ": weight \"" + s.spec.weight + "\" has shape " + shape_str(w.shape) +
              "; expected " + (out_in ? "[out, " + std::to_string(width) + "] (out_in layout)"
                                      : "[" + std::to_string(width) + ", out] (in_out layout)"));
        }
        const std::size_t n = w.shape[out_in ? 0 : 1];
        s.w = host_tensor(s.spec.weight, checked_mul(width, n, "a weight shape"), "weight", i);
        if (!s.spec.bias.empty()) s.b = host_tensor(s.spec.bias, n, "bias", i);
        width = n;
        break;
      }
      case op_kind::activation:
      case op_kind::softmax:
        break;
      case op_kind::layer_norm:
        s.eps = s.spec.eps < 0 ? 1e-5f : s.spec.eps;
        if (!s.spec.weight.empty()) s.w = host_tensor(s.spec.weight, width, "gamma", i);
        if (!s.spec.bias.empty()) s.b = host_tensor(s.spec.bias, width, "beta", i);
        break;
      case op_kind::l2_normalize:
        s.eps = s.spec.eps < 0 ? 1e-12f : s.spec.eps;
        break;
      case op_kind::mean_pool:
        seq = 1;
        break;
      case op_kind::topk:
        if (i + 1 != config_.ops.size()) {
          throw std::invalid_argument(where + ": topk must be the last op");
        }
        if (s.spec.k == 0 || s.spec.k > width) {
          throw std::invalid_argument(where + ": k must be between 1 and " +
                                      std::to_string(width) + ", got " +
                                      std::to_string(s.spec.k));
        }
        width = s.spec.k;
        break;
      case op_kind::image_to_float:
        if (i != 0) throw std::invalid_argument(where + ": image_to_float must be the first op");
        s.image_h = x.shape[0];
        s.image_w = x.shape[1];
        s.image_c = x.shape[2];
        if (s.spec.mean.size() != s.image_c || s.spec.std_dev.size() != s.image_c) {
          throw std::invalid_argument(where + ": mean and std need " +
                                      std::to_string(s.image_c) + " values (one per channel)");
        }
        if (cuda_device_ >= 0 && s.image_c > 16) {
          throw std::invalid_argument(where + ": CUDA supports at most 16 channels");
        }
        break;
    }
    s.seq_out = seq;
    s.width_out = width;
    max_elems_ = std::max(max_elems_, checked_mul(seq, width, "an op's output"));
  }

  // Declared outputs must match what the ops produce.
  const bool ends_topk = !steps_.empty() && steps_.back().spec.kind == op_kind::topk;
  out_count_ = ends_topk ? 2 : 1;
  out_elems_ = {seq * width, ends_topk ? seq * width : 0};
  const std::string produced = seq == 1 ? shape_str({width}) : shape_str({seq, width});
  if (outs.size() != out_count_) {
    throw std::invalid_argument(
        "native model: the ops produce " + std::to_string(out_count_) + " output(s) (" +
        (ends_topk ? "FP32 values and INT64 indices " : "FP32 ") + produced + "), but " +
        std::to_string(outs.size()) + " are declared");
  }
  for (std::size_t k = 0; k < out_count_; ++k) {
    const tensor_type want = k == 0 ? tensor_type::f32 : tensor_type::i64;
    if (outs[k].type != want ||
        product(outs[k].shape, "a declared output shape") != out_elems_[k]) {
      throw std::invalid_argument("native model: output \"" + outs[k].name + "\" is declared " +
                                  type_name(outs[k].type) + " " + shape_str(outs[k].shape) +
                                  " but the ops produce " + type_name(want) + " " + produced);
    }
  }

  // A batch's buffers hold at most max_batch_size items of at most max_elems_ 8-byte values
  // (floats, or topk's int64 indices) or in_bytes_ bytes: checked once here, so the executors'
  // n·size products cannot wrap.
  const std::size_t per_item =
      std::max(in_bytes_, checked_mul(max_elems_, sizeof(std::int64_t), "an op's output"));
  checked_mul(config_.max_batch_size, per_item, "max_batch_size times one item's largest buffer");
}

}  // namespace inferline::native
