// The text encoder as a scheduler backend: rows of zero-padded token ids and their lengths in,
// L2-normalised sentence embeddings out, with only the real tokens computed.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"
#include "inferline/encoder/encoder.hpp"

namespace inferline::encoder {

/// How to build a text_encoder_backend. Plain value.
struct text_encoder_options {
  std::string model_dir;       ///< folder with model.safetensors and config.json (BERT)
  std::string device = "cpu";  ///< "cpu", "cuda" or "cuda:N"
  int blas_threads = 0;        ///< > 0: OpenBLAS's (process-wide) thread count
  int max_seq_len = 256;       ///< per-row token capacity of `input_ids`
  int max_batch_size = 64;     ///< most rows per batch
};

/// Served tokens so far (serving batches only: not warm-up, not encode()). A snapshot of
/// independent relaxed counters: a best guess while batches run.
struct token_counts {
  std::uint64_t real_tokens = 0;      ///< tokens of the rows' lengths
  std::uint64_t computed_tokens = 0;  ///< tokens the encoder computed (packed: = real)
  std::uint64_t batches = 0;          ///< batches computed
  std::uint64_t largest_batch_tokens = 0;  ///< most real tokens in one batch
};

/// The backend. Inputs, in this order: `input_ids` INT32 [max_seq_len] (zero-padded past the
/// length) and `length` INT32 [1] (real tokens including [CLS]/[SEP], 1..max_seq_len);
/// output `embedding` FP32 [hidden]. run() packs the real tokens of the batch (no work on
/// padding) into a per-instance buffer, runs that instance's encoder_exec (created on its
/// worker thread) and answers each row from a pooled output block. A row with a bad length or
/// token id fails its batch with a message naming the row. Thread-safe: instances run
/// concurrently, each on its own executor (guarded by an uncontended per-instance mutex).
class text_encoder_backend final : public backend {
 public:
  /// Reads config.json, loads the weights and builds the first executor (so a bad device
  /// fails here). Throws std::runtime_error / std::invalid_argument with a clear message.
  explicit text_encoder_backend(text_encoder_options options);
  ~text_encoder_backend() override;
  text_encoder_backend(const text_encoder_backend&) = delete;
  text_encoder_backend& operator=(const text_encoder_backend&) = delete;

  /// Computes one batch (see the class comment).
  void run(batch& b) override;
  /// Creates this instance's executor on its worker thread.
  void on_worker_start(int instance) override;
  /// "native".
  std::string platform() const override { return "native"; }

  /// Encodes `n` rows outside the engine: row i is ids[i·stride .. i·stride + lengths[i]);
  /// writes n x hidden floats to `out`, in chunks of max_batch_size. Uses an executor of its
  /// own, separate from the instances'. Throws std::invalid_argument on a bad length or id.
  /// Thread-safe (concurrent calls take turns).
  void encode(const std::int32_t* ids, std::size_t stride, const std::int32_t* lengths,
              std::size_t n, float* out);

  /// The model's shape (from config.json) with the options' max_seq_len and max_batch_size.
  const encoder_config& config() const noexcept { return config_; }
  /// The options it was built with.
  const text_encoder_options& options() const noexcept { return options_; }
  /// Token counters. Thread-safe.
  token_counts token_stats() const noexcept;

 private:
  struct slot {
    std::mutex mutex;  // uncontended: only instance i (or a warm-up on its index) uses it
    std::unique_ptr<encoder_exec> exec;
    std::vector<std::int32_t> ids, offsets;  // the packed batch (sized once)
  };
  static constexpr std::size_t max_instances = 257;  // the scheduler allows 1..256, +1 encode

  std::unique_ptr<encoder_exec> make_exec() const;
  slot& slot_for(std::size_t index);
  // Packs rows (ids at `stride` apart) into s, runs it, writes n x hidden to out. `clamp`
  // (warm-up) turns a bad length into a valid one; else it throws naming row `row0 + i`.
  void compute(slot& s, const std::int32_t* ids, std::size_t stride,
               const std::int32_t* lengths, std::size_t n, float* out, bool clamp,
               std::size_t row0);

  text_encoder_options options_;
  encoder_config config_;
  std::shared_ptr<const encoder_weights> weights_;
  int cuda_device_ = -1;
  block_pool* outputs_ = nullptr;
  std::unique_ptr<std::array<slot, max_instances>> slots_;
  std::atomic<std::uint64_t> real_tokens_{0};
  std::atomic<std::uint64_t> computed_tokens_{0};
  std::atomic<std::uint64_t> batches_{0};
  std::atomic<std::uint64_t> largest_batch_{0};
};

}  // namespace inferline::encoder
