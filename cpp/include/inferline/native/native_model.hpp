// A model made of a sequence of our kernels, weights memory-mapped from a .safetensors file,
// run as an inferline::backend on the worker threads with no Python involved (CPU or CUDA).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"
#include "inferline/kernels/math.hpp"
#include "inferline/native/safetensors.hpp"

namespace inferline::native {

/// What one step of a native model does. Plain value; thread-safe.
enum class op_kind : std::uint8_t {
  linear,          ///< y = act(x·W + b): `weight` (+ `bias`), `act`, `layout`
  activation,      ///< y = act(x), element-wise: `act`
  softmax,         ///< softmax over the last axis
  layer_norm,      ///< layer norm over the last axis: `weight` = gamma, `bias` = beta, `eps`
  l2_normalize,    ///< x / max(‖x‖, eps) over the last axis: `eps`
  mean_pool,       ///< [seq, width] → [width] per item; masked by the model's 2nd input if any
  topk,            ///< last op only: the `k` largest of each row → outputs (values, indices)
  image_to_float,  ///< first op only, uint8 [H, W, C] input → normalised float: `mean`, `std`
};

/// One step of a native model, as model.toml's [native] ops describe it. Plain value.
struct op_spec {
  op_kind kind = op_kind::linear;       ///< what the step does
  std::string weight;                   ///< linear W / layer_norm gamma (tensor name; may be
                                        ///< empty for layer_norm)
  std::string bias;                     ///< linear b / layer_norm beta (may be empty)
  kernels::activation act = kernels::activation::none;  ///< linear epilogue or activation op
  kernels::weight_layout layout = kernels::weight_layout::out_in;  ///< how W is stored
  float eps = -1.0f;                    ///< < 0: the op's default (1e-5 LN, 1e-12 L2)
  std::size_t k = 0;                    ///< topk
  std::vector<float> mean;              ///< image_to_float, per channel, [0, 1] scale
  std::vector<float> std_dev;           ///< image_to_float, per channel
  kernels::image_layout image_out = kernels::image_layout::nchw;  ///< image_to_float output order
};

/// Element type of a model input or output (Open Inference Protocol names in comments).
enum class tensor_type : std::uint8_t {
  f32,   ///< FP32
  f16,   ///< FP16 (inputs: widened to float32 on entry)
  bf16,  ///< BF16 as uint16 bits (inputs: widened on entry)
  u8,    ///< UINT8 (the input of image_to_float)
  i64,   ///< INT64 (topk indices; an attention mask input)
};

/// A model input or output per item (no batch dimension). Plain value.
struct tensor_desc {
  std::string name;                ///< for messages
  tensor_type type = tensor_type::f32;  ///< element type
  std::vector<std::size_t> shape;  ///< per-item dimensions
};

/// Everything needed to build a native model. Plain value.
struct native_model_config {
  std::string weights_path;          ///< .safetensors file (may be empty if no op needs weights)
  std::vector<op_spec> ops;          ///< run in order
  /// Input 0: the data, [features] or [seq, width] (uint8 [H, W, C] for image_to_float), FP32,
  /// FP16 or BF16. Optional input 1: the mean_pool mask [seq], FP32 or INT64.
  std::vector<tensor_desc> inputs;
  /// Output 0: FP32, the last op's result; with a final topk, output 1 is the INT64 indices.
  std::vector<tensor_desc> outputs;
  std::string device = "cpu";        ///< "cpu", "cuda" or "cuda:N"
  bool allow_cpu_fallback = false;   ///< "cuda" without CUDA build or device: use the CPU
  std::size_t max_batch_size = 64;   ///< largest batch run() accepts (sizes the output pool)
  int blas_threads = 0;              ///< > 0: set OpenBLAS's (process-wide) thread count
};

/// The native backend. Loading maps the weights once (float32 tensors are used in place from
/// the mapping when aligned; other float dtypes are widened once), checks every op's shapes
/// against the inputs and the declared outputs, and on CUDA uploads the weights once. run()
/// computes a batch with no GIL and no allocation in steady state: per-instance workspaces
/// grow only to the largest batch seen, outputs go to a pooled block each request keeps a
/// reference to. Thread-safe: run() may be called concurrently by every instance (each uses
/// its own workspace, guarded by an uncontended per-instance mutex).
class native_model final : public backend {
 public:
  /// Builds the model; throws std::runtime_error / std::invalid_argument with a message naming
  /// the op (by index and kind), the tensor and the expected shape on any mismatch, and a
  /// clear message when CUDA is requested but unavailable (unless the fallback is allowed).
  explicit native_model(native_model_config config);
  ~native_model() override;
  native_model(const native_model&) = delete;
  native_model& operator=(const native_model&) = delete;

