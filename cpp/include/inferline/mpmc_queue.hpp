// Bounded lock-free multi-producer multi-consumer queue (ticket/turn slots, after Vyukov).
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>

#include "inferline/platform.hpp"

namespace inferline {

/// A bounded FIFO of trivially copyable values. Each slot carries a turn counter: a producer
/// claims a ticket from head_, waits for its slot's turn to be even (empty), writes and makes it
/// odd; a consumer does the mirror on tail_. `try_push`/`try_pop` never block and never
/// allocate. Thread-safe for any number of producers and consumers.
template <typename T>
class mpmc_queue {
  static_assert(std::is_trivially_copyable_v<T>, "mpmc_queue holds trivially copyable values");
  static_assert(std::is_nothrow_default_constructible_v<T>, "slots are default constructed");

 public:
  /// Creates a queue holding at least `capacity` values (rounded up to a power of two).
  explicit mpmc_queue(std::size_t capacity) {
    if (capacity == 0) throw std::invalid_argument("mpmc_queue capacity must be positive");
    std::size_t cap = 1;
    while (cap < capacity) cap <<= 1;
    mask_ = cap - 1;
    shift_ = static_cast<unsigned>(__builtin_ctzll(cap));
    slots_ = std::make_unique<slot[]>(cap);
  }

  mpmc_queue(const mpmc_queue&) = delete;
  mpmc_queue& operator=(const mpmc_queue&) = delete;

  /// Appends `value`; false when the queue is full. Thread-safe, lock-free.
  bool try_push(const T& value) noexcept {
    std::size_t head = head_.load(std::memory_order_acquire);
    for (;;) {
      slot& s = slots_[head & mask_];
      // acquire: the consumer's release of this slot (turn made even) must be visible first.
      if (s.turn.load(std::memory_order_acquire) == turn(head) * 2) {
        if (head_.compare_exchange_strong(head, head + 1, std::memory_order_relaxed)) {
          s.value = value;
          // release: publishes `value` to the consumer that sees the odd turn.
          s.turn.store(turn(head) * 2 + 1, std::memory_order_release);
          return true;
        }
      } else {
        const std::size_t prev = head;
        head = head_.load(std::memory_order_acquire);
        if (head == prev) return false;
      }
    }
  }

  /// Removes the oldest value into `out`; false when the queue is empty. Thread-safe, lock-free.
  bool try_pop(T& out) noexcept {
    std::size_t tail = tail_.load(std::memory_order_acquire);
    for (;;) {
      slot& s = slots_[tail & mask_];
      // acquire: pairs with the producer's release so `value` is complete.
      if (s.turn.load(std::memory_order_acquire) == turn(tail) * 2 + 1) {
        if (tail_.compare_exchange_strong(tail, tail + 1, std::memory_order_relaxed)) {
          out = s.value;
          // release: hands the slot back to the producer of the next lap.
          s.turn.store(turn(tail) * 2 + 2, std::memory_order_release);
          return true;
        }
      } else {
        const std::size_t prev = tail;
        tail = tail_.load(std::memory_order_acquire);
        if (tail == prev) return false;
      }
    }
  }

  /// Number of values queued: a best guess while other threads push and pop.
  std::ptrdiff_t size() const noexcept {
    return static_cast<std::ptrdiff_t>(head_.load(std::memory_order_relaxed) -
                                       tail_.load(std::memory_order_relaxed));
  }

  /// True when `size()` is zero or less (a best guess under concurrency).
  bool empty() const noexcept { return size() <= 0; }

  /// Number of values the queue can hold.
  std::size_t capacity() const noexcept { return mask_ + 1; }

 private:
  // One slot per cache line: neighbouring slots are written by different threads.
  struct alignas(cache_line) slot {
    std::atomic<std::size_t> turn{0};
    T value{};
  };

  std::size_t turn(std::size_t ticket) const noexcept { return ticket >> shift_; }

  std::size_t mask_ = 0;
  unsigned shift_ = 0;
  std::unique_ptr<slot[]> slots_;
  // head_ (producers) and tail_ (consumers) on separate lines to avoid false sharing.
  alignas(cache_line) std::atomic<std::size_t> head_{0};
  alignas(cache_line) std::atomic<std::size_t> tail_{0};
};

}  // namespace inferline
