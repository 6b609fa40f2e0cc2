// Where workers hand answered requests to the event loop: a lock-free chain plus one wake-up fd.
#pragma once

#include <atomic>

#include "inferline/mpmc_queue.hpp"
#include "inferline/platform.hpp"
#include "inferline/request.hpp"

namespace inferline {

/// Answered requests wait here until the event loop drains them. Workers push a whole batch's
/// chain with one CAS and wake the loop at most once until it drains: the fd (an eventfd on
/// Linux, a pipe elsewhere) becomes readable only on the first push after a drain.
/// Producers: any threads. Consumer: one thread at a time (the event loop). Thread-safe.
class completion_queue {
 public:
  completion_queue();
  ~completion_queue();
  completion_queue(const completion_queue&) = delete;
  completion_queue& operator=(const completion_queue&) = delete;

  /// Appends the chain first..last (linked through `request::next`) and wakes the loop if it
  /// is not already woken, unless every request in it is a grouped row (`request::wake_group`)
  /// that succeeded and is not its group's last: those wait for the drain that group's last
  /// row wakes. Thread-safe, lock-free apart from the wake-up write.
  void push(request* first, request* last) noexcept;

  /// Takes every answered request, oldest first, as a chain; nullptr when none. Clears the
  /// wake-up first, so a push that races with this call wakes the loop again. Call from one
  /// thread at a time.
  request* take_all() noexcept;
  /// Marks the loop as already woken, so pushes from now until the next `take_all` write no
  /// wake-up: for the consumer thread when it computes answers itself and drains right after
  /// (it must then call `take_all`, or later pushes never wake it). Consumer thread only.
  void hold_wake() noexcept { armed_.store(true, std::memory_order_seq_cst); }

  /// The file descriptor that becomes readable when answers are waiting.
  int fd() const noexcept { return read_fd_; }

 private:
  void wake() noexcept;
  void clear_wake() noexcept;

  alignas(cache_line) std::atomic<request*> head_{nullptr};
  alignas(cache_line) std::atomic<bool> armed_{false};
  int read_fd_ = -1;
  int write_fd_ = -1;
};

}  // namespace inferline
