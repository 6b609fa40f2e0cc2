// Native model backend: picks the device, builds the plan (plan.cpp) and serves batches with
// per-instance workspaces through the CPU executor (exec_cpu.cpp) or the CUDA one
// (exec_cuda.cpp, compiled only in CUDA builds).
#include "inferline/native/native_model.hpp"

#include <stdexcept>
#include <string>
#include <utility>

#include "inferline/build_info.hpp"
#include "inferline/kernels/cuda_api.hpp"
#include "inferline/kernels/linear.hpp"
#include "plan.hpp"

namespace inferline::native {

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
    if (!kernels::have_cuda) {
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
  if (config_.blas_threads > 0) kernels::set_blas_threads(config_.blas_threads);
  if (cuda_device_ >= 0) {
    try {
      upload_to_device();
    } catch (...) {
      free_device_weights();  // the destructor does not run for a constructor that throws
      throw;
    }
  }
  std::vector<std::size_t> regions{config_.max_batch_size * out_elems_[0] * sizeof(float)};
  if (out_count_ == 2) {
    regions.push_back(config_.max_batch_size * out_elems_[1] * sizeof(std::int64_t));
  }
  outputs_ = block_pool::create(std::move(regions));
}

native_model::~native_model() {
  slots_.reset();  // workspaces (and their CUDA buffers) before the weights they reference
  free_device_weights();
  if (outputs_ != nullptr) outputs_->close();  // blocks still held by requests free later
}

native_model::workspace& native_model::workspace_for(slot& s) {
  if (!s.ws) s.ws = std::make_unique<workspace>();
  return *s.ws;
}

void native_model::on_worker_start(int /*instance*/) {
  if (cuda_device_ >= 0) select_device();
}

void native_model::compute(workspace& ws, const std::byte* in, const std::byte* mask,
                           std::size_t n, float* out, std::int64_t* indices) {
  if (cuda_device_ >= 0) {
    compute_cuda(ws, in, mask, n, out, indices);
  } else {
    compute_cpu(ws, in, mask, n, out, indices);
  }
}

void native_model::run(batch& b) {
  if (b.size == 0) return;
  check_batch_fits(b, config_.max_batch_size, max_instances, "native model");
  block* out = outputs_->acquire();  // our reference; each answered request adds one
  const block_hold hold(out);
  const std::byte* mask = config_.inputs.size() > 1 ? b.input(1) : nullptr;
  auto* values = reinterpret_cast<float*>(out->region(0));
  auto* indices = out_count_ > 1 ? reinterpret_cast<std::int64_t*>(out->region(1)) : nullptr;
  {
    slot& s = (*slots_)[static_cast<std::size_t>(b.instance)];
    std::lock_guard lock(s.mutex);
    compute(workspace_for(s), b.input(0), mask, b.size, values, indices);
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
  compute(workspace_for(s), static_cast<const std::byte*>(in),
          static_cast<const std::byte*>(mask), batch, out, indices);
}

std::string native_model::describe() const {
  std::string out = "native model on " + device_ + ": input [" + std::to_string(in_seq_) + ", " +
                    std::to_string(in_width_) + "]";
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    const step& s = steps_[i];
    out += "\n  " + std::to_string(i) + ": " + detail::op_name(s.spec.kind) + " [" +
           std::to_string(s.seq_in) + ", " + std::to_string(s.width_in) + "] -> [" +
           std::to_string(s.seq_out) + ", " + std::to_string(s.width_out) + "]";
  }
  return out;
}

}  // namespace inferline::native
