// block_pool: aligned regions, reuse without allocation in steady state, shared references across
// threads, and close() while blocks are still out (the ASan build proves nothing leaks).
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "inferline/block_pool.hpp"
#include "inferline/mpmc_queue.hpp"
#include "stress_scale.hpp"

namespace {

using inferline::block;
using inferline::block_pool;
using inferline::testing::scaled;

TEST(BlockPool, RegionsAreAlignedAndSized) {
  block_pool* pool = block_pool::create({100, 0, 64, 3});
  block* b = pool->acquire();
  ASSERT_EQ(b->region_count(), 4u);
  EXPECT_EQ(b->region_bytes(0), 100u);
  EXPECT_EQ(b->region_bytes(1), 0u);
  EXPECT_EQ(b->region_bytes(2), 64u);
  EXPECT_EQ(b->region_bytes(3), 3u);
  for (std::size_t i = 0; i < b->region_count(); ++i) {
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b->region(i)) % 64, 0u) << "region " << i;
  }
  // Regions do not overlap: fill each with its own byte and read them all back.
  for (std::size_t i = 0; i < b->region_count(); ++i) {
    std::memset(b->region(i), static_cast<int>(i + 1), b->region_bytes(i));
  }
  for (std::size_t i = 0; i < b->region_count(); ++i) {
    for (std::size_t k = 0; k < b->region_bytes(i); ++k) {
      ASSERT_EQ(static_cast<int>(b->region(i)[k]), static_cast<int>(i + 1));
    }
  }
  b->release();
  pool->close();
}

TEST(BlockPool, SteadyStateReusesBlocks) {
  block_pool* pool = block_pool::create({512});
  EXPECT_EQ(pool->allocated(), 0u);
  block* first = pool->acquire();
  EXPECT_EQ(pool->allocated(), 1u);
  first->release();
  for (int i = 0; i < 1000; ++i) {
    block* b = pool->acquire();
    EXPECT_EQ(b, first);  // the one free block comes back
    b->release();
  }
  EXPECT_EQ(pool->allocated(), 1u);

  // Three out at once grows the pool to three, and then it stays there.
  std::vector<block*> out;
  for (int round = 0; round < 100; ++round) {
    for (int k = 0; k < 3; ++k) out.push_back(pool->acquire());
    for (block* b : out) b->release();
    out.clear();
  }
  EXPECT_EQ(pool->allocated(), 3u);
  pool->close();
}

TEST(BlockPool, LastReferenceReturnsTheBlock) {
  block_pool* pool = block_pool::create({64});
  block* b = pool->acquire();
  b->retain();
  b->retain();
  b->release();
  b->release();
  // One reference left: the block is still out, so a new acquire must allocate another.
  block* other = pool->acquire();
  EXPECT_NE(other, b);
  EXPECT_EQ(pool->allocated(), 2u);
  b->release();
  other->release();
  block* again = pool->acquire();
  EXPECT_TRUE(again == b || again == other);
  again->release();
  EXPECT_EQ(pool->allocated(), 2u);
  pool->close();
}

TEST(BlockPool, CloseWithNothingOutFreesAtOnce) {
  block_pool* pool = block_pool::create({128, 128});
  std::vector<block*> out;
  for (int k = 0; k < 4; ++k) out.push_back(pool->acquire());
  for (block* b : out) b->release();
  pool->close();  // frees four blocks and the pool; ASan reports a leak or use-after-free
}

TEST(BlockPool, CloseWithOutstandingBlocksFreesOnLastRelease) {
  block_pool* pool = block_pool::create({256});
  block* held = pool->acquire();
  block* shared = pool->acquire();
  block* idle = pool->acquire();
  idle->release();
  shared->retain();  // two holders, e.g. two requests answered from one batch
  std::memset(held->region(0), 0xab, 256);
  pool->close();     // frees `idle` now; the others are still in use and must stay valid
  EXPECT_EQ(static_cast<unsigned>(held->region(0)[255]), 0xabu);
  held->release();
  shared->release();
  std::memset(shared->region(0), 0xcd, 256);  // still one reference: still valid
  shared->release();  // the last one: frees the block and the pool
}

TEST(BlockPool, ReferencesDroppedOnAnotherThread) {
  // Workers fill a block, give one reference to a drain thread (as requests answered from a
  // batch are finished on the event loop) and drop their own. The drain checks the bytes and
  // drops the last reference. The pool stays bounded and the bytes are never torn: a block is
  // reused only after its last holder let go.
  block_pool* pool = block_pool::create({512});
  const std::size_t rounds = scaled(50'000, 20'000);
  const std::size_t workers = 2;
  inferline::mpmc_queue<block*> handoff(64);
  std::atomic<std::size_t> finished{0};
  std::atomic<std::size_t> bad{0};
  std::vector<std::thread> threads;
  for (std::size_t w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (std::size_t i = 0; i < rounds; ++i) {
        block* b = pool->acquire();
        std::memset(b->region(0), static_cast<int>(w + 1), 512);
        b->retain();
        while (!handoff.try_push(b)) std::this_thread::yield();
        b->release();
      }
      finished.fetch_add(1, std::memory_order_release);
    });
  }
  std::thread drain([&] {
    for (;;) {
      block* b = nullptr;
      if (handoff.try_pop(b)) {
        const auto first = static_cast<unsigned char>(b->region(0)[0]);
        const auto last = static_cast<unsigned char>(b->region(0)[511]);
        if (first != last || first == 0 || first > workers) bad.fetch_add(1);
        b->release();
      } else if (finished.load(std::memory_order_acquire) == workers && handoff.empty()) {
        break;
      } else {
        std::this_thread::yield();
      }
    }
  });
  for (std::thread& t : threads) t.join();
  drain.join();
  EXPECT_EQ(bad.load(), 0u);
  // At most one block per worker, what can wait in the hand-off queue and the drain's own.
  EXPECT_LE(pool->allocated(), workers + handoff.capacity() + 1);
  const std::size_t before = pool->allocated();
  for (int i = 0; i < 100; ++i) pool->acquire()->release();
  EXPECT_EQ(pool->allocated(), before);
  pool->close();
}

}  // namespace
