// The text encoder's CUDA executor (compiled only in CUDA builds; encoder_no_cuda.cpp
// otherwise): weights uploaded once per model and device, then each executor runs packed
// batches on its own non-blocking stream through pinned staging buffers, with the GEMMs in
// cuda::linear (cuBLASLt when it loads, else the own SGEMM).
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "inferline/encoder/encoder.hpp"
#include "encoder.cuh"
#include "inferline/kernels/cuda_api.hpp"

namespace inferline::encoder {
namespace {

using kernels::activation;
using kernels::weight_layout;

/// Device copies of one layer's weights. Immutable after upload.
struct device_layer {
  cuda::device_buffer<float> qkv_w, qkv_b, attn_out_w, attn_out_b, ln1_g, ln1_b;
  cuda::device_buffer<float> ffn_in_w, ffn_in_b, ffn_out_w, ffn_out_b, ln2_g, ln2_b;
};

/// Device copies of a model's weights on one device. Immutable after upload; shared by the
/// executors of that model on that device.
struct device_weights {
  // Held so that the cache key (the host weights' address) cannot be reused by other weights
  // while this device copy lives.
  std::shared_ptr<const encoder_weights> host;
  int device = 0;
  cuda::device_buffer<float> word_emb, pos_emb, type_emb, emb_ln_g, emb_ln_b;
  std::vector<device_layer> layers;
};

/// A non-blocking stream, destroyed with its owner. Not thread-safe.
using owned_stream = std::unique_ptr<void, void (*)(void*) noexcept>;

owned_stream make_stream() { return owned_stream(cuda::stream_create(), &cuda::stream_destroy); }

/// Host field and device field of one per-layer tensor.
struct layer_field {
  std::vector<float> encoder_layer_weights::*host;
  cuda::device_buffer<float> device_layer::*device;
};

#define INFERLINE_LAYER_FIELD(name) layer_field{&encoder_layer_weights::name, &device_layer::name}
constexpr layer_field layer_fields[] = {
    INFERLINE_LAYER_FIELD(qkv_w),     INFERLINE_LAYER_FIELD(qkv_b),
    INFERLINE_LAYER_FIELD(attn_out_w), INFERLINE_LAYER_FIELD(attn_out_b),
    INFERLINE_LAYER_FIELD(ln1_g),     INFERLINE_LAYER_FIELD(ln1_b),
    INFERLINE_LAYER_FIELD(ffn_in_w),  INFERLINE_LAYER_FIELD(ffn_in_b),
    INFERLINE_LAYER_FIELD(ffn_out_w), INFERLINE_LAYER_FIELD(ffn_out_b),
    INFERLINE_LAYER_FIELD(ln2_g),     INFERLINE_LAYER_FIELD(ln2_b)};
#undef INFERLINE_LAYER_FIELD

/// Pinned host memory of `T`, grown on demand (contents not kept). Not thread-safe.
template <class T>
class pinned_buffer {
 public:
  pinned_buffer() = default;
  pinned_buffer(const pinned_buffer&) = delete;
  pinned_buffer& operator=(const pinned_buffer&) = delete;
  ~pinned_buffer() { cuda::host_free_pinned(data_); }
  T* reserve(std::size_t count) {
    if (count > size_) {
      cuda::host_free_pinned(data_);
      data_ = nullptr;
      size_ = 0;
      data_ = static_cast<T*>(cuda::host_malloc_pinned(count * sizeof(T)));
      size_ = count;
    }
    return data_;
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

std::shared_ptr<const device_weights> upload(std::shared_ptr<const encoder_weights> host,
                                             int device) {
  cuda::set_device(device);
  auto d = std::make_shared<device_weights>();
  d->host = std::move(host);
  d->device = device;
  const encoder_weights& w = *d->host;
  // The copies go on a stream of their own and are waited for before returning: a plain
  // cudaMemcpy from pageable memory may return before its DMA has landed, and the executors'
  // non-blocking streams do not wait for the legacy default stream.
  const owned_stream s = make_stream();
  auto put = [&](cuda::device_buffer<float>& dst, const std::vector<float>& src) {
    dst = cuda::device_buffer<float>(src.size());
    dst.upload(src.data(), s.get());
  };
  put(d->word_emb, w.word_emb);
  put(d->pos_emb, w.pos_emb);
  put(d->type_emb, w.type_emb);
  put(d->emb_ln_g, w.emb_ln_g);
  put(d->emb_ln_b, w.emb_ln_b);
  d->layers.resize(w.layers.size());
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    for (const layer_field& f : layer_fields) put(d->layers[i].*f.device, w.layers[i].*f.host);
  }
  cuda::stream_synchronize(s.get());
  return d;
}

/// Device weights of (host weights, device), uploaded by the first executor and shared by the
/// later ones while any holds them. Thread-safe.
std::shared_ptr<const device_weights> shared_upload(
    const std::shared_ptr<const encoder_weights>& w, int device) {
  static std::mutex mutex;
  static std::map<std::pair<const encoder_weights*, int>, std::weak_ptr<const device_weights>>
      cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{w.get(), device}];
  if (auto d = slot.lock()) return d;
  auto d = upload(w, device);
  slot = d;
  return d;
}

void check_shapes(const encoder_weights& w, const encoder_config& c) {
  const auto h = static_cast<std::size_t>(c.hidden);
  const auto inter = static_cast<std::size_t>(c.intermediate);
  bool ok = w.layers.size() == static_cast<std::size_t>(c.layers) &&
            w.word_emb.size() == static_cast<std::size_t>(c.vocab) * h &&
            w.pos_emb.size() >= static_cast<std::size_t>(c.max_seq_len) * h &&
            w.type_emb.size() >= h && w.emb_ln_g.size() == h && w.emb_ln_b.size() == h;
  for (const encoder_layer_weights& l : w.layers) {
    ok = ok && l.qkv_w.size() == 3 * h * h && l.qkv_b.size() == 3 * h &&
         l.attn_out_w.size() == h * h && l.attn_out_b.size() == h && l.ln1_g.size() == h &&
         l.ln1_b.size() == h && l.ffn_in_w.size() == inter * h && l.ffn_in_b.size() == inter &&
         l.ffn_out_w.size() == h * inter && l.ffn_out_b.size() == h && l.ln2_g.size() == h &&
         l.ln2_b.size() == h;
  }
  if (!ok) throw std::invalid_argument("text encoder (cuda): weights do not match the config");
}

/// One instance's executor: its stream, GEMM workspace, activations sized for the largest
/// batch seen so far, and pinned staging buffers. Thread-compatible.
class cuda_encoder final : public encoder_exec {
 public:
  cuda_encoder(std::shared_ptr<const encoder_weights> w, const encoder_config& c, int device)
      : c_(c), device_(device) {
    c_.validate();
    if (!w) throw std::invalid_argument("text encoder (cuda): no weights");
    check_shapes(*w, c_);
    if (c_.head_size() != 32 && c_.head_size() != 64) {
      throw std::invalid_argument("text encoder (cuda): head size " +
                                  std::to_string(c_.head_size()) + " unsupported (32 or 64)");
    }
    if (device < 0 || device >= cuda::device_count()) {
      throw std::runtime_error("text encoder (cuda): no CUDA device " + std::to_string(device) +
                               " (" + std::to_string(cuda::device_count()) + " visible)");
    }
    weights_ = shared_upload(w, device);
    cuda::set_device(device_);
    stream_ = make_stream();
  }

