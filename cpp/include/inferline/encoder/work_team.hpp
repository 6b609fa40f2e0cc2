// A small persistent team of threads that shares one loop of independent chunks with its caller
// (the CPU encoder splits a packed-panel product's weight panels over it).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace inferline::encoder {

/// `threads - 1` helper threads, started once, that join the caller's loops. for_each(count, f)
/// calls f(i) once for every i in [0, count): the caller and the helpers claim indices one at a
/// time from one atomic ticket (work stealing), so a helper that the OS has not scheduled costs
/// the caller nothing beyond the chunk that helper holds. Between loops a helper spins for
/// `spin_us` microseconds (the gaps between one forward pass's products are shorter than a
/// futex wake), then parks on a condition variable until the next loop.
/// Thread-compatible: one caller at a time (one team per encoder executor); f must not call
/// for_each on the same team and must not throw.
class work_team {
 public:
  /// Starts max(threads, 1) - 1 helpers. Throws std::system_error if a thread cannot start.
  explicit work_team(int threads, int spin_us = 200);
  /// Stops and joins the helpers (waking parked ones).
  ~work_team();
  work_team(const work_team&) = delete;
  work_team& operator=(const work_team&) = delete;

  /// The caller plus the helpers.
  int threads() const noexcept { return static_cast<int>(helpers_.size()) + 1; }

  /// f(i) for every i in [0, count), spread over the team; returns when all calls have returned.
  /// With one thread, or count <= 1, it is a plain loop on the caller's thread.
  template <class F>
  void for_each(std::size_t count, F&& f) {
    if (helpers_.empty() || count <= 1) {
      for (std::size_t i = 0; i < count; ++i) f(i);
      return;
    }
    run(count, [](void* ctx, std::size_t i) { (*static_cast<F*>(ctx))(i); }, &f);
  }

 private:
  using task_fn = void (*)(void*, std::size_t);

  void run(std::size_t count, task_fn task, void* ctx);
  // Claims and runs indices of the open loop until none is left; false if there was none.
  bool work();
  void helper_main();

  // The ticket packs [epoch:24][count:20][next:20]: the loop's generation, its size and the
  // next unclaimed index, so one CAS both checks that a loop is still the one a thread read and
  // claims an index of it.
  static constexpr int field_bits = 20;
  static constexpr std::uint64_t field_mask = (std::uint64_t{1} << field_bits) - 1;
  static constexpr std::size_t max_count = field_mask;

  std::vector<std::thread> helpers_;
  const int spin_us_;
  std::uint64_t epoch_ = 0;  // caller's thread only
  // task_ and ctx_ are written by the caller before it publishes the ticket (release) and read
  // by a helper only after a CAS on the ticket (acquire) has claimed an index of that loop; the
  // caller does not write them again before every claimed index is done.
  task_fn task_ = nullptr;
  void* ctx_ = nullptr;
  // Separate cache lines: helpers hammer the ticket and the done count while the caller reads
  // them (false sharing with the parking fields would slow both).
  alignas(64) std::atomic<std::uint64_t> ticket_{0};
  alignas(64) std::atomic<std::size_t> done_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex park_mutex_;
  std::condition_variable park_cv_;
};

}  // namespace inferline::encoder
