// Pooled aligned buffers: allocation only while the pool grows.
#include "inferline/block_pool.hpp"

#include <cstdlib>
#include <new>

namespace inferline {
namespace {
constexpr std::size_t alignment = 64;
std::size_t round_up(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }
}  // namespace

block::block(block_pool* pool, const std::vector<std::size_t>& sizes)
    : pool_(pool), sizes_(sizes) {
  std::size_t total = 0;
  for (std::size_t s : sizes) total += round_up(s == 0 ? 1 : s);
  storage_ = static_cast<std::byte*>(std::aligned_alloc(alignment, total == 0 ? alignment : total));
  if (storage_ == nullptr) throw std::bad_alloc();
  std::size_t offset = 0;
  for (std::size_t s : sizes) {
    regions_.push_back(storage_ + offset);
    offset += round_up(s == 0 ? 1 : s);
  }
}

block::~block() { std::free(storage_); }

void block::release() noexcept {
  // acq_rel: the last releaser must see every write made through other references before the
  // block is reused by another batch.
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) pool_->give_back(this);
}

block_pool::block_pool(std::vector<std::size_t> region_bytes)
    : region_bytes_(std::move(region_bytes)) {}

block_pool* block_pool::create(std::vector<std::size_t> region_bytes) {
  return new block_pool(std::move(region_bytes));
}

block* block_pool::acquire() {
  block* b = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      ++allocated_;
    }
  }
  if (b == nullptr) {
    try {
      b = new block(this, region_bytes_);
    } catch (...) {
      std::lock_guard lock(mutex_);
      --allocated_;
      throw;
    }
  }
  b->refs_.store(1, std::memory_order_relaxed);
  return b;
}

void block_pool::give_back(block* b) noexcept {
  bool destroy_pool = false;
  {
    std::lock_guard lock(mutex_);
    if (!closed_) {
      free_.push_back(b);
      return;
    }
    --allocated_;
    destroy_pool = allocated_ == 0;
  }
  delete b;
  if (destroy_pool) delete this;
}

void block_pool::close() noexcept {
  std::vector<block*> to_free;
  bool destroy_pool = false;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    to_free.swap(free_);
    allocated_ -= to_free.size();
    destroy_pool = allocated_ == 0;
  }
  for (block* b : to_free) delete b;
  if (destroy_pool) delete this;
}

std::size_t block_pool::allocated() const noexcept {
  std::lock_guard lock(mutex_);
  return allocated_;
}

}  // namespace inferline
