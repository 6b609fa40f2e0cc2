// request_pool: exhaustion, LIFO reuse, generations and handles, and a concurrent acquire/
// release stress test that would hand one slot to two owners if the stack's ABA tag failed.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "inferline/request.hpp"
#include "stress_scale.hpp"

namespace {

using inferline::request;
using inferline::request_pool;
using inferline::request_state;
using inferline::testing::scaled;

TEST(RequestPool, HandsOutEverySlotOnceThenNothing) {
  request_pool pool(8, 100, nullptr);
  EXPECT_EQ(pool.capacity(), 8u);
  std::vector<request*> out;
  for (int i = 0; i < 8; ++i) {
    request* r = pool.acquire();
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->state(), request_state::queued);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(r->input) % 64, 0u);
    std::memset(r->input, i, 100);  // slots' input storage does not overlap (ASan checks)
    out.push_back(r);
  }
  EXPECT_EQ(pool.acquire(), nullptr);
  for (std::size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(pool.at(out[i]->index), out[i]);
    EXPECT_EQ(static_cast<int>(out[i]->input[99]), static_cast<int>(i));
  }
  for (request* r : out) pool.release(r);
  EXPECT_NE(pool.acquire(), nullptr);
}

TEST(RequestPool, ReuseBumpsTheGeneration) {
  request_pool pool(4, 8, nullptr);
  request* r = pool.acquire();
  const std::uint64_t first = r->handle();
  const std::uint32_t gen = r->generation();
  EXPECT_EQ(first >> 32, r->index);
  r->result = &pool;
  pool.release(r);
  EXPECT_EQ(r->state(), request_state::free);
  EXPECT_EQ(r->result, nullptr) << "release resets the answer";
  request* again = pool.acquire();
  EXPECT_EQ(again, r) << "free slots are reused last-in first-out";
  EXPECT_EQ(again->generation(), gen + 1);
  EXPECT_NE(again->handle(), first);
  // The old generation cannot move the new use; the current one can, once.
  EXPECT_FALSE(again->transition(gen, request_state::cancelled));
  EXPECT_TRUE(again->transition(gen + 1, request_state::cancelled));
  EXPECT_FALSE(again->transition(gen + 1, request_state::dispatched));
  EXPECT_EQ(again->state(), request_state::cancelled);
  pool.release(again);
}

TEST(RequestPool, RejectsZeroCapacity) {
  EXPECT_THROW(request_pool(0, 8, nullptr), std::invalid_argument);
}

TEST(RequestPoolStress, NoSlotHasTwoOwners) {
  const std::size_t capacity = 16;
  const std::size_t threads = 4;
  const std::size_t rounds = scaled(200'000, 100'000);
  request_pool pool(capacity, 64, nullptr);
  std::vector<std::atomic<int>> owners(capacity);
  std::atomic<std::size_t> double_owned{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (std::size_t t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      std::vector<request*> held;
      for (std::size_t i = 0; i < rounds; ++i) {
        // Hold up to three slots, release in a different order: the stack sees every pattern.
        if (held.size() < 3 && (i % 4 != 3)) {
          request* r = pool.acquire();
          if (r == nullptr) continue;
          if (owners[r->index].fetch_add(1, std::memory_order_relaxed) != 0) {
            double_owned.fetch_add(1);
          }
          std::memset(r->input, static_cast<int>(t), 64);  // TSAN: a shared slot is a race
          held.push_back(r);
        } else if (!held.empty()) {
          request* r = held[i % held.size()];
          held.erase(held.begin() + static_cast<std::ptrdiff_t>(i % held.size()));
          owners[r->index].fetch_sub(1, std::memory_order_relaxed);
          pool.release(r);
        }
      }
      for (request* r : held) {
        owners[r->index].fetch_sub(1, std::memory_order_relaxed);
        pool.release(r);
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (std::thread& t : ts) t.join();
  EXPECT_EQ(double_owned.load(), 0u);
  std::size_t free_slots = 0;
  // Bounded: a corrupt free list may hold a cycle.
  while (free_slots <= capacity && pool.acquire() != nullptr) ++free_slots;
  EXPECT_EQ(free_slots, capacity) << "every slot came back exactly once";
}

}  // namespace
