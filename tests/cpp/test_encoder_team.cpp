// work_team, the CPU encoder's helper threads: every index of every loop runs exactly once,
// helpers really take part, parked helpers wake for the next loop, and teams stop cleanly.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <thread>
#include <vector>

#include "inferline/encoder/work_team.hpp"

namespace {

using inferline::encoder::work_team;

// Many loops of every size from 0 to 70 back to back: a helper that claimed an index of a loop
// that had ended, or of the next one with the old task, would count twice or miss one. With
// spin_us 0 the helpers park after every loop, so each loop also exercises the wake-up.
void expect_each_index_once(int threads, int spin_us) {
  work_team team(threads, spin_us);
  ASSERT_EQ(team.threads(), threads < 1 ? 1 : threads);
  std::vector<std::atomic<int>> hits(70);
  for (int round = 0; round < 300; ++round) {
    const auto count = static_cast<std::size_t>(round % 71);
    for (auto& h : hits) h.store(0, std::memory_order_relaxed);
    team.for_each(count, [&](std::size_t i) { hits[i].fetch_add(1, std::memory_order_relaxed); });
    for (std::size_t i = 0; i < hits.size(); ++i) {
      ASSERT_EQ(hits[i].load(std::memory_order_relaxed), i < count ? 1 : 0)
          << threads << " threads, spin " << spin_us << " us, round " << round << ", index " << i;
    }
  }
}

TEST(WorkTeam, EveryIndexRunsExactlyOnce) {
  for (const int threads : {0, 1, 2, 4}) {
    for (const int spin_us : {0, 200}) expect_each_index_once(threads, spin_us);
  }
}

// Index 0 waits until index 1 has started: the caller holds index 0, so only a helper can take
// index 1. Passes only if a helper runs concurrently with the caller; bounded so that a broken
// team fails instead of hanging. spin_us 0: the helper is parked when the loop begins.
TEST(WorkTeam, HelperRunsBesideTheCaller) {
  work_team team(2, 0);
  const auto caller = std::this_thread::get_id();
  for (int round = 0; round < 20; ++round) {
    std::atomic<bool> second_started{false};
    std::atomic<bool> timed_out{false};
    std::thread::id ids[2];
    team.for_each(2, [&](std::size_t i) {
      ids[i] = std::this_thread::get_id();
      if (i == 1) {
        second_started.store(true, std::memory_order_release);
        return;
      }
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!second_started.load(std::memory_order_acquire)) {
        if (std::chrono::steady_clock::now() > deadline) {
          timed_out.store(true, std::memory_order_relaxed);
          return;
        }
        std::this_thread::yield();
      }
    });
    ASSERT_FALSE(timed_out.load(std::memory_order_relaxed)) << "round " << round;
    EXPECT_NE(ids[0], ids[1]) << "round " << round;
    EXPECT_TRUE(ids[0] == caller || ids[1] == caller) << "round " << round;
  }
}

// Teams started and stopped at once, before and after one loop: the destructor wakes helpers
// whether they are still starting, spinning or parked, and joins them.
TEST(WorkTeam, StopsWhateverItsHelpersAreDoing) {
  for (int i = 0; i < 50; ++i) {
    work_team idle(3, i % 2 == 0 ? 0 : 200);
    work_team used(3, i % 2 == 0 ? 0 : 200);
    std::atomic<int> sum{0};
    used.for_each(10, [&](std::size_t j) {
      sum.fetch_add(static_cast<int>(j), std::memory_order_relaxed);
    });
    EXPECT_EQ(sum.load(std::memory_order_relaxed), 45);
  }
}

}  // namespace
