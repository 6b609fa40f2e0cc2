// Token-capped batching: max_batch_tokens with costs read from an INT32 input (cost_input).
// Batches never pass the cap (a lone over-cap item runs alone), requests keep FIFO order, and
// every request is answered once, also with concurrent producers and several instances.
#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"
#include "inferline/clock.hpp"
#include "inferline/completion_queue.hpp"
#include "inferline/scheduler.hpp"
#include "stress_scale.hpp"

namespace {

using namespace inferline;
using namespace std::chrono_literals;

// Inputs: 0 = the item's cost (INT32 [1]), 1 = its id (INT32 [1]).
struct seen_batch {
  std::vector<std::int32_t> ids, costs;
  std::int64_t cost_sum() const { return std::accumulate(costs.begin(), costs.end(), 0LL); }
};

// Records each batch (ids and costs as the backend reads them) and answers every row with a
// pooled one-int block holding its id.
class recording_backend final : public backend {
 public:
  explicit recording_backend(std::size_t max_batch)
      : outputs_(block_pool::create({max_batch * sizeof(std::int32_t)})) {}
  ~recording_backend() override { outputs_->close(); }

  void run(batch& b) override {
    seen_batch s;
    for (std::size_t row = 0; row < b.size; ++row) {
      std::int32_t cost = 0, id = 0;
      std::memcpy(&cost, b.input(0) + row * 4, 4);
      std::memcpy(&id, b.input(1) + row * 4, 4);
      s.costs.push_back(cost);
      s.ids.push_back(id);
    }
    if (b.warmup()) return;
    block* out = outputs_->acquire();
    std::memcpy(out->region(0), b.input(1), b.size * 4);
    for (std::size_t row = 0; row < b.size; ++row) {
      out->retain();
      b.requests[row]->output = out;
      b.requests[row]->row = static_cast<std::uint32_t>(row);
    }
    out->release();
    std::lock_guard lock(mutex_);
    batches_.push_back(std::move(s));
  }
  std::string platform() const override { return "test"; }

  std::vector<seen_batch> batches() const {
    std::lock_guard lock(mutex_);
    return batches_;
  }

 private:
  block_pool* outputs_;
  mutable std::mutex mutex_;
  std::vector<seen_batch> batches_;
};

scheduler_config token_config(std::size_t max_batch_size, std::size_t cap, std::size_t instances) {
  scheduler_config c;
  c.name = "tokens";
  c.input_bytes = {4, 4};
  c.max_batch_size = max_batch_size;
  c.max_batch_tokens = cap;
  c.cost_input = 0;
  c.instances = instances;
  c.max_queue_size = 4096;
  return c;
}

// A scheduler whose answers the test thread drains itself (polling the completion fd).
class token_harness {
 public:
  explicit token_harness(scheduler_config c)
      : model_(std::make_shared<recording_backend>(c.max_batch_size)),
        sched_(std::move(c), model_, completions_) {}
  ~token_harness() { sched_.shutdown(); }

  model_scheduler& sched() { return sched_; }
  recording_backend& model() { return *model_; }

  bool submit(std::int32_t id, std::int32_t cost) {
    request* r = nullptr;
    if (sched_.prepare(0, &r) != admit::ok) return false;
    std::memcpy(r->input, &cost, 4);
    std::memcpy(r->input + 4, &id, 4);
    sched_.commit(r, nullptr, no_deadline, static_cast<std::uint64_t>(id));
    return true;
  }

  /// Drains answers until `n` arrived (or 20 s passed); counts each id's answers.
  bool drain(std::size_t n, std::vector<int>& times) {
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (answered_ < n && std::chrono::steady_clock::now() < until) {
      pollfd p{completions_.fd(), POLLIN, 0};
      ::poll(&p, 1, 100);
      for (request* r = completions_.take_all(); r != nullptr;) {
        request* next = r->next;
        if (r->result_outcome == outcome::success && r->id < times.size()) ++times[r->id];
        sched_.finish(r, r->result_outcome, now_ns());
        ++answered_;
        r = next;
      }
    }
    return answered_ >= n;
  }

