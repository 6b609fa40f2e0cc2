// Request slot pool: one allocation at creation, lock-free acquire and release after that.
#include "inferline/request.hpp"

#include <cstdlib>
#include <new>
#include <stdexcept>

namespace inferline {

request_pool::request_pool(std::size_t capacity, std::size_t input_bytes, model_scheduler* owner)
    : capacity_(capacity), stride_((input_bytes + 63) / 64 * 64) {
  if (capacity == 0 || capacity >= nil) throw std::invalid_argument("bad request pool capacity");
  if (stride_ == 0) stride_ = 64;
  storage_ = static_cast<std::byte*>(std::aligned_alloc(64, stride_ * capacity_));
  if (storage_ == nullptr) throw std::bad_alloc();
  slots_ = std::make_unique<request[]>(capacity_);
  next_ = std::make_unique<std::atomic<std::uint32_t>[]>(capacity_);
  for (std::size_t i = 0; i < capacity_; ++i) {
    slots_[i].index = static_cast<std::uint32_t>(i);
    slots_[i].owner = owner;
    slots_[i].input = storage_ + i * stride_;
    next_[i].store(i + 1 < capacity_ ? static_cast<std::uint32_t>(i + 1) : nil,
                   std::memory_order_relaxed);
  }
  head_.store(0, std::memory_order_release);
}

request_pool::~request_pool() { std::free(storage_); }

request* request_pool::acquire() noexcept {
  std::uint64_t head = head_.load(std::memory_order_acquire);
  for (;;) {
    const auto idx = static_cast<std::uint32_t>(head);
    if (idx == nil) return nullptr;
    const std::uint32_t next = next_[idx].load(std::memory_order_relaxed);
    const std::uint64_t tagged = ((head >> 32) + 1) << 32 | next;
    // acquire on success: the releasing thread's writes to the slot happen before our use.
    if (head_.compare_exchange_weak(head, tagged, std::memory_order_acquire,
                                    std::memory_order_acquire)) {
      request* r = &slots_[idx];
      const std::uint32_t gen = r->generation() + 1;
      r->state_.store(request::pack(gen, request_state::queued), std::memory_order_release);
      return r;
    }
  }
}

void request_pool::release(request* r) noexcept {
  r->result = nullptr;
  r->output = nullptr;
  r->error.reset();
  r->next = nullptr;
  r->wake_group = nullptr;
  r->state_.store(request::pack(r->generation(), request_state::free), std::memory_order_relaxed);
  const std::uint32_t idx = r->index;
  std::uint64_t head = head_.load(std::memory_order_relaxed);
  for (;;) {
    next_[idx].store(static_cast<std::uint32_t>(head), std::memory_order_relaxed);
    const std::uint64_t tagged = ((head >> 32) + 1) << 32 | idx;
    // release: publishes the slot's reset (and next_) to the next acquirer.
    if (head_.compare_exchange_weak(head, tagged, std::memory_order_release,
                                    std::memory_order_relaxed)) {
      return;
    }
  }
}

}  // namespace inferline