  /// Computes one batch and answers its requests with rows of a pooled output block.
  void run(batch& b) override;
  /// Selects this instance's CUDA device on the worker thread (no-op on the CPU).
  void on_worker_start(int instance) override;
  /// "native".
  std::string platform() const override { return "native"; }

  /// Runs the model outside the engine: `in` holds `batch` items of input 0 (its declared
  /// type), `mask` `batch` items of input 1 or null, `out` receives output 0 (float32) and
  /// `indices` output 1 (only with a final topk). Uses a workspace of its own, separate from
  /// the instances'. Thread-safe (concurrent forward calls take turns).
  void forward(const void* in, const void* mask, std::size_t batch, float* out,
               std::int64_t* indices = nullptr);

  /// "cpu" or "cuda:N": where the model actually runs.
  const std::string& device() const noexcept { return device_; }
  /// Why a requested CUDA device is not used (empty when no fallback happened).
  const std::string& fallback_reason() const noexcept { return fallback_reason_; }
  /// Elements of output `i` per item.
  std::size_t output_elements(std::size_t i) const noexcept { return out_elems_[i]; }
  /// One line per op with its shapes, for logs.
  std::string describe() const;
  /// The configuration the model was built from.
  const native_model_config& config() const noexcept { return config_; }
  /// Bytes of one item of input 0 (`which` = 0) or of the mask input (`which` = 1; 0 if none).
  std::size_t input_bytes(std::size_t which) const noexcept {
    return which == 0 ? in_bytes_ : mask_bytes_;
  }

 private:
  // Defined in the private plan.hpp: a planned op, an instance's scratch memory, and the CUDA
  // part of that scratch memory (defined only by exec_cuda.cpp; never created without CUDA).
  struct step;
  struct workspace;
  struct device_workspace;
  struct device_workspace_deleter {
    void operator()(device_workspace* ws) const noexcept;
  };
  struct slot {
    std::mutex mutex;  // uncontended: only instance i (or a warm-up on the same index) uses it
    std::unique_ptr<workspace> ws;
  };
  static constexpr std::size_t max_instances = 257;  // the scheduler allows 1..256, +1 forward

  // plan.cpp: checks the ops against the inputs and outputs and resolves their weights.
  void plan();
  const float* host_tensor(const std::string& name, std::size_t expect, const char* what,
                           std::size_t op_index);
  // exec_cpu.cpp
  void compute_cpu(workspace& ws, const std::byte* in, const std::byte* mask, std::size_t n,
                   float* out, std::int64_t* indices);
  // exec_cuda.cpp in CUDA builds; exec_no_cuda.cpp (never reached: cuda_device_ stays -1)
  // otherwise.
  void upload_to_device();
  void select_device() const;
  void free_device_weights() noexcept;
  void compute_cuda(workspace& ws, const std::byte* in, const std::byte* mask, std::size_t n,
                    float* out, std::int64_t* indices);
  workspace& workspace_for(slot& s);
  void compute(workspace& ws, const std::byte* in, const std::byte* mask, std::size_t n,
               float* out, std::int64_t* indices);

  native_model_config config_;
  std::unique_ptr<safetensors_file> weights_;
  std::vector<std::vector<float>> owned_;  // widened or realigned weights (loaded once)
  std::vector<step> steps_;
  std::size_t in_seq_ = 1, in_width_ = 0;  // input 0 as [seq, width] floats per item
  std::size_t in_bytes_ = 0, mask_bytes_ = 0;
  std::size_t max_elems_ = 0;              // largest per-item activation, in floats
  std::array<std::size_t, 2> out_elems_{};
  std::size_t out_count_ = 1;
  std::string device_ = "cpu";
  int cuda_device_ = -1;
  std::string fallback_reason_;
  std::vector<void*> device_weights_;      // CUDA copies of the weights (freed in the dtor)
  block_pool* outputs_ = nullptr;
  std::unique_ptr<std::array<slot, max_instances>> slots_;
};

}  // namespace inferline::native

namespace inferline::kernels {
// The native model lived here before it had a namespace of its own; these names keep code that
// still spells it kernels::native_model (the Python bindings) compiling unchanged.
using native::native_model;
using native::native_model_config;
using native::op_kind;
using native::op_spec;
using native::tensor_desc;
using native::tensor_type;
}  // namespace inferline::kernels
