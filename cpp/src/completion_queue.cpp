// Completion chain and event-loop wake-up (eventfd on Linux, a non-blocking pipe elsewhere).
#include "inferline/completion_queue.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <system_error>

#ifdef __linux__
#include <sys/eventfd.h>
#endif

namespace inferline {

completion_queue::completion_queue() {
#ifdef __linux__
  read_fd_ = write_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (read_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
#else
  int fds[2];
  if (::pipe(fds) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  for (int fd : fds) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  read_fd_ = fds[0];
  write_fd_ = fds[1];
#endif
}

completion_queue::~completion_queue() {
  if (read_fd_ >= 0) ::close(read_fd_);
  if (write_fd_ >= 0 && write_fd_ != read_fd_) ::close(write_fd_);
}

void completion_queue::push(request* first, request* last) noexcept {
  // The stack is newest first and take_all reverses it as a whole, so push the chain reversed
  // (last on top): each batch then comes out in its own row order, not backwards.
  request* prev = nullptr;
  bool wakes = false;
  for (request* r = first;;) {
    request* next = r->next;
    if (r->wake_group == nullptr) {
      wakes = true;
    } else {
      // acq_rel: whichever row brings the count to zero is the group's last, and wakes.
      const bool last = r->wake_group->fetch_sub(1, std::memory_order_acq_rel) == 1;
      if (last || r->result_outcome != outcome::success) wakes = true;
    }
    r->next = prev;
    prev = r;
    if (r == last) break;
    r = next;
  }
  request* head = head_.load(std::memory_order_relaxed);
  do {
    first->next = head;
    // acq_rel: release publishes the answers in the chain to the draining thread; acquire
    // synchronises with take_all's exchange, so its disarm (armed_ = false) is visible below.
  } while (!head_.compare_exchange_weak(head, last, std::memory_order_acq_rel,
                                        std::memory_order_relaxed));
  // acq_rel: a push that follows a drain sees armed_ == false and wakes the loop. A chain of
  // grouped rows that are neither a group's last nor failed is taken by a later drain: its
  // group's last row wakes one (every row is pushed exactly once, so that row comes).
  if (wakes && !armed_.exchange(true, std::memory_order_acq_rel)) wake();
}

request* completion_queue::take_all() noexcept {
  clear_wake();
  // acq_rel: acquire makes every answer in the chain visible; release carries the disarm above
  // to the next push, which then wakes the loop again.
  request* chain = head_.exchange(nullptr, std::memory_order_acq_rel);
  // The chain is newest first; reverse it so callers answer in completion order.
  request* ordered = nullptr;
  while (chain != nullptr) {
    request* next = chain->next;
    chain->next = ordered;
    ordered = chain;
    chain = next;
  }
  return ordered;
}

void completion_queue::wake() noexcept {
#ifdef __linux__
  const std::uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(write_fd_, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
#else
  const char one = 1;
  ssize_t n;
  do {
    n = ::write(write_fd_, &one, 1);
  } while (n < 0 && errno == EINTR);
#endif
  // EAGAIN means the fd is already readable, which is all a wake-up needs.
}

void completion_queue::clear_wake() noexcept {
  // Empty the fd first, then disarm. The other order loses wake-ups: a push landing between
  // the disarm and the read would see armed_ == false, write the fd and re-arm, and the read
  // would then swallow that write, leaving armed_ true with an empty fd; every later push
  // sees armed_ true and never wakes the loop again.
  char buf[64];
  while (::read(read_fd_, buf, sizeof buf) > 0) {
  }
  // release: keeps the disarm after the read above; it is also ordered before take_all's
  // exchange (program order, then that exchange's release).
  armed_.store(false, std::memory_order_release);
}

}  // namespace inferline
