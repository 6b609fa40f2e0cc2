// work_team: helpers that claim loop indices from one packed atomic ticket, spin briefly between
// loops and park on a condition variable when idle.
#include "inferline/encoder/work_team.hpp"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace inferline::encoder {
namespace {

constexpr int epoch_shift = 40;  // [epoch:24][count:20][next:20]
constexpr std::uint64_t epoch_mask = (std::uint64_t{1} << 24) - 1;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

}  // namespace

work_team::work_team(int threads, int spin_us) : spin_us_(std::max(0, spin_us)) {
  const int helpers = std::max(threads, 1) - 1;
  helpers_.reserve(static_cast<std::size_t>(helpers));
  try {
    for (int i = 0; i < helpers; ++i) helpers_.emplace_back([this] { helper_main(); });
  } catch (...) {
    stop_.store(true, std::memory_order_seq_cst);
    {
      const std::lock_guard<std::mutex> lock(park_mutex_);
      park_cv_.notify_all();
    }
    for (std::thread& t : helpers_) t.join();
    throw;
  }
}

work_team::~work_team() {
  // seq_cst, like the ticket's publication: a helper that registered as a sleeper either sees
  // stop_ in its wait predicate or is parked when the notify below runs under the mutex.
  stop_.store(true, std::memory_order_seq_cst);
  {
    const std::lock_guard<std::mutex> lock(park_mutex_);
    park_cv_.notify_all();
  }
  for (std::thread& t : helpers_) t.join();
}

void work_team::run(std::size_t count, task_fn task, void* ctx) {
  if (count > max_count) {
    for (std::size_t i = 0; i < count; ++i) task(ctx, i);
    return;
  }
  task_ = task;
  ctx_ = ctx;
  done_.store(0, std::memory_order_relaxed);
  epoch_ = (epoch_ + 1) & epoch_mask;
  // seq_cst (a release for task_, ctx_ and done_): against a helper's sleepers_ increment then
  // ticket check, so that either it sees this loop or this thread sees it parked and wakes it.
  ticket_.store((epoch_ << epoch_shift) | (static_cast<std::uint64_t>(count) << field_bits),
                std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    const std::lock_guard<std::mutex> lock(park_mutex_);
    park_cv_.notify_all();
  }
  work();
  // Only indices that helpers hold are left: a chunk each at most. Yield after a short spin so a
  // helper descheduled on a busy machine gets the core back.
  for (unsigned spins = 0; done_.load(std::memory_order_acquire) < count; ++spins) {
    if (spins < 4096) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

bool work_team::work() {
  bool any = false;
  std::uint64_t w = ticket_.load(std::memory_order_acquire);
  for (;;) {
    const std::uint64_t count = (w >> field_bits) & field_mask;
    const std::uint64_t next = w & field_mask;
    if (next >= count) return any;
    // acq_rel: acquire pairs with the caller's publication (task_, ctx_); a stale ticket (the
    // loop ended, or a newer one began: another epoch) fails here, so no index is run twice.
    // The 24-bit epoch could only repeat after 16M loops while this thread stalls here.
    if (ticket_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      task_(ctx_, static_cast<std::size_t>(next));
      // release: the index's writes happen before the caller's acquire of the final count.
      done_.fetch_add(1, std::memory_order_release);
      any = true;
      w = ticket_.load(std::memory_order_acquire);
    }
  }
}

void work_team::helper_main() {
  const auto has_work = [this] {
    const std::uint64_t w = ticket_.load(std::memory_order_seq_cst);
    return (w & field_mask) < ((w >> field_bits) & field_mask);
  };
  const auto spin = std::chrono::microseconds(spin_us_);
  for (;;) {
    if (work()) continue;
    bool found = false;
    const auto deadline = std::chrono::steady_clock::now() + spin;
    for (unsigned spins = 1;; ++spins) {
      if (stop_.load(std::memory_order_relaxed)) return;
      if (has_work()) {
        found = true;
        break;
      }
      cpu_relax();
      if (spins % 64 == 0 && std::chrono::steady_clock::now() >= deadline) break;
    }
    if (found) continue;
    std::unique_lock<std::mutex> lock(park_mutex_);
    // seq_cst: see run(); registered before the predicate's ticket check.
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    park_cv_.wait(lock, [&] { return stop_.load(std::memory_order_seq_cst) || has_work(); });
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    if (stop_.load(std::memory_order_relaxed)) return;
  }
}

}  // namespace inferline::encoder
