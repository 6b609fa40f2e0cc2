// completion_queue: chain order, the one-wake-up-per-drain fd protocol, and a multi-producer
// stress test whose consumer sleeps only in poll(2), so a lost wake-up fails instead of hiding.
#include <gtest/gtest.h>
#include <poll.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "inferline/completion_queue.hpp"
#include "inferline/request.hpp"
#include "stress_scale.hpp"

namespace {

using inferline::completion_queue;
using inferline::request;
using inferline::testing::scaled;

bool readable(const completion_queue& q, int timeout_ms = 0) {
  pollfd p{q.fd(), POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}

std::unique_ptr<request[]> make_requests(std::size_t n) {
  auto rs = std::make_unique<request[]>(n);
  for (std::size_t i = 0; i < n; ++i) rs[i].index = static_cast<std::uint32_t>(i);
  return rs;
}

// Links rs[first..last] through `next` and pushes them as one chain.
void push_range(completion_queue& q, request* rs, std::size_t first, std::size_t last) {
  for (std::size_t i = first; i < last; ++i) rs[i].next = &rs[i + 1];
  rs[last].next = nullptr;
  q.push(&rs[first], &rs[last]);
}

TEST(CompletionQueue, EmptyTakesNothingAndIsNotReadable) {
  completion_queue q;
  EXPECT_GE(q.fd(), 0);
  EXPECT_FALSE(readable(q));
  EXPECT_EQ(q.take_all(), nullptr);
}

TEST(CompletionQueue, TakesChainsOldestFirst) {
  completion_queue q;
  auto rs = make_requests(6);
  push_range(q, rs.get(), 0, 2);  // one batch of three
  push_range(q, rs.get(), 3, 3);  // a batch of one
  push_range(q, rs.get(), 4, 5);
  std::vector<std::uint32_t> order;
  for (request* r = q.take_all(); r != nullptr; r = r->next) order.push_back(r->index);
  EXPECT_EQ(order, (std::vector<std::uint32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(q.take_all(), nullptr);
}

TEST(CompletionQueue, WakesOncePerDrain) {
  completion_queue q;
  auto rs = make_requests(4);
  push_range(q, rs.get(), 0, 0);
  EXPECT_TRUE(readable(q));
  push_range(q, rs.get(), 1, 1);  // already woken: no second write needed, still readable
  EXPECT_TRUE(readable(q));
  ASSERT_NE(q.take_all(), nullptr);
  EXPECT_FALSE(readable(q)) << "the drain clears the wake-up";
  push_range(q, rs.get(), 2, 3);  // the first push after a drain wakes again
  EXPECT_TRUE(readable(q));
  request* r = q.take_all();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->index, 2u);
  EXPECT_EQ(r->next->index, 3u);
  EXPECT_EQ(r->next->next, nullptr);
  EXPECT_FALSE(readable(q));
}

TEST(CompletionQueue, GroupedRowsWakeAtTheirLastRowOrAFailure) {
  completion_queue q;
  auto rs = make_requests(7);
  std::atomic<std::uint32_t> group{4};
  for (std::size_t i = 0; i < 4; ++i) rs[i].wake_group = &group;
  push_range(q, rs.get(), 0, 1);  // two of four rows: nothing waits on them yet
  EXPECT_FALSE(readable(q));
  push_range(q, rs.get(), 2, 2);
  EXPECT_FALSE(readable(q));
  push_range(q, rs.get(), 3, 3);  // the last row wakes, and the drain takes all four
  EXPECT_TRUE(readable(q));
  EXPECT_EQ(group.load(), 0u);
  std::vector<std::uint32_t> order;
  for (request* r = q.take_all(); r != nullptr; r = r->next) order.push_back(r->index);
  EXPECT_EQ(order, (std::vector<std::uint32_t>{0, 1, 2, 3}));
  EXPECT_FALSE(readable(q));

  // A failed row wakes at once (the caller is answered with its error), before the last.
  std::atomic<std::uint32_t> failing{3};
  for (std::size_t i = 4; i < 7; ++i) rs[i].wake_group = &failing;
  push_range(q, rs.get(), 4, 4);
  EXPECT_FALSE(readable(q));
  rs[5].result_outcome = inferline::outcome::model_error;
  push_range(q, rs.get(), 5, 5);
  EXPECT_TRUE(readable(q));
  ASSERT_NE(q.take_all(), nullptr);
  push_range(q, rs.get(), 6, 6);  // the last row still wakes the drain that frees the call
  EXPECT_TRUE(readable(q));
  request* r = q.take_all();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->index, 6u);
  EXPECT_EQ(failing.load(), 0u);
}

TEST(CompletionQueue, AnUngroupedRequestWakesForTheGroupedRowsBeforeIt) {
  completion_queue q;
  auto rs = make_requests(3);
  std::atomic<std::uint32_t> group{2};
  rs[0].wake_group = &group;
  push_range(q, rs.get(), 0, 0);
  EXPECT_FALSE(readable(q));
  push_range(q, rs.get(), 1, 1);  // a single request: wakes, and the drain takes both
  EXPECT_TRUE(readable(q));
  std::vector<std::uint32_t> order;
  for (request* r = q.take_all(); r != nullptr; r = r->next) order.push_back(r->index);
  EXPECT_EQ(order, (std::vector<std::uint32_t>{0, 1}));
}

TEST(CompletionQueueStress, ProducersAndOneDrainLoseNothing) {
  const std::size_t producers = 3;
  const std::size_t per_producer = scaled(60'000, 30'000);
  const std::size_t total = producers * per_producer;
  completion_queue q;
  auto rs = make_requests(total);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (std::size_t p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      std::size_t i = p * per_producer;
      const std::size_t end = i + per_producer;
      std::size_t len = 1;
      while (i < end) {  // chains of 1..5, like batches
        const std::size_t last = std::min(end, i + len) - 1;
        push_range(q, rs.get(), i, last);
        i = last + 1;
        len = len % 5 + 1;
      }
    });
  }
  std::vector<std::uint8_t> seen(total, 0);
  std::size_t got = 0;
  std::size_t wakeups = 0;
  std::size_t duplicates = 0;
  bool lost_wakeup = false;
  go.store(true, std::memory_order_release);
  while (got < total) {
    // Only the fd wakes this thread: if a push forgot to wake it, poll times out.
    if (!readable(q, 10'000)) {
      lost_wakeup = true;
      break;
    }
    ++wakeups;
    for (request* r = q.take_all(); r != nullptr; r = r->next) {
      if (seen[r->index]++ != 0) ++duplicates;
      ++got;
    }
  }
  for (std::thread& t : threads) t.join();
  EXPECT_FALSE(lost_wakeup) << "got " << got << " of " << total;
  EXPECT_EQ(got, total);
  EXPECT_EQ(duplicates, 0u);
  for (std::size_t i = 0; i < total; ++i) ASSERT_EQ(seen[i], 1) << "request " << i;
  EXPECT_LE(wakeups, total);
  EXPECT_EQ(q.take_all(), nullptr);
}

}  // namespace
