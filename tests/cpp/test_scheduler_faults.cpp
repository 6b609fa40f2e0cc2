// model_scheduler under faults: queue accounting of cancelled entries (at once, and swept from
// starved lanes), cancel-vs-pop races, execution timeouts that abandon and replace a stuck
// worker, and a shutdown that never waits past its grace for a model that does not return.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
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
using inferline::testing::scaled;

constexpr std::int64_t ms = 1'000'000;

// One int64 input (the item's value); a value of `stall` holds its batch in the backend until
// the test releases it. Output: the value + 1 in a pooled block (as a native backend does).
constexpr std::int64_t stall = -1;

class latch_backend final : public backend {
 public:
  explicit latch_backend(std::size_t max_batch)
      : outputs_(block_pool::create({max_batch * sizeof(std::int64_t)})) {}
  ~latch_backend() override { outputs_->close(); }

  void run(batch& b) override {
    const auto* in = reinterpret_cast<const std::int64_t*>(b.input(0));
    bool hold = false;
    for (std::size_t i = 0; i < b.size; ++i) hold = hold || in[i] == stall;
    if (!b.warmup()) {
      std::unique_lock lock(mutex_);
      ++entered_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !metered_ || credits_ > 0 || released_; });
      if (metered_ && credits_ > 0) --credits_;
    }
    if (hold) {
      std::unique_lock lock(mutex_);
      ++stalled_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return released_; });
    }
    if (b.warmup()) return;
    block* out = outputs_->acquire();
    auto* vals = reinterpret_cast<std::int64_t*>(out->region(0));
    for (std::size_t i = 0; i < b.size; ++i) {
      vals[i] = in[i] + 1;
      out->retain();
      b.requests[i]->output = out;
      b.requests[i]->row = static_cast<std::uint32_t>(i);
    }
    out->release();
  }
  std::string platform() const override { return "test"; }

  /// Waits until `n` batches are held in the backend.
  bool wait_stalled(int n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return stalled_ >= n; });
  }
  /// Lets every held batch (and every later one) return.
  void release() {
    std::lock_guard lock(mutex_);
    released_ = true;
    cv_.notify_all();
  }
  /// From now on every batch waits in the backend for one credit (or release()).
  void meter() {
    std::lock_guard lock(mutex_);
    metered_ = true;
  }
  /// Lets one metered batch return.
  void credit() {
    std::lock_guard lock(mutex_);
    ++credits_;
    cv_.notify_all();
  }
  /// Waits until `n` batches have entered the backend.
  bool wait_entered(int n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return entered_ >= n; });
  }
  /// Output blocks ever allocated (each holds one batch's answers).
  std::size_t output_blocks() const { return outputs_->allocated(); }

 private:
  block_pool* outputs_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int stalled_ = 0;
  int entered_ = 0;
  int credits_ = 0;
  bool metered_ = false;
  bool released_ = false;
};

// What the drain saw for one request.
struct answer {
  outcome how = outcome::success;
  std::string error;
  std::int64_t value = 0;
  int times = 0;
};

// A scheduler on a latch_backend, plus a drain thread that records answers by request id.
class harness {
 public:
  explicit harness(scheduler_config c, bool start = true)
      : backend_(std::make_shared<latch_backend>(c.max_batch_size)) {
    c.name = "m";
    c.input_bytes = {sizeof(std::int64_t)};
    sched_ = std::make_unique<model_scheduler>(std::move(c), backend_, completions_);
    drainer_ = std::thread([this] { drain_loop(); });
    if (start) sched_->start();
  }
  ~harness() {
    // Release any stuck batch first (the test may have left one), then stop.
    backend_->release();
    if (sched_) destroy_scheduler();
  }

