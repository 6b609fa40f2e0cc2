// Internal to the scheduler's sources: shared answers, the worker record and small helpers.
#pragma once

#include "inferline/clock.hpp"
#include "inferline/scheduler.hpp"

#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace inferline {
namespace scheduler_detail {

inline const std::shared_ptr<const std::string>& msg_cancelled() {
  static const auto m = std::make_shared<const std::string>("request cancelled before it was computed");
  return m;
}
inline const std::shared_ptr<const std::string>& msg_deadline() {
  static const auto m = std::make_shared<const std::string>(
      "deadline exceeded while queued; the request was not computed");
  return m;
}
inline const std::shared_ptr<const std::string>& msg_stopped() {
  static const auto m = std::make_shared<const std::string>(
      "engine stopped before the request was computed");
  return m;
}

inline const std::shared_ptr<const std::string>& msg_stopped_computing() {
  static const auto m = std::make_shared<const std::string>(
      "engine stopped while the batch was computing: the model did not finish within the "
      "shutdown grace, and its late answer will be discarded");
  return m;
}

// Milliseconds of `ns` for a message: whole when whole, else with up to three decimals.
inline std::string format_ms(std::int64_t ns) {
  if (ns % 1000000 == 0) return std::to_string(ns / 1000000);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", static_cast<double>(ns) / 1e6);
  return buf;
}

// A worker's phase word: the batch sequence number above the two state bits, so a watchdog
// that observed batch k running can never take batch k+1 from the worker by mistake.
constexpr std::uint64_t phase_idle = 0;
constexpr std::uint64_t phase_running = 1;
constexpr std::uint64_t phase_abandoned = 2;
constexpr std::uint64_t phase_state(std::uint64_t p) noexcept { return p & 3; }

// batch_due's answer for "dispatch what is held now".
constexpr std::int64_t leave_now = std::numeric_limits<std::int64_t>::min();

// stamp + duration (>= 0), saturating at no_deadline.
inline std::int64_t add_saturating(std::int64_t stamp, std::int64_t duration) noexcept {
  return duration > no_deadline - stamp ? no_deadline : stamp + duration;
}

}  // namespace scheduler_detail

// A chain of answered requests, pushed to the completion queue in one go.
struct model_scheduler::answer_chain {
  request* first = nullptr;
  request* last = nullptr;
  void add(request* r) noexcept {
    r->next = nullptr;
    if (last == nullptr) {
      first = last = r;
    } else {
      last->next = r;
      last = r;
    }
  }
  void flush(completion_queue& q) noexcept {
    if (first != nullptr) q.push(first, last);
    first = last = nullptr;
  }
};

// One worker thread and what it may still reach if it is abandoned: the thread holds this by
// shared ownership, so the record, the backend and the shadow requests outlive the scheduler
// for as long as the thread runs.
struct model_scheduler::worker {
  worker(int i, std::shared_ptr<backend> m, std::size_t max_batch)
      : instance(i), model(std::move(m)), shadows(std::make_unique<request[]>(max_batch)) {
    shadow_ptrs.reserve(max_batch);
    for (std::size_t k = 0; k < max_batch; ++k) shadow_ptrs.push_back(&shadows[k]);
    items.reserve(max_batch);
  }
  const int instance;
  std::thread thread;
  const std::shared_ptr<backend> model;
  // What the backend fills (result, output, row) instead of the real slots.
  const std::unique_ptr<request[]> shadows;
  std::vector<request*> shadow_ptrs;
  // The batch being formed or computed (real slots). Handed to take_batch by `phase`: once
  // the phase says running, only the winner of the phase CAS touches it.
  std::vector<request*> items;
  std::atomic<std::uint64_t> phase{scheduler_detail::phase_idle};
  std::atomic<std::int64_t> deadline{no_deadline};  // of the running batch
  bool exited = false;                              // guarded by workers_mutex_
};

}  // namespace inferline
