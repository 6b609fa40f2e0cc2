// The text encoder backend: packs a batch's real tokens, runs the instance's executor, answers
// each row from a pooled output block, and counts tokens.
#include "inferline/encoder/text_encoder_backend.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace inferline::encoder {
namespace {

// "cpu" -> -1, "cuda" -> 0, "cuda:N" -> N; anything else throws.
int parse_device(const std::string& device) {
  if (device == "cpu") return -1;
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.size() < 9 &&
      std::all_of(device.begin() + 5, device.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::stoi(device.substr(5));
  }
  throw std::invalid_argument(
      "text encoder: device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"" + device + "\"");
}

}  // namespace

text_encoder_backend::text_encoder_backend(text_encoder_options options)
    : options_(std::move(options)) {
  cuda_device_ = parse_device(options_.device);
  encoder_config base;
  base.max_seq_len = options_.max_seq_len;
  base.max_batch_size = options_.max_batch_size;
  config_ = read_bert_config(options_.model_dir + "/config.json", base);
  config_.validate();
  weights_ = encoder_weights::load(options_.model_dir + "/model.safetensors", config_);
  slots_ = std::make_unique<std::array<slot, max_instances>>();
  // The first executor now, so a bad device or config fails the load, not the first batch.
  slot_for(0);
  outputs_ = block_pool::create({static_cast<std::size_t>(config_.max_batch_size) *
                                 static_cast<std::size_t>(config_.hidden) * sizeof(float)});
}

text_encoder_backend::~text_encoder_backend() {
  slots_.reset();  // executors (and their device memory) before the weights
  if (outputs_ != nullptr) outputs_->close();  // blocks still held by requests free later
}

std::unique_ptr<encoder_exec> text_encoder_backend::make_exec() const {
  if (cuda_device_ >= 0) return make_cuda_encoder(weights_, config_, cuda_device_);
  return make_cpu_encoder(weights_, config_, options_.blas_threads);
}

text_encoder_backend::slot& text_encoder_backend::slot_for(std::size_t index) {
  slot& s = (*slots_)[index];
  if (!s.exec) {
    s.exec = make_exec();
    s.ids.resize(static_cast<std::size_t>(config_.max_batch_size) *
                 static_cast<std::size_t>(config_.max_seq_len));
    s.offsets.resize(static_cast<std::size_t>(config_.max_batch_size) + 1);
  }
  return s;
}

void text_encoder_backend::on_worker_start(int instance) {
  if (instance < 0 || static_cast<std::size_t>(instance) + 1 >= max_instances) return;
  slot& s = (*slots_)[static_cast<std::size_t>(instance)];
  std::lock_guard lock(s.mutex);
  slot_for(static_cast<std::size_t>(instance));
}

void text_encoder_backend::compute(slot& s, const std::int32_t* ids, std::size_t stride,
                                   const std::int32_t* lengths, std::size_t n, float* out,
                                   bool clamp, std::size_t row0) {
  const std::int32_t max_len = std::min<std::int32_t>(
      config_.max_seq_len, static_cast<std::int32_t>(std::min<std::size_t>(stride, 1u << 30)));
  std::int32_t total = 0;
  s.offsets[0] = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::int32_t len = lengths[i];
    if (clamp) {
      len = std::clamp(len, 1, max_len);  // warm-up rows are zeros: one [PAD] token each
    } else if (len < 1 || len > max_len) {
      throw std::invalid_argument("text encoder: row " + std::to_string(row0 + i) + " has length " +
                                  std::to_string(len) + ", expected 1.." +
                                  std::to_string(max_len));
    }
    std::memcpy(s.ids.data() + total, ids + i * stride,
                static_cast<std::size_t>(len) * sizeof(std::int32_t));
    total += len;
    s.offsets[i + 1] = total;
  }
  s.exec->run(s.ids.data(), s.offsets.data(), static_cast<int>(n), out);
}

void text_encoder_backend::run(batch& b) {
  if (b.size == 0) return;
  check_batch_fits(b, static_cast<std::size_t>(config_.max_batch_size), max_instances, "text encoder");
  block* out = outputs_->acquire();  // our reference; each answered request adds one
  const block_hold hold(out);
  auto* values = reinterpret_cast<float*>(out->region(0));
  const auto* ids = reinterpret_cast<const std::int32_t*>(b.input(0));
  const auto* lengths = reinterpret_cast<const std::int32_t*>(b.input(1));
  {
    slot& s = (*slots_)[static_cast<std::size_t>(b.instance)];
    std::lock_guard lock(s.mutex);
    slot_for(static_cast<std::size_t>(b.instance));
    compute(s, ids, static_cast<std::size_t>(config_.max_seq_len), lengths, b.size, values,
            b.warmup(), 0);
    if (b.warmup()) return;
    const auto tokens = static_cast<std::uint64_t>(s.offsets[b.size]);
    real_tokens_.fetch_add(tokens, std::memory_order_relaxed);
    computed_tokens_.fetch_add(tokens, std::memory_order_relaxed);  // packed: no padding
    batches_.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t seen = largest_batch_.load(std::memory_order_relaxed);
    while (tokens > seen &&
           !largest_batch_.compare_exchange_weak(seen, tokens, std::memory_order_relaxed)) {
    }
  }
  for (std::size_t i = 0; i < b.size; ++i) {
    out->retain();
    b.requests[i]->output = out;
    b.requests[i]->row = static_cast<std::uint32_t>(i);
  }
}

void text_encoder_backend::encode(const std::int32_t* ids, std::size_t stride,
                                  const std::int32_t* lengths, std::size_t n, float* out) {
  slot& s = (*slots_)[max_instances - 1];
  std::lock_guard lock(s.mutex);
  slot_for(max_instances - 1);
  const auto chunk = static_cast<std::size_t>(config_.max_batch_size);
  const auto h = static_cast<std::size_t>(config_.hidden);
  for (std::size_t first = 0; first < n; first += chunk) {
    const std::size_t m = std::min(chunk, n - first);
    compute(s, ids + first * stride, stride, lengths + first, m, out + first * h, false,
            first);
  }
}

token_counts text_encoder_backend::token_stats() const noexcept {
  token_counts c;
  c.real_tokens = real_tokens_.load(std::memory_order_relaxed);
  c.computed_tokens = computed_tokens_.load(std::memory_order_relaxed);
  c.batches = batches_.load(std::memory_order_relaxed);
  c.largest_batch_tokens = largest_batch_.load(std::memory_order_relaxed);
  return c;
}

}  // namespace inferline::encoder