  model_scheduler& sched() { return *sched_; }
  latch_backend& model() { return *backend_; }
  std::shared_ptr<latch_backend>& model_ptr() { return backend_; }
  /// Shuts the scheduler down, drains its last answers and destroys it.
  void destroy_scheduler() {
    sched_->shutdown(10'000 * ms);
    stop_.store(true);
    drainer_.join();
    drain_once();
    sched_.reset();
  }

  /// Submits `value` at `priority`; returns the handle, or the refusal.
  admit submit(std::uint64_t id, std::int64_t value, std::uint32_t priority = 0,
               std::uint64_t* handle = nullptr) {
    request* r = nullptr;
    const admit a = sched_->prepare(priority, &r);
    if (a != admit::ok) return a;
    std::memcpy(r->input, &value, sizeof value);
    if (handle != nullptr) *handle = r->handle();
    sched_->commit(r, nullptr, no_deadline, id);
    return a;
  }

  /// Waits until `n` requests were answered in total.
  bool wait_answers(std::size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return total_ >= n; });
  }
  answer get(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    return answers_[id];
  }
  std::size_t total() {
    std::lock_guard lock(mutex_);
    return total_;
  }
  std::map<std::uint64_t, answer> all() {
    std::lock_guard lock(mutex_);
    return answers_;
  }

 private:
  void drain_loop() {
    while (!stop_.load()) {
      if (drain_once() == 0) std::this_thread::sleep_for(200us);
    }
  }
  std::size_t drain_once() {
    request* r = completions_.take_all();
    std::size_t n = 0;
    while (r != nullptr) {
      request* next = r->next;
      {
        std::lock_guard lock(mutex_);
        answer& a = answers_[r->id];
        a.how = r->result_outcome;
        a.error = r->error ? *r->error : std::string();
        if (r->output != nullptr) {
          std::memcpy(&a.value, r->output->region(0) + r->row * sizeof(std::int64_t),
                      sizeof a.value);
        }
        ++a.times;
        ++total_;
      }
      sched_->finish(r, r->result_outcome, now_ns());
      cv_.notify_all();
      r = next;
      ++n;
    }
    return n;
  }

  completion_queue completions_;
  std::shared_ptr<latch_backend> backend_;
  std::unique_ptr<model_scheduler> sched_;
  std::thread drainer_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::uint64_t, answer> answers_;
  std::size_t total_ = 0;
};

scheduler_config small(std::size_t queue, std::size_t lanes = 1, std::size_t batch = 1) {
  scheduler_config c;
  c.max_queue_size = queue;
  c.priority_levels = lanes;
  c.max_batch_size = batch;
  return c;
}

// Waits (bounded) until `pred` holds.
template <typename F>
bool eventually(F pred, std::chrono::milliseconds timeout = 10s) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(100us);
  }
  return true;
}

// ---- queue accounting ---------------------------------------------------------------------

TEST(SchedulerAccounting, CancelStopsCountingAtOnce) {
  harness h(small(4, 2));
  ASSERT_EQ(h.submit(0, stall), admit::ok);  // the only worker is now stuck: nothing is popped
  ASSERT_TRUE(h.model().wait_stalled(1));
  std::vector<std::uint64_t> handles(4);
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_EQ(h.submit(1 + i, 7, 1, &handles[i]), admit::ok);
  EXPECT_EQ(h.submit(99, 7, 1), admit::queue_full);
  EXPECT_EQ(h.sched().queue_depth(), 4);
  ASSERT_TRUE(h.sched().cancel(handles[0], false));
  ASSERT_TRUE(h.sched().cancel(handles[1], true));
  EXPECT_FALSE(h.sched().cancel(handles[1], false)) << "a second cancel must lose";
  EXPECT_EQ(h.sched().queue_depth(), 2);  // before any worker popped them
  EXPECT_EQ(h.submit(5, 7, 1), admit::ok);
  EXPECT_EQ(h.submit(6, 7, 1), admit::ok);
  EXPECT_EQ(h.submit(98, 7, 1), admit::queue_full);
  h.model().release();
  ASSERT_TRUE(h.wait_answers(7));
  EXPECT_EQ(h.get(1).how, outcome::cancelled);
  EXPECT_EQ(h.get(2).how, outcome::deadline_exceeded);
  for (std::uint64_t id : {0, 3, 4, 5, 6}) EXPECT_EQ(h.get(id).how, outcome::success) << id;
  for (const auto& [id, a] : h.all()) EXPECT_EQ(a.times, 1) << "request " << id;
  EXPECT_EQ(h.sched().queue_depth(), 0);
}