  const encoder_config& config() const noexcept override { return c_; }

  void run(const std::int32_t* ids, const std::int32_t* offsets, int n, float* out) override {
    check_packed_batch(c_, ids, offsets, n);
    cuda::set_device(device_);
    const float* staged_out = nullptr;
    try {
      staged_out = enqueue(ids, offsets, n);
      cuda::stream_synchronize(stream_.get());
    } catch (...) {
      // Work queued before the failure may still read the pinned buffers the next run
      // refills: wait for it (its own errors are already being reported).
      try {
        cuda::stream_synchronize(stream_.get());
      } catch (...) {
      }
      throw;
    }
    std::memcpy(out, staged_out,
                static_cast<std::size_t>(n) * static_cast<std::size_t>(c_.hidden) * sizeof(float));
  }

 private:
  // Queues one packed batch on the stream, up to the copy of its embeddings into the pinned
  // output staging, which it returns (valid once the stream has finished).
  const float* enqueue(const std::int32_t* ids, const std::int32_t* offsets, int n) {
    const int tokens = offsets[n];
    int max_len = 0;
    for (int i = 0; i < n; ++i) max_len = std::max(max_len, offsets[i + 1] - offsets[i]);
    reserve(static_cast<std::size_t>(tokens), static_cast<std::size_t>(n));

    const auto h = static_cast<std::size_t>(c_.hidden);
    const auto t = static_cast<std::size_t>(tokens);
    void* st = stream_.get();
    // ids then offsets in one pinned block: one asynchronous copy in.
    std::int32_t* staged = in_.reserve(t + static_cast<std::size_t>(n) + 1);
    std::memcpy(staged, ids, t * sizeof(std::int32_t));
    std::memcpy(staged + t, offsets, (static_cast<std::size_t>(n) + 1) * sizeof(std::int32_t));
    cuda::copy_to_device(d_in_.data(), staged, (t + n + 1) * sizeof(std::int32_t), st);
    const std::int32_t* d_ids = d_in_.data();
    const std::int32_t* d_offsets = d_in_.data() + t;

    const device_weights& w = *weights_;
    float* hid = d_hidden_.data();
    cuda::embed_layer_norm(d_ids, d_offsets, n, tokens, w.word_emb.data(), w.pos_emb.data(),
                           w.type_emb.data(), w.emb_ln_g.data(), w.emb_ln_b.data(), hid,
                           c_.hidden, c_.layer_norm_eps, st);
    const auto inter = static_cast<std::size_t>(c_.intermediate);
    for (const device_layer& l : w.layers) {
      cuda::linear(hid, l.qkv_w.data(), l.qkv_b.data(), d_qkv_.data(), t, 3 * h, h,
                   weight_layout::out_in, activation::none, st, &gemm_ws_);
      cuda::packed_attention(d_qkv_.data(), d_offsets, n, max_len, d_ctx_.data(), c_.hidden,
                             c_.heads, st);
      cuda::linear(d_ctx_.data(), l.attn_out_w.data(), l.attn_out_b.data(), d_tmp_.data(), t,
                   h, h, weight_layout::out_in, activation::none, st, &gemm_ws_);
      cuda::residual_layer_norm(d_tmp_.data(), hid, l.ln1_g.data(), l.ln1_b.data(), hid, tokens,
                                c_.hidden, c_.layer_norm_eps, st);
      cuda::linear(hid, l.ffn_in_w.data(), l.ffn_in_b.data(), d_ffn_.data(), t, inter, h,
                   weight_layout::out_in, activation::gelu, st, &gemm_ws_);
      cuda::linear(d_ffn_.data(), l.ffn_out_w.data(), l.ffn_out_b.data(), d_tmp_.data(), t, h,
                   inter, weight_layout::out_in, activation::none, st, &gemm_ws_);
      cuda::residual_layer_norm(d_tmp_.data(), hid, l.ln2_g.data(), l.ln2_b.data(), hid, tokens,
                                c_.hidden, c_.layer_norm_eps, st);
    }
    cuda::packed_mean_pool_l2(hid, d_offsets, n, c_.hidden, c_.l2_eps, d_out_.data(), st);
    const std::size_t out_count = static_cast<std::size_t>(n) * h;
    float* staged_out = out_.reserve(out_count);
    cuda::copy_to_host(staged_out, d_out_.data(), out_count * sizeof(float), st);
    return staged_out;
  }

