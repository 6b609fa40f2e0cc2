// mpmc_queue: FIFO order, full/empty edges, capacity rounding, many laps, and a
// multi-producer/multi-consumer stress test that checks nothing is lost or duplicated.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#include "inferline/mpmc_queue.hpp"
#include "stress_scale.hpp"

namespace {

using inferline::mpmc_queue;
using inferline::testing::scaled;

TEST(MpmcQueue, PopsInPushOrder) {
  mpmc_queue<int> q(8);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(q.try_push(i));
  for (int i = 0; i < 8; ++i) {
    int v = -1;
    ASSERT_TRUE(q.try_pop(v));
    EXPECT_EQ(v, i);
  }
}

TEST(MpmcQueue, EmptyPopFailsAndLeavesOutputAlone) {
  mpmc_queue<int> q(4);
  int v = 42;
  EXPECT_FALSE(q.try_pop(v));
  EXPECT_EQ(v, 42);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0);
}

TEST(MpmcQueue, FullPushFailsUntilAPopFreesASlot) {
  mpmc_queue<int> q(4);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(q.try_push(i));
  EXPECT_FALSE(q.try_push(99));
  EXPECT_EQ(q.size(), 4);
  int v = -1;
  ASSERT_TRUE(q.try_pop(v));
  EXPECT_EQ(v, 0);
  EXPECT_TRUE(q.try_push(4));
  EXPECT_FALSE(q.try_push(5));
  for (int want = 1; want <= 4; ++want) {
    ASSERT_TRUE(q.try_pop(v));
    EXPECT_EQ(v, want);
  }
  EXPECT_FALSE(q.try_pop(v));
}

TEST(MpmcQueue, CapacityRoundsUpToPowerOfTwo) {
  EXPECT_EQ(mpmc_queue<int>(1).capacity(), 1u);
  EXPECT_EQ(mpmc_queue<int>(2).capacity(), 2u);
  EXPECT_EQ(mpmc_queue<int>(3).capacity(), 4u);
  EXPECT_EQ(mpmc_queue<int>(5).capacity(), 8u);
  EXPECT_EQ(mpmc_queue<int>(64).capacity(), 64u);
  EXPECT_EQ(mpmc_queue<int>(1000).capacity(), 1024u);
  EXPECT_THROW(mpmc_queue<int>(0), std::invalid_argument);
}

TEST(MpmcQueue, RoundedCapacityIsUsable) {
  mpmc_queue<int> q(5);  // rounds to 8
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(q.try_push(i)) << i;
  EXPECT_FALSE(q.try_push(8));
}

TEST(MpmcQueue, CapacityOneAlternates) {
  mpmc_queue<int> q(1);
  int v = 0;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(q.try_push(i));
    ASSERT_FALSE(q.try_push(i));
    ASSERT_TRUE(q.try_pop(v));
    ASSERT_EQ(v, i);
    ASSERT_FALSE(q.try_pop(v));
  }
}