TEST(SchedulerAccounting, DeadEntriesStarvedBehindPriorityZeroAreSwept) {
  // One worker, batches of 1, and always a priority-0 item queued when it pulls: lane 1 is
  // never served, so its cancelled entries are reclaimed only by the sweep. Counted until
  // popped, they would fill max_queue_size (4) within 4 rounds; kept in their slots, they would
  // use up the request slots (2 * (4 + 1) = 10) within 10.
  harness h(small(4, 2));
  h.model().meter();
  std::uint64_t id = 0;
  std::vector<std::uint64_t> p0;  // priority-0 ids, in the order the worker computes them
  p0.push_back(id);
  ASSERT_EQ(h.submit(id++, 1, 0), admit::ok);  // batch 0: in the backend, waiting for credit
  ASSERT_TRUE(h.model().wait_entered(1));
  p0.push_back(id);
  ASSERT_EQ(h.submit(id++, 1, 0), admit::ok);  // the next priority-0 item, queued
  const int rounds = static_cast<int>(scaled(300, 80));
  std::size_t cancelled = 0;
  for (int round = 0; round < rounds; ++round) {
    std::uint64_t handle = 0;
    ASSERT_EQ(h.submit(id++, 2, 1, &handle), admit::ok)
        << "round " << round << ", queue depth " << h.sched().queue_depth();
    ASSERT_TRUE(h.sched().cancel(handle, false));
    ++cancelled;
    p0.push_back(id);
    ASSERT_EQ(h.submit(id++, 1, 0), admit::ok) << "round " << round;
    h.model().credit();  // batch `round` returns; the worker pulls the next priority-0 item
    ASSERT_TRUE(h.model().wait_entered(round + 2)) << "round " << round;
    // Its answer drained (answers not yet drained also hold slots: that bound is the loop's).
    ASSERT_TRUE(eventually([&] { return h.get(p0[static_cast<std::size_t>(round)]).times == 1; }));
  }
  EXPECT_LE(h.sched().queue_depth(), 2);
  h.model().release();
  ASSERT_TRUE(h.wait_answers(id));
  std::size_t seen_cancelled = 0;
  for (const auto& [rid, a] : h.all()) {
    EXPECT_EQ(a.times, 1) << "request " << rid;
    if (a.how == outcome::cancelled) ++seen_cancelled;
  }
  EXPECT_EQ(seen_cancelled, cancelled);
  EXPECT_EQ(h.sched().queue_depth(), 0);
}

