// Native model backend: plans an op sequence against mapped safetensors weights once, then runs
// batches through the CPU kernels or the CUDA launchers with per-instance workspaces.
#include "inferline/native/native_model.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#include "inferline/build_info.hpp"
#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/cuda_api.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"
#include "inferline/kernels/topk.hpp"

namespace inferline::kernels {

namespace {

const char* op_name(op_kind k) {
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

const char* type_name(tensor_type t) {
  switch (t) {
    case tensor_type::f32: return "FP32";
    case tensor_type::f16: return "FP16";
    case tensor_type::bf16: return "BF16";
    case tensor_type::u8: return "UINT8";
    case tensor_type::i64: return "INT64";
  }
  return "?";
}

std::size_t type_size(tensor_type t) {
  switch (t) {
    case tensor_type::f32: return 4;
    case tensor_type::f16:
    case tensor_type::bf16: return 2;
    case tensor_type::u8: return 1;
    case tensor_type::i64: return 8;
  }
  return 1;
}

std::string shape_str(const std::vector<std::size_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

std::size_t product(const std::vector<std::size_t>& s) {
  std::size_t n = 1;
  for (const std::size_t d : s) n *= d;
  return n;
}

bool aligned_f32(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % alignof(float) == 0;
}

}  // namespace

/// One planned op: its spec, shapes per item and resolved weights (host, and device on CUDA).
struct native_model::step {
  op_spec spec;
  std::size_t seq_in = 1, width_in = 0, seq_out = 1, width_out = 0;
  const float* w = nullptr;
  const float* b = nullptr;
  const float* dw = nullptr;
  const float* db = nullptr;
  float eps = 0.0f;
  std::size_t image_h = 0, image_w = 0, image_c = 0;
};

/// Scratch memory of one instance; grows to the largest batch seen, never shrinks.
struct native_model::workspace {
  std::size_t capacity = 0;  // items
  std::vector<float> a, b, mask;
#ifdef INFERLINE_HAVE_CUDA
  void* stream = nullptr;
  cuda::device_buffer<std::byte> d_in;
  cuda::device_buffer<float> d_mask, d_a, d_b, d_out;
  cuda::device_buffer<std::int64_t> d_idx;
  ~workspace() { cuda::stream_destroy(stream); }
#endif
};

native_model::native_model(native_model_config config)
    : config_(std::move(config)), slots_(std::make_unique<std::array<slot, max_instances>>()) {
  // Device first: a CUDA request that cannot be met fails before any weight is touched.
  const std::string& dev = config_.device;
  if (dev == "cpu") {
    device_ = "cpu";
  } else if (dev == "cuda" || dev.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (dev.size() > 5) {
      try {
        std::size_t used = 0;
        index = std::stoi(dev.substr(5), &used);
        if (used != dev.size() - 5 || index < 0) throw std::invalid_argument(dev);
      } catch (const std::exception&) {
        throw std::invalid_argument("native model: bad device \"" + dev +
                                    "\"; expected \"cpu\", \"cuda\" or \"cuda:N\"");
      }
    }
    std::string reason;
    const int count = cuda_device_count();
    if (!have_cuda) {
      reason = "this build of inferline has no CUDA support (no CUDA compiler at build time)";
    } else if (count == 0) {
      reason = "no CUDA device is visible (no GPU, or the driver is missing or too old)";
    } else if (index >= count) {
      reason = "device cuda:" + std::to_string(index) + " does not exist (" +
               std::to_string(count) + " visible)";
    }
    if (reason.empty()) {
      cuda_device_ = index;
      device_ = "cuda:" + std::to_string(index);
    } else if (config_.allow_cpu_fallback) {
      device_ = "cpu";
      fallback_reason_ = reason;
    } else {
      throw std::runtime_error("native model: device = \"" + dev + "\" requested but " + reason +
                               "; set allow_cpu_fallback = true to run on the CPU instead");
    }
  } else {
    throw std::invalid_argument("native model: unknown device \"" + dev +
                                "\"; expected \"cpu\", \"cuda\" or \"cuda:N\"");
  }
  if (config_.max_batch_size == 0) {
    throw std::invalid_argument("native model: max_batch_size must be at least 1");
  }
  if (!config_.weights_path.empty()) {
    weights_ = std::make_unique<safetensors_file>(config_.weights_path);
  }
  plan();
  if (config_.blas_threads > 0) set_blas_threads(config_.blas_threads);
  if (cuda_device_ >= 0) upload_to_device();
  std::vector<std::size_t> regions{config_.max_batch_size * out_elems_[0] * sizeof(float)};
  if (out_count_ == 2) {
    regions.push_back(config_.max_batch_size * out_elems_[1] * sizeof(std::int64_t));
  }
  outputs_ = block_pool::create(std::move(regions));
}

native_model::~native_model() {
  slots_.reset();  // workspaces (and their CUDA buffers) before the weights they reference
#ifdef INFERLINE_HAVE_CUDA
  for (void* p : device_weights_) cuda::device_free(p);
#endif
  if (outputs_ != nullptr) outputs_->close();  // blocks still held by requests free later
}

const float* native_model::host_tensor(const std::string& name, std::size_t expect,
                                       const char* what, std::size_t op_index) {
  const std::string where = "native model op " + std::to_string(op_index) + " (" +
                            op_name(steps_[op_index].spec.kind) + ")";
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
    in_width_ = product(x.shape);
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
  in_bytes_ = product(x.shape) * type_size(x.type);
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
    if (product(m.shape) != in_seq_ || (m.type != tensor_type::f32 && m.type != tensor_type::i64)) {
      throw std::invalid_argument("native model: mask input \"" + m.name + "\" must be FP32 or "
                                  "INT64 [" + std::to_string(in_seq_) + "], got " +
                                  type_name(m.type) + " " + shape_str(m.shape));
    }
    mask_bytes_ = in_seq_ * type_size(m.type);
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
    const std::string where = "native model op " + std::to_string(i) + " (" +
                              op_name(s.spec.kind) + ")";
    switch (s.spec.kind) {
      case op_kind::linear: {
        if (s.spec.weight.empty()) throw std::invalid_argument(where + ": needs a weight tensor");
        if (!weights_) throw std::invalid_argument(where + ": needs a weights file");
        const st_tensor& w = weights_->at(s.spec.weight);
        const bool out_in = s.spec.layout == weight_layout::out_in;
        if (w.shape.size() != 2 || w.shape[out_in ? 1 : 0] != width) {
          throw std::invalid_argument(
              where + ": weight \"" + s.spec.weight + "\" has shape " + shape_str(w.shape) +
              "; expected " + (out_in ? "[out, " + std::to_string(width) + "] (out_in layout)"
                                      : "[" + std::to_string(width) + ", out] (in_out layout)"));
        }
        const std::size_t n = w.shape[out_in ? 0 : 1];
        s.w = host_tensor(s.spec.weight, width * n, "weight", i);
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
    max_elems_ = std::max(max_elems_, seq * width);
  }

  // Declared outputs must match what the ops produce.
  const bool ends_topk = !steps_.empty() && steps_.back().spec.kind == op_kind::topk;
  out_count_ = ends_topk ? 2 : 1;
  out_elems_ = {seq * width, ends_topk ? seq * width : 0};
  const std::string produced = seq == 1 ? "[" + std::to_string(width) + "]"
                                        : "[" + std::to_string(seq) + ", " +
                                              std::to_string(width) + "]";
  if (outs.size() != out_count_) {
    throw std::invalid_argument(
        "native model: the ops produce " + std::to_string(out_count_) + " output(s) (" +
        (ends_topk ? "FP32 values and INT64 indices " : "FP32 ") + produced + "), but " +
        std::to_string(outs.size()) + " are declared");
  }
  for (std::size_t k = 0; k < out_count_; ++k) {
    const tensor_type want = k == 0 ? tensor_type::f32 : tensor_type::i64;
    if (outs[k].type != want || product(outs[k].shape) != out_elems_[k]) {
      throw std::invalid_argument("native model: output \"" + outs[k].name + "\" is declared " +
                                  type_name(outs[k].type) + " " + shape_str(outs[k].shape) +
                                  " but the ops produce " + type_name(want) + " " + produced);
    }
  }
}

void native_model::upload_to_device() {
#ifdef INFERLINE_HAVE_CUDA
  cuda::set_device(cuda_device_);
  auto upload = [&](const float* host, std::size_t count) -> const float* {
    if (host == nullptr) return nullptr;
    void* d = cuda::device_malloc(count * sizeof(float));
    device_weights_.push_back(d);
    cuda::copy_to_device(d, host, count * sizeof(float));
    return static_cast<const float*>(d);
  };
  for (step& s : steps_) {
    if (s.spec.kind == op_kind::linear) {
      s.dw = upload(s.w, s.width_in * s.width_out);
      s.db = upload(s.b, s.width_out);
    } else if (s.spec.kind == op_kind::layer_norm) {
      s.dw = upload(s.w, s.width_in);
      s.db = upload(s.b, s.width_in);
    }
  }
#endif
}

native_model::workspace& native_model::workspace_for(slot& s) {
  if (!s.ws) s.ws = std::make_unique<workspace>();
  return *s.ws;
}

void native_model::on_worker_start(int /*instance*/) {
#ifdef INFERLINE_HAVE_CUDA
  if (cuda_device_ >= 0) cuda::set_device(cuda_device_);
#endif
}

void native_model::run(batch& b) {
  if (b.size == 0) return;
  if (b.size > config_.max_batch_size) {
    throw std::runtime_error("native model: batch of " + std::to_string(b.size) +
                             " exceeds its max_batch_size " +
                             std::to_string(config_.max_batch_size));
  }
  if (b.instance < 0 || static_cast<std::size_t>(b.instance) + 1 >= max_instances) {
    throw std::runtime_error("native model: instance index out of range");
  }
  block* out = outputs_->acquire();  // our reference; each answered request adds one
  struct releaser {
    block* blk;
    ~releaser() { blk->release(); }
  } hold{out};
  const std::byte* mask = config_.inputs.size() > 1 ? b.input(1) : nullptr;
  auto* values = reinterpret_cast<float*>(out->region(0));
  auto* indices = out_count_ > 1 ? reinterpret_cast<std::int64_t*>(out->region(1)) : nullptr;
  {
    slot& s = (*slots_)[static_cast<std::size_t>(b.instance)];
    std::lock_guard lock(s.mutex);
    workspace& ws = workspace_for(s);
    if (cuda_device_ >= 0) {
      compute_cuda(ws, b.input(0), mask, b.size, values, indices);
    } else {
      compute_cpu(ws, b.input(0), mask, b.size, values, indices);
    }
  }
  if (b.warmup()) return;
  for (std::size_t i = 0; i < b.size; ++i) {
    out->retain();
    b.requests[i]->output = out;
    b.requests[i]->row = static_cast<std::uint32_t>(i);
  }
}

void native_model::forward(const void* in, const void* mask, std::size_t batch, float* out,
                           std::int64_t* indices) {
  if (batch == 0) return;
  if (out_count_ > 1 && indices == nullptr) {
    throw std::invalid_argument("native model: forward needs an indices buffer (final topk)");
  }
  if (config_.inputs.size() > 1 && mask == nullptr) {
    throw std::invalid_argument("native model: forward needs the mask input");
  }
  slot& s = (*slots_)[max_instances - 1];
  std::lock_guard lock(s.mutex);
  workspace& ws = workspace_for(s);
  const auto* inb = static_cast<const std::byte*>(in);
  const auto* maskb = static_cast<const std::byte*>(mask);
  if (cuda_device_ >= 0) {
    compute_cuda(ws, inb, maskb, batch, out, indices);
  } else {
    compute_cpu(ws, inb, maskb, batch, out, indices);
  }
}

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
    convert_f16_to_f32(reinterpret_cast<const std::uint16_t*>(in), ws.a.data(), in_elems);
    cur = ws.a.data();
  } else if (in_type == tensor_type::bf16) {
    convert_bf16_to_f32(reinterpret_cast<const std::uint16_t*>(in), ws.a.data(), in_elems);
    cur = ws.a.data();
  }
  const float* maskf = nullptr;
  if (mask != nullptr) {
    if (config_.inputs[1].type == tensor_type::f32) {
      maskf = reinterpret_cast<const float*>(mask);
    } else {
      const std::size_t count = n * in_seq_;
      for (std::size_t i = 0; i < count; ++i) {
        std::int64_t v;
        std::memcpy(&v, mask + i * sizeof(v), sizeof(v));
        ws.mask[i] = static_cast<float>(v);
      }
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
        linear(cur, s.w, s.b, dst, rows, s.width_out, s.width_in, s.spec.layout, s.spec.act);
        break;
      case op_kind::activation:
        std::memcpy(dst, cur, rows * s.width_in * sizeof(float));
        bias_activation(dst, rows, s.width_in, nullptr, s.spec.act);
        break;
      case op_kind::softmax:
        softmax(cur, dst, rows, s.width_in);
        break;
      case op_kind::layer_norm:
        layer_norm(cur, s.w, s.b, dst, rows, s.width_in, s.eps);
        break;
      case op_kind::l2_normalize:
        l2_normalize(cur, dst, rows, s.width_in, s.eps);
        break;
      case op_kind::mean_pool:
        masked_mean_pool(cur, maskf, dst, n, s.seq_in, s.width_in);
        break;
      case op_kind::topk:
        topk(cur, rows, s.width_in, s.spec.k, out, indices);
        break;
      case op_kind::image_to_float:
        image_u8_to_f32(reinterpret_cast<const std::uint8_t*>(in), n, s.image_h, s.image_w,
                        s.image_c, s.spec.mean.data(), s.spec.std_dev.data(), dst,
                        s.spec.image_out);
        break;
    }
    cur = dst;
  }
}

void native_model::compute_cuda(workspace& ws, const std::byte* in, const std::byte* mask,
                                std::size_t n, float* out, std::int64_t* indices) {
#ifdef INFERLINE_HAVE_CUDA
  cuda::set_device(cuda_device_);
  if (ws.stream == nullptr) ws.stream = cuda::stream_create();
  if (n > ws.capacity) {
    ws.d_in = cuda::device_buffer<std::byte>(n * in_bytes_);
    ws.d_mask = cuda::device_buffer<float>(n * in_seq_);
    ws.d_a = cuda::device_buffer<float>(n * max_elems_);
    ws.d_b = cuda::device_buffer<float>(n * max_elems_);
    ws.d_out = cuda::device_buffer<float>(n * out_elems_[0]);
    ws.d_idx = cuda::device_buffer<std::int64_t>(n * out_elems_[1]);
    ws.mask.resize(n * in_seq_);
    ws.capacity = n;
  }
  void* st = ws.stream;
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
    if (config_.inputs[1].type == tensor_type::f32) {
      std::memcpy(ws.mask.data(), mask, count * sizeof(float));
    } else {
      for (std::size_t i = 0; i < count; ++i) {
        std::int64_t v;
        std::memcpy(&v, mask + i * sizeof(v), sizeof(v));
        ws.mask[i] = static_cast<float>(v);
      }
    }
    cuda::copy_to_device(ws.d_mask.data(), ws.mask.data(), count * sizeof(float), st);
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
#else
  (void)ws, (void)in, (void)mask, (void)n, (void)out, (void)indices;
  throw std::logic_error("native model: CUDA path called in a build without CUDA");
#endif
}

std::string native_model::describe() const {
  std::string out = "native model on " + device_ + ": input [" + std::to_string(in_seq_) + ", " +
                    std::to_string(in_width_) + "]";
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    const step& s = steps_[i];
    out += "\n  " + std::to_string(i) + ": " + op_name(s.spec.kind) + " [" +
           std::to_string(s.seq_in) + ", " + std::to_string(s.width_in) + "] -> [" +
           std::to_string(s.seq_out) + ", " + std::to_string(s.width_out) + "]";
  }
  return out;
}

}  // namespace inferline::kernels
