// model_scheduler with config.on_loop: no worker threads; run_on_loop forms and computes batches
// on the calling thread (the event loop's in the bindings). Checked here on the test's thread:
// what it returns, where and how batches run, held batches, failures, cancels and shutdown.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/clock.hpp"
#include "inferline/completion_queue.hpp"
#include "inferline/scheduler.hpp"

namespace {

using namespace inferline;

constexpr std::int64_t ms = 1'000'000;

// One int64 input per item; a negative value fails its batch. Records each batch's size and
// the thread that ran it.
class recording_backend final : public backend {
 public:
  void run(batch& b) override {
    {
      std::lock_guard lock(mutex_);
      sizes.push_back(b.size);
      threads.push_back(std::this_thread::get_id());
    }
    for (std::size_t row = 0; row < b.size; ++row) {
      std::int64_t v = 0;
      std::memcpy(&v, b.input(0) + row * sizeof v, sizeof v);
      if (v < 0) throw std::runtime_error("negative item " + std::to_string(v));
    }
  }
  std::string platform() const override { return "test"; }

  std::mutex mutex_;
  std::vector<std::size_t> sizes;
  std::vector<std::thread::id> threads;
};

struct fixture {
  explicit fixture(scheduler_config c) : model(std::make_shared<recording_backend>()) {
    c.name = "loop-test";
    c.input_bytes = {sizeof(std::int64_t)};
    c.on_loop = true;
    c.idle_spin_ns = 0;
    sched = std::make_unique<model_scheduler>(c, model, completions);
    sched->start();
  }

  std::uint64_t submit(std::int64_t value, std::uint64_t id) {
    request* r = nullptr;
    EXPECT_EQ(sched->prepare(0, &r), admit::ok);
    std::memcpy(r->input, &value, sizeof value);
    const std::uint64_t handle = r->handle();
    sched->commit(r, nullptr, no_deadline, id);
    return handle;
  }

  // Takes every answer from the completion queue: id -> outcome (finishing each request).
  std::map<std::uint64_t, outcome> answers() {
    std::map<std::uint64_t, outcome> out;
    for (request* r = completions.take_all(); r != nullptr;) {
      request* next = r->next;
      out[r->id] = r->result_outcome;
      if (r->result_outcome == outcome::model_error) last_error = *r->error;
      sched->finish(r, r->result_outcome, now_ns());
      r = next;
    }
    return out;
  }