TEST(SchedulerAccounting, CancelRacingPopAndSweepAnswersEachOnce) {
  // Producers submit and cancel at random while two workers pop and sweep (small queue, so
  // sweeps are frequent). Each request is answered exactly once and nothing stays counted.
  scheduler_config c = small(16, 3, 4);
  c.instances = 2;
  harness h(c);
  const std::size_t per_thread = scaled(4000, 600);
  std::atomic<std::uint64_t> next_id{0};
  std::atomic<std::uint64_t> accepted{0};
  std::vector<std::thread> producers;
  for (int t = 0; t < 3; ++t) {
    producers.emplace_back([&, t] {
      for (std::size_t i = 0; i < per_thread; ++i) {
        const std::uint64_t id = next_id.fetch_add(1);
        std::uint64_t handle = 0;
        const auto priority = static_cast<std::uint32_t>((id + t) % 3);
        // A full queue empties as workers and the drain catch up: retry (bounded).
        admit a = admit::queue_full;
        for (int tries = 0; tries < 100000 && a == admit::queue_full; ++tries) {
          a = h.submit(id, static_cast<std::int64_t>(id), priority, &handle);
          if (a == admit::queue_full) std::this_thread::yield();
        }
        if (a != admit::ok) continue;
        accepted.fetch_add(1);
        if (id % 3 != 0) h.sched().cancel(handle, id % 2 == 0);
      }
    });
  }
  for (auto& p : producers) p.join();
  EXPECT_GT(accepted.load(), per_thread) << "too few accepted to race anything";
  ASSERT_TRUE(h.wait_answers(accepted.load(), 30s));
  for (const auto& [id, a] : h.all()) {
    ASSERT_EQ(a.times, 1) << "request " << id;
    if (a.how == outcome::success) {
      EXPECT_EQ(a.value, static_cast<std::int64_t>(id) + 1);
    }
  }
  EXPECT_EQ(h.total(), accepted.load());
  EXPECT_EQ(h.sched().queue_depth(), 0);
  EXPECT_TRUE(eventually([&] { return h.sched().in_flight() == 0; }));
}

TEST(SchedulerAccounting, SettingsWhoseQueueMemoryCannotBeHonouredAreRefused) {
  scheduler_config c;
  c.max_queue_size = limits.max_queue_size;
  c.priority_levels = limits.max_priority_levels;
  c.input_bytes = {4096};
  try {
    validate(c);
    FAIL() << "accepted " << queue_memory_bytes(c) << " bytes of queue memory";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("max_queue_size 16777216"), std::string::npos) << what;
    EXPECT_NE(what.find("queue memory"), std::string::npos) << what;
    EXPECT_NE(what.find("4096-byte items"), std::string::npos) << what;
  }
  scheduler_config d;  // the defaults stay small
  d.input_bytes = {4096};
  EXPECT_LT(queue_memory_bytes(d), 16.0 * (1 << 20));
  EXPECT_NO_THROW(validate(d));
}

// ---- execution timeouts -------------------------------------------------------------------

TEST(SchedulerTimeout, OverrunningBatchIsAnsweredAndItsInstanceReplaced) {
  scheduler_config c = small(8);
  c.execution_timeout_ns = 50 * ms;
  harness h(c);
  ASSERT_EQ(h.submit(0, stall), admit::ok);
  ASSERT_TRUE(h.model().wait_stalled(1));
  ASSERT_TRUE(h.wait_answers(1));  // answered while the model is still stuck
  const answer stuck = h.get(0);
  EXPECT_EQ(stuck.how, outcome::model_error);
  EXPECT_EQ(stuck.error,
            "batch of 1 did not finish within the 50 ms execution timeout; its instance was "
            "abandoned and replaced");
  EXPECT_EQ(h.sched().timed_out_batches(), 1u);
  EXPECT_EQ(h.sched().abandoned_workers(), 1u);
  // The one instance was replaced: the model keeps serving while the old thread is stuck.
  ASSERT_EQ(h.submit(1, 41), admit::ok);
  ASSERT_TRUE(h.wait_answers(2));
  EXPECT_EQ(h.get(1).how, outcome::success);
  EXPECT_EQ(h.get(1).value, 42);
  // The late answer is discarded: the abandoned thread returns and drops its hold on the
  // backend without answering anything again.
  const long holders = h.model_ptr().use_count();  // us, the scheduler, two workers
  h.model().release();
  EXPECT_TRUE(eventually([&] { return h.model_ptr().use_count() == holders - 1; }))
      << "the abandoned worker did not let go (holders: " << h.model_ptr().use_count() << ")";
  EXPECT_EQ(h.total(), 2u);
  EXPECT_EQ(h.get(0).times, 1);
}