  // Grows the device activations to `tokens` packed tokens and `n` sequences, rounded up so
  // that slowly growing batches do not reallocate every time. Called between runs, after the
  // previous run's synchronize, so no queued work reads what is freed.
  void reserve(std::size_t tokens, std::size_t n) {
    constexpr std::size_t granule = 256;
    const auto h = static_cast<std::size_t>(c_.hidden);
    if (tokens > capacity_tokens_) {
      const std::size_t cap = (tokens / granule + 1) * granule;
      d_hidden_ = cuda::device_buffer<float>(cap * h);
      d_qkv_ = cuda::device_buffer<float>(cap * 3 * h);
      d_ctx_ = cuda::device_buffer<float>(cap * h);
      d_tmp_ = cuda::device_buffer<float>(cap * h);
      d_ffn_ = cuda::device_buffer<float>(cap * static_cast<std::size_t>(c_.intermediate));
      capacity_tokens_ = cap;
    }
    if (tokens + n + 1 > d_in_.size()) {
      d_in_ = cuda::device_buffer<std::int32_t>(capacity_tokens_ + n + 1);
    }
    if (n > capacity_seqs_) {
      d_out_ = cuda::device_buffer<float>(n * h);
      capacity_seqs_ = n;
    }
  }

  encoder_config c_;
  int device_;
  std::shared_ptr<const device_weights> weights_;
  owned_stream stream_{nullptr, &cuda::stream_destroy};
  cuda::gemm_workspace gemm_ws_;
  std::size_t capacity_tokens_ = 0;
  std::size_t capacity_seqs_ = 0;
  cuda::device_buffer<std::int32_t> d_in_;
  cuda::device_buffer<float> d_hidden_, d_qkv_, d_ctx_, d_tmp_, d_ffn_, d_out_;
  pinned_buffer<std::int32_t> in_;
  pinned_buffer<float> out_;
};

}  // namespace

std::unique_ptr<encoder_exec> make_cuda_encoder(std::shared_ptr<const encoder_weights> weights,
                                                const encoder_config& config, int device) {
  return std::make_unique<cuda_encoder>(std::move(weights), config, device);
}

}  // namespace inferline::encoder