 private:
  std::shared_ptr<recording_backend> model_;
  completion_queue completions_;
  model_scheduler sched_;
  std::size_t answered_ = 0;
};

TEST(SchedulerTokens, BatchesRespectTheCapInFifoOrderAndAnOverCapItemRunsAlone) {
  token_harness h(token_config(8, 10, 1));
  const std::vector<std::int32_t> costs = {3, 3, 3, 12, 1, 1, 5, 5, 2, 4, 4, 4};
  for (std::size_t i = 0; i < costs.size(); ++i) {
    ASSERT_TRUE(h.submit(static_cast<std::int32_t>(i), costs[i]));
  }
  h.sched().start();  // everything is queued: the batches are cut from one backlog
  std::vector<int> times(costs.size(), 0);
  ASSERT_TRUE(h.drain(costs.size(), times));
  const auto batches = h.model().batches();
  std::vector<std::vector<std::int32_t>> ids;
  for (const auto& b : batches) ids.push_back(b.ids);
  const std::vector<std::vector<std::int32_t>> want = {
      {0, 1, 2}, {3}, {4, 5, 6}, {7, 8}, {9, 10}, {11}};
  EXPECT_EQ(ids, want);
  for (std::size_t i = 0; i < batches.size(); ++i) {
    if (batches[i].ids.size() > 1) {
      EXPECT_LE(batches[i].cost_sum(), 10) << "batch " << i;
    }
  }
  for (int t : times) {
    EXPECT_EQ(t, 1);
  }
}

TEST(SchedulerTokens, CostsAreReadFromTheInputAndBelowOneCountAsOne) {
  token_harness h(token_config(8, 2, 1));
  const std::vector<std::int32_t> costs = {0, -5, 1, 1, 2, 0};
  for (std::size_t i = 0; i < costs.size(); ++i) {
    ASSERT_TRUE(h.submit(static_cast<std::int32_t>(i), costs[i]));
  }
  h.sched().start();
  std::vector<int> times(costs.size(), 0);
  ASSERT_TRUE(h.drain(costs.size(), times));
  std::vector<std::vector<std::int32_t>> ids;
  for (const auto& b : h.model().batches()) ids.push_back(b.ids);
  const std::vector<std::vector<std::int32_t>> want = {{0, 1}, {2, 3}, {4}, {5}};
  EXPECT_EQ(ids, want);
}

TEST(SchedulerTokens, WithoutACapOnlyMaxBatchSizeCounts) {
  token_harness h(token_config(4, 0, 1));
  for (std::int32_t i = 0; i < 8; ++i) ASSERT_TRUE(h.submit(i, 1000));
  h.sched().start();
  std::vector<int> times(8, 0);
  ASSERT_TRUE(h.drain(8, times));
  std::vector<std::vector<std::int32_t>> ids;
  for (const auto& b : h.model().batches()) ids.push_back(b.ids);
  const std::vector<std::vector<std::int32_t>> want = {{0, 1, 2, 3}, {4, 5, 6, 7}};
  EXPECT_EQ(ids, want);
}

TEST(SchedulerTokens, ConcurrentProducersNeverPassTheCap) {
  constexpr std::size_t cap = 64;
  token_harness h(token_config(16, cap, 2));
  h.sched().start();
  const std::size_t per = inferline::testing::scaled(2000, 200);
  constexpr int producers = 4;
  const std::size_t total = per * producers;
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&h, p, per] {
      std::uint32_t seed = 12345u + static_cast<std::uint32_t>(p);
      for (std::size_t i = 0; i < per; ++i) {
        seed = seed * 1664525u + 1013904223u;
        const auto cost = static_cast<std::int32_t>(1 + (seed >> 8) % 80);  // some over the cap
        const auto id = static_cast<std::int32_t>(static_cast<std::size_t>(p) * per + i);
        while (!h.submit(id, cost)) std::this_thread::yield();
      }
    });
  }
  std::vector<int> times(total, 0);
  const bool all = h.drain(total, times);
  for (auto& t : threads) t.join();
  ASSERT_TRUE(all);
  std::size_t rows = 0;
  for (const auto& b : h.model().batches()) {
    rows += b.ids.size();
    if (b.ids.size() > 1) {
      EXPECT_LE(b.cost_sum(), static_cast<std::int64_t>(cap));
    }
  }
  EXPECT_EQ(rows, total);
  for (int t : times) {
    ASSERT_EQ(t, 1);
  }
}

TEST(SchedulerTokens, ConfigIsValidated) {
  scheduler_config c = token_config(8, limits.max_batch_tokens + 1, 1);
  try {
    validate(c);
    FAIL() << "an over-limit max_batch_tokens was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_batch_tokens must be between 0"), std::string::npos)
        << e.what();
  }
  c = token_config(8, 16, 1);
  c.input_bytes = {4, 8};
  c.cost_input = 1;
  try {
    validate(c);
    FAIL() << "an 8-byte cost input was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("cost_input 1 must name an INT32 [1] input"),
              std::string::npos)
        << e.what();
  }
  c.cost_input = 2;
  EXPECT_THROW(validate(c), std::invalid_argument);
  c.cost_input = -2;
  try {
    validate(c);
    FAIL() << "cost_input -2 was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("cost_input must be -1"), std::string::npos) << e.what();
  }
  c.cost_input = 0;
  EXPECT_NO_THROW(validate(c));
}

}  // namespace