TEST(SchedulerTimeout, FastBatchesAreNotTouched) {
  scheduler_config c = small(64, 1, 4);
  c.execution_timeout_ns = 10'000 * ms;
  harness h(c);
  for (std::uint64_t i = 0; i < 40; ++i) ASSERT_EQ(h.submit(i, 5), admit::ok);
  ASSERT_TRUE(h.wait_answers(40));
  for (const auto& [id, a] : h.all()) EXPECT_EQ(a.how, outcome::success) << id;
  EXPECT_EQ(h.sched().timed_out_batches(), 0u);
  EXPECT_EQ(h.sched().abandoned_workers(), 0u);
}

TEST(SchedulerTimeout, NegativeOrHugeTimeoutIsRefused) {
  scheduler_config c;
  c.execution_timeout_ns = -1;
  EXPECT_THROW(
      {
        try {
          validate(c);
        } catch (const std::invalid_argument& e) {
          EXPECT_NE(std::string(e.what()).find("execution_timeout"), std::string::npos);
          throw;
        }
      },
      std::invalid_argument);
  c.execution_timeout_ns = ms_to_ns(limits.max_execution_timeout_ms) + 1;
  EXPECT_THROW(validate(c), std::invalid_argument);
}

// ---- hard shutdown ------------------------------------------------------------------------

TEST(SchedulerShutdown, StuckModelIsAbandonedAfterTheGrace) {
  harness h(small(8, 1, 1));
  ASSERT_EQ(h.submit(0, stall), admit::ok);
  ASSERT_TRUE(h.model().wait_stalled(1));
  for (std::uint64_t i = 1; i <= 3; ++i) ASSERT_EQ(h.submit(i, 1), admit::ok);
  auto done = std::async(std::launch::async, [&] { h.sched().shutdown(100 * ms); });
  ASSERT_EQ(done.wait_for(10s), std::future_status::ready) << "shutdown waited on the model";
  ASSERT_TRUE(h.wait_answers(4));
  EXPECT_EQ(h.get(0).how, outcome::engine_stopped);
  EXPECT_NE(h.get(0).error.find("shutdown grace"), std::string::npos) << h.get(0).error;
  for (std::uint64_t i = 1; i <= 3; ++i) EXPECT_EQ(h.get(i).how, outcome::engine_stopped);
  EXPECT_EQ(h.sched().abandoned_workers(), 1u);
  // The scheduler goes away while the abandoned thread is still in the model; when the model
  // returns, the thread must touch nothing freed (ASan) and answer nothing (exactly once).
  h.destroy_scheduler();
  h.model().release();
  EXPECT_TRUE(eventually([&] { return h.model_ptr().use_count() == 1; }));
  EXPECT_EQ(h.total(), 4u);
}

TEST(SchedulerShutdown, StartAfterShutdownStartsNothing) {
  // An engine stopped while its model was still loading: the loader starts the scheduler after
  // the engine shut it down. Nothing may start (a worker thread left joinable would terminate
  // the process when the scheduler is destroyed), and a submit is refused as stopped.
  harness h(small(8, 2, 1), /*start=*/false);
  h.sched().shutdown(0);
  h.sched().start();
  EXPECT_EQ(h.submit(0, 1), admit::stopped);
  h.destroy_scheduler();
  EXPECT_TRUE(eventually([&] { return h.model_ptr().use_count() == 1; }));
  EXPECT_EQ(h.total(), 0u);
}

TEST(SchedulerShutdown, BatchThatFinishesWithinTheGraceIsAnswered) {
  harness h(small(8));
  ASSERT_EQ(h.submit(0, stall), admit::ok);
  ASSERT_TRUE(h.model().wait_stalled(1));
  auto done = std::async(std::launch::async, [&] { h.sched().shutdown(30'000 * ms); });
  h.model().release();
  ASSERT_EQ(done.wait_for(20s), std::future_status::ready);
  ASSERT_TRUE(h.wait_answers(1));
  EXPECT_EQ(h.get(0).how, outcome::success);
  EXPECT_EQ(h.get(0).value, stall + 1);
  EXPECT_EQ(h.sched().abandoned_workers(), 0u);
}

}  // namespace