  completion_queue completions;
  std::shared_ptr<recording_backend> model;
  std::unique_ptr<model_scheduler> sched;
  std::string last_error;
};

scheduler_config batches_of(std::size_t n) {
  scheduler_config c;
  c.max_batch_size = n;
  return c;
}

// Batches of `n` under fixed_window with a window no test waits out: partial ones are held.
scheduler_config held_batches_of(std::size_t n) {
  scheduler_config c = batches_of(n);
  c.policy = batch_policy::fixed_window;
  c.max_queue_delay_ns = 10'000 * ms;
  return c;
}

TEST(SchedulerOnLoop, RunsEachBatchOnTheCallingThreadUntilNothingIsReady) {
  fixture f(batches_of(8));
  EXPECT_EQ(f.sched->run_on_loop(), no_deadline);  // nothing queued
  for (std::uint64_t id = 0; id < 20; ++id) f.submit(static_cast<std::int64_t>(id), id);
  EXPECT_EQ(f.sched->run_on_loop(), model_scheduler::run_again);
  EXPECT_EQ(f.sched->run_on_loop(), model_scheduler::run_again);
  EXPECT_EQ(f.sched->run_on_loop(), no_deadline);  // the last 4 leave at once: nothing left
  EXPECT_EQ(f.model->sizes, (std::vector<std::size_t>{8, 8, 4}));
  for (const auto& t : f.model->threads) EXPECT_EQ(t, std::this_thread::get_id());
  const auto answers = f.answers();
  ASSERT_EQ(answers.size(), 20u);
  for (const auto& [id, o] : answers) EXPECT_EQ(o, outcome::success) << id;
  EXPECT_EQ(f.sched->in_flight(), 0);
}

TEST(SchedulerOnLoop, FixedWindowHoldsAPartialBatchUntilItIsDueOrFull) {
  const scheduler_config c = held_batches_of(4);
  fixture f(c);
  const std::int64_t before = now_ns();
  f.submit(1, 1);
  const std::int64_t due = f.sched->run_on_loop();
  EXPECT_GE(due, before + c.max_queue_delay_ns);
  EXPECT_LE(due, now_ns() + c.max_queue_delay_ns);
  EXPECT_TRUE(f.model->sizes.empty());
  EXPECT_EQ(f.sched->run_on_loop(), due);  // still held, still due then
  for (std::uint64_t id = 2; id <= 4; ++id) f.submit(static_cast<std::int64_t>(id), id);
  EXPECT_EQ(f.sched->run_on_loop(), no_deadline);  // full: it left at once
  EXPECT_EQ(f.model->sizes, (std::vector<std::size_t>{4}));
  EXPECT_EQ(f.answers().size(), 4u);
}

TEST(SchedulerOnLoop, AThrowingModelFailsItsBatchOnly) {
  fixture f(batches_of(2));
  f.submit(-7, 1);
  f.submit(1, 2);
  f.submit(3, 3);
  EXPECT_EQ(f.sched->run_on_loop(), model_scheduler::run_again);
  EXPECT_EQ(f.sched->run_on_loop(), no_deadline);
  const auto answers = f.answers();
  EXPECT_EQ(answers.at(1), outcome::model_error);
  EXPECT_EQ(answers.at(2), outcome::model_error);  // same batch
  EXPECT_EQ(answers.at(3), outcome::success);
  EXPECT_NE(f.last_error.find("negative item -7"), std::string::npos) << f.last_error;
}

TEST(SchedulerOnLoop, AHeldRequestCancelledIsAnsweredCancelledAndNeverComputed) {
  const scheduler_config c = held_batches_of(4);
  fixture f(c);
  const std::uint64_t h = f.submit(1, 1);
  f.submit(2, 2);
  EXPECT_NE(f.sched->run_on_loop(), no_deadline);  // both held
  EXPECT_TRUE(f.sched->cancel(h, false));
  f.submit(3, 3);
  f.submit(4, 4);
  EXPECT_EQ(f.sched->run_on_loop(), no_deadline);
  EXPECT_EQ(f.model->sizes, (std::vector<std::size_t>{3}));
  const auto answers = f.answers();
  EXPECT_EQ(answers.at(1), outcome::cancelled);
  EXPECT_EQ(answers.at(2), outcome::success);
  EXPECT_EQ(f.sched->in_flight(), 0);
}

TEST(SchedulerOnLoop, ShutdownAnswersWhatItHeldAndWhatWaited) {
  const scheduler_config c = held_batches_of(4);
  fixture f(c);
  f.submit(1, 1);
  f.submit(2, 2);
  EXPECT_NE(f.sched->run_on_loop(), no_deadline);  // held
  f.submit(3, 3);                                  // still in its lane
  f.sched->shutdown();
  EXPECT_EQ(f.sched->run_on_loop(), no_deadline);
  const auto answers = f.answers();
  ASSERT_EQ(answers.size(), 3u);
  for (const auto& [id, o] : answers) EXPECT_EQ(o, outcome::engine_stopped) << id;
  EXPECT_TRUE(f.model->sizes.empty());
  EXPECT_EQ(f.sched->in_flight(), 0);
}

TEST(SchedulerOnLoop, ConfigRefusesMoreInstancesAndAnExecutionTimeout) {
  scheduler_config c = batches_of(4);
  c.on_loop = true;
  c.instances = 2;
  EXPECT_THROW(validate(c), std::invalid_argument);
  c.instances = 1;
  c.execution_timeout_ns = 100 * ms;
  EXPECT_THROW(validate(c), std::invalid_argument);
  c.execution_timeout_ns = 0;
  EXPECT_NO_THROW(validate(c));
}

}  // namespace