TEST(MpmcQueue, WrapsAroundOverManyLaps) {
  // Each slot's turn counter advances by two per lap; run enough laps (and uneven fill levels)
  // that every slot is reused many thousands of times at every offset.
  mpmc_queue<std::uint64_t> q(4);
  std::uint64_t next_in = 0;
  std::uint64_t next_out = 0;
  const std::size_t rounds = 100'000;
  for (std::size_t round = 0; round < rounds; ++round) {
    const std::size_t fill = 1 + round % 4;
    for (std::size_t i = 0; i < fill; ++i) ASSERT_TRUE(q.try_push(next_in++));
    if (fill == 4) {
      ASSERT_FALSE(q.try_push(next_in));
    }
    ASSERT_EQ(q.size(), static_cast<std::ptrdiff_t>(fill));
    for (std::size_t i = 0; i < fill; ++i) {
      std::uint64_t v = 0;
      ASSERT_TRUE(q.try_pop(v));
      ASSERT_EQ(v, next_out++);
    }
    ASSERT_TRUE(q.empty());
  }
  EXPECT_GT(next_in / q.capacity(), 50'000u);  // laps completed
}

TEST(MpmcQueue, HoldsTriviallyCopyableStructs) {
  struct item {
    std::uint32_t a;
    double b;
    void* c;
  };
  mpmc_queue<item> q(2);
  ASSERT_TRUE(q.try_push(item{7, 2.5, &q}));
  item out{};
  ASSERT_TRUE(q.try_pop(out));
  EXPECT_EQ(out.a, 7u);
  EXPECT_EQ(out.b, 2.5);
  EXPECT_EQ(out.c, &q);
}

// P producers and C consumers start on one flag. Producer p pushes the distinct values
// p * per_producer + 1 ... (p + 1) * per_producer, retrying when full; consumers pop until every
// value is consumed. Checks: the sum, each value seen exactly once, and per-producer FIFO order
// as seen by each consumer (a ticket queue never reorders one producer's pushes).
void run_stress(std::size_t capacity, std::size_t producers, std::size_t consumers,
                std::size_t per_producer) {
  mpmc_queue<std::uint64_t> q(capacity);
  const std::uint64_t total = producers * per_producer;
  std::atomic<bool> go{false};
  std::atomic<std::uint64_t> consumed{0};
  std::vector<std::vector<std::uint64_t>> got(consumers);
  std::vector<std::thread> threads;

  for (std::size_t p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const std::uint64_t base = p * per_producer;
      for (std::uint64_t i = 1; i <= per_producer; ++i) {
        while (!q.try_push(base + i)) std::this_thread::yield();
      }
    });
  }
  for (std::size_t c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] {
      std::vector<std::uint64_t>& mine = got[c];
      mine.reserve(total / consumers + 1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      while (consumed.load(std::memory_order_relaxed) < total) {
        std::uint64_t v = 0;
        if (q.try_pop(v)) {
          mine.push_back(v);
          consumed.fetch_add(1, std::memory_order_relaxed);
        } else {
          std::this_thread::yield();
        }
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();

  std::vector<std::uint8_t> seen(total + 1, 0);
  std::uint64_t sum = 0;
  std::uint64_t count = 0;
  for (std::size_t c = 0; c < consumers; ++c) {
    std::vector<std::uint64_t> last(producers, 0);
    for (std::uint64_t v : got[c]) {
      ASSERT_GE(v, 1u);
      ASSERT_LE(v, total);
      ASSERT_EQ(seen[v], 0) << "value " << v << " popped twice";
      seen[v] = 1;
      sum += v;
      ++count;
      const std::size_t p = (v - 1) / per_producer;
      ASSERT_GT(v, last[p]) << "consumer " << c << " saw producer " << p << " out of order";
      last[p] = v;
    }
  }
  EXPECT_EQ(count, total);
  EXPECT_EQ(sum, total * (total + 1) / 2);
  for (std::uint64_t v = 1; v <= total; ++v) ASSERT_EQ(seen[v], 1) << "value " << v << " lost";
  std::uint64_t leftover = 0;
  EXPECT_FALSE(q.try_pop(leftover));
  EXPECT_TRUE(q.empty());
}

TEST(MpmcQueueStress, FourProducersFourConsumers) {
  run_stress(64, 4, 4, scaled(200'000, 100'000));
}

TEST(MpmcQueueStress, ManyProducersOneConsumer) {
  run_stress(16, 6, 1, scaled(100'000, 50'000));
}

TEST(MpmcQueueStress, OneProducerManyConsumers) {
  run_stress(16, 1, 6, scaled(400'000, 100'000));
}

TEST(MpmcQueueStress, CapacityOneUnderContention) {
  // Every operation meets the full or empty edge, and pushes meet slots whose pop is in flight.
  run_stress(1, 3, 3, scaled(50'000, 20'000));
}

}  // namespace
