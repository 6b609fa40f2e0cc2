// Reference-counted, 64-byte aligned buffers recycled through a pool: batch inputs and outputs.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace inferline {

class block_pool;

/// One pooled buffer split into regions (one per tensor), each 64-byte aligned. A block is
/// shared by reference count: the worker holds one reference while it computes, every request
/// answered from it holds one, and a zero-copy numpy view holds one. The last `release()`
/// hands it back to its pool. `retain`/`release` are thread-safe; the bytes are not guarded.
class block {
 public:
  /// Start of region `i`.
  std::byte* region(std::size_t i) const noexcept { return regions_[i]; }
  /// Number of regions.
  std::size_t region_count() const noexcept { return regions_.size(); }
  /// Capacity of region `i` in bytes.
  std::size_t region_bytes(std::size_t i) const noexcept { return sizes_[i]; }

  /// Adds a reference. Thread-safe.
  void retain() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  /// Drops a reference; the last one returns the block to its pool. Thread-safe.
  void release() noexcept;

  ~block();
  block(const block&) = delete;
  block& operator=(const block&) = delete;

 private:
  friend class block_pool;
  block(block_pool* pool, const std::vector<std::size_t>& sizes);

  std::atomic<std::int32_t> refs_{0};
  block_pool* pool_;
  std::byte* storage_ = nullptr;
  std::vector<std::byte*> regions_;
  std::vector<std::size_t> sizes_;
};

/// Holds one reference to a block for a scope: drops it (`release`) when the scope ends,
/// however it ends. Not copyable.
class block_hold {
 public:
  explicit block_hold(block* blk) noexcept : blk_(blk) {}
  ~block_hold() { blk_->release(); }
  block_hold(const block_hold&) = delete;
  block_hold& operator=(const block_hold&) = delete;

 private:
  block* blk_;
};

/// A pool of equally shaped blocks that grows on demand and never shrinks, so steady state
/// allocates nothing. The pool may be closed while blocks are still out (for example held by a
/// numpy view after the model is unloaded): it then frees itself when the last one returns.
/// Thread-safe.
class block_pool {
 public:
  /// Creates a pool of blocks with regions of `region_bytes` each.
  static block_pool* create(std::vector<std::size_t> region_bytes);

  /// Takes a block with one reference. Allocates only when none is free. Thread-safe.
  block* acquire();

  /// Gives up the owner's hold: frees free blocks now, the rest as they return. Thread-safe;
  /// call once. The pointer must not be used afterwards.
  void close() noexcept;

  /// Blocks ever allocated (free plus out). Thread-safe.
  std::size_t allocated() const noexcept;

 private:
  friend class block;
  explicit block_pool(std::vector<std::size_t> region_bytes);
  ~block_pool() = default;
  void give_back(block* b) noexcept;

  const std::vector<std::size_t> region_bytes_;
  mutable std::mutex mutex_;  // guards free_, allocated_, closed_; never held on a hot path long
  std::vector<block*> free_;
  std::size_t allocated_ = 0;
  bool closed_ = false;
};

}  // namespace inferline
