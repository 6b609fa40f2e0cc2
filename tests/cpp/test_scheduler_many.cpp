// model_scheduler::prepare_many: the items of one call are admitted all together or not at all,
// whether the queue bound, a closed scheduler, a bad priority or an exhausted slot pool refuses.
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/clock.hpp"
#include "inferline/completion_queue.hpp"
#include "inferline/scheduler.hpp"

namespace {

using namespace inferline;
using namespace std::chrono_literals;

// Answers every row successfully without an output payload.
class nop_backend final : public backend {
 public:
  void run(batch&) override {}
  std::string platform() const override { return "nop"; }
};

scheduler_config config(std::size_t queue, std::size_t priorities = 1) {
  scheduler_config c;
  c.name = "many";
  c.input_bytes = {sizeof(std::uint64_t)};
  c.max_batch_size = 4;
  c.max_queue_size = queue;
  c.priority_levels = priorities;
  return c;
}

// Takes answers from `q` until `n` were finished (or 10 s pass); returns how many.
std::size_t drain(completion_queue& q, model_scheduler& s, std::size_t n) {
  std::size_t got = 0;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (got < n && std::chrono::steady_clock::now() < until) {
    request* r = q.take_all();
    if (r == nullptr) std::this_thread::sleep_for(100us);
    while (r != nullptr) {
      request* next = r->next;
      EXPECT_EQ(r->result_outcome, outcome::success);
      s.finish(r, r->result_outcome, now_ns());
      ++got;
      r = next;
    }
  }
  return got;
}

TEST(SchedulerMany, AdmitsAllOrNothingAgainstTheQueueBound) {
  completion_queue q;
  model_scheduler s(config(8), std::make_shared<nop_backend>(), q);  // not started: nothing leaves
  std::vector<request*> a(5), b(4), c(3);
  ASSERT_EQ(s.prepare_many(0, a.size(), a.data()), admit::ok);
  EXPECT_EQ(s.queue_depth(), 5);
  EXPECT_EQ(s.prepare_many(0, b.size(), b.data()), admit::queue_full);  // 5 + 4 > 8
  EXPECT_EQ(s.queue_depth(), 5);  // a refusal takes nothing
  ASSERT_EQ(s.prepare_many(0, c.size(), c.data()), admit::ok);  // 5 + 3 == 8 fits exactly
  EXPECT_EQ(s.queue_depth(), 8);
  request* one = nullptr;
  EXPECT_EQ(s.prepare(0, &one), admit::queue_full);
  for (request* r : a) s.abandon(r);
  for (request* r : c) s.abandon(r);
  EXPECT_EQ(s.queue_depth(), 0);
}

TEST(SchedulerMany, MoreItemsThanTheBoundAreAlwaysRefused) {
  completion_queue q;
  model_scheduler s(config(8), std::make_shared<nop_backend>(), q);
  std::vector<request*> r(9);
  EXPECT_EQ(s.prepare_many(0, r.size(), r.data()), admit::queue_full);
  EXPECT_EQ(s.queue_depth(), 0);
  EXPECT_EQ(s.prepare_many(0, 0, r.data()), admit::ok);  // nothing asked, nothing taken
  EXPECT_EQ(s.queue_depth(), 0);
}

TEST(SchedulerMany, BadPriorityAndClosedTakeNothing) {
  completion_queue q;
  model_scheduler s(config(8, 2), std::make_shared<nop_backend>(), q);
  std::vector<request*> r(3);
  EXPECT_EQ(s.prepare_many(2, r.size(), r.data()), admit::bad_priority);
  EXPECT_EQ(s.queue_depth(), 0);
  s.close();
  EXPECT_EQ(s.prepare_many(0, r.size(), r.data()), admit::stopped);
  EXPECT_EQ(s.queue_depth(), 0);
}

TEST(SchedulerMany, CommittedItemsAreComputedAndAnswered) {
  completion_queue q;
  model_scheduler s(config(16, 2), std::make_shared<nop_backend>(), q);
  s.start();
  std::vector<request*> r(10);
  ASSERT_EQ(s.prepare_many(1, r.size(), r.data()), admit::ok);
  for (std::size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i]->priority, 1u);
    s.commit(r[i], nullptr, no_deadline, i);
  }
  EXPECT_EQ(drain(q, s, r.size()), r.size());
  EXPECT_EQ(s.in_flight(), 0);
  EXPECT_EQ(s.queue_depth(), 0);
  s.shutdown();
}

TEST(SchedulerMany, AnExhaustedSlotPoolReturnsThePartialReservation) {
  // Answers that the loop has not drained keep their slots: with none drained, the pool runs
  // out while the queue itself is empty, and a call that needs more slots than are left must
  // hand back the ones it did get.
  completion_queue q;
  scheduler_config cfg = config(4);
  cfg.max_batch_size = 1;
  model_scheduler s(cfg, std::make_shared<nop_backend>(), q);
  s.start();
  std::size_t committed = 0;
  std::vector<request*> r(3);
  admit a = admit::ok;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until) {
    a = s.prepare_many(0, r.size(), r.data());
    if (a != admit::ok) {
      if (s.queue_depth() == 0 && s.metrics().items_computed.load() == committed) break;
      std::this_thread::sleep_for(100us);  // the queue is still busy: let it compute
      continue;
    }
    for (request* x : r) s.commit(x, nullptr, no_deadline, committed++);
  }
  ASSERT_EQ(a, admit::queue_full);
  EXPECT_EQ(s.queue_depth(), 0);  // the refused call left no admission behind
  EXPECT_EQ(drain(q, s, committed), committed);
  ASSERT_EQ(s.prepare_many(0, r.size(), r.data()), admit::ok);  // slots are free again
  for (request* x : r) s.commit(x, nullptr, no_deadline, committed++);
  EXPECT_EQ(drain(q, s, r.size()), r.size());
  s.shutdown();
}

}  // namespace
