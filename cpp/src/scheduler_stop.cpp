// Stopping the batcher: close and shutdown (with its grace for a model that never returns), the
// execution-timeout watchdog that abandons and replaces a stuck instance, and the answers for
// requests that will not be computed.
#include <algorithm>
#include <span>

#include "inferline/scheduler.hpp"
#include "scheduler_internal.hpp"

namespace inferline {
using namespace scheduler_detail;

void model_scheduler::close() noexcept { closed_.store(true, std::memory_order_release); }

void model_scheduler::shutdown(std::int64_t grace_ns) {
  std::call_once(shutdown_once_, [this, grace_ns] {
    close();
    stopping_.store(true, std::memory_order_seq_cst);
    {
      std::lock_guard lock(sleep_mutex_);
    }
    sleep_cv_.notify_all();
    {
      std::lock_guard lock(workers_mutex_);
      watch_stop_ = true;
    }
    watch_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();  // it never waits on a worker
    // Idle formers exit at once (answering what they held); computing workers finish their
    // batch, for up to the grace.
    std::vector<std::shared_ptr<worker>> joinable;
    {
      std::unique_lock lock(workers_mutex_);
      const std::int64_t until = add_saturating(now_ns(), std::max<std::int64_t>(grace_ns, 0));
      workers_cv_.wait_until(lock, to_time_point(until), [this] {
        return std::all_of(workers_.begin(), workers_.end(),
                           [](const auto& w) { return w->exited; });
      });
      for (auto& w : workers_) {
        const std::uint64_t phase = w->phase.load(std::memory_order_acquire);
        if (!w->exited && phase_state(phase) == phase_running &&
            take_batch(*w, phase)) {
          answer_taken(*w, outcome::engine_stopped, msg_stopped_computing());
          // Stuck in the model: never joined; what it can reach stays alive (see worker).
          w->thread.detach();
          abandoned_workers_.fetch_add(1, std::memory_order_relaxed);
        } else {
          joinable.push_back(w);  // exited, or past its model call and about to exit
        }
      }
      workers_.clear();
    }
    for (auto& w : joinable) w->thread.join();
    backend_->on_shutdown();  // ends child processes, so an abandoned worker's wait ends too
    // Workers answered what they found; sweep what arrived after (or if never started), and
    // what the loop's instance held for a fuller batch (run_on_loop is not computing: it
    // holds form_mutex_ while it does).
    std::lock_guard form(form_mutex_);
    if (loop_instance_) {
      answer_stopped(loop_instance_->items);
      loop_instance_->items.clear();
    } else {
      answer_stopped({});
    }
  });
}

bool model_scheduler::take_batch(worker& w, std::uint64_t phase) noexcept {
  std::uint64_t expected = phase;
  // acq_rel: on success we see the worker's `items`, and the worker (its CAS failing) sees
  // that the batch is no longer its own.
  return w.phase.compare_exchange_strong(expected, (phase & ~std::uint64_t{3}) | phase_abandoned,
                                         std::memory_order_acq_rel, std::memory_order_acquire);
}

void model_scheduler::answer_taken(worker& w, outcome why,
                                   const std::shared_ptr<const std::string>& msg) noexcept {
  answer_chain chain;
  const std::int64_t now = now_ns();
  for (request* r : w.items) {
    r->t_compute_end = now;
    r->batch_size = static_cast<std::uint32_t>(w.items.size());
    r->result_outcome = why;
    r->error = msg;
    chain.add(r);
  }
  chain.flush(completions_);
}

void model_scheduler::watchdog_main() {
  std::unique_lock lock(workers_mutex_);
  while (!watch_stop_) {
    const std::int64_t now = now_ns();
    // A batch that starts after this look has its deadline past now + timeout: waking then
    // is soon enough to see it, so the watchdog needs no signal from the workers.
    std::int64_t next = add_saturating(now, config_.execution_timeout_ns);
    for (auto& w : workers_) {
      const std::uint64_t phase = w->phase.load(std::memory_order_acquire);
      if (phase_state(phase) != phase_running) continue;
      const std::int64_t due = w->deadline.load(std::memory_order_relaxed);
      if (due > now) {
        next = std::min(next, due);
        continue;
      }
      if (!take_batch(*w, phase)) continue;  // it finished just now
      answer_taken(*w, outcome::model_error,
                   std::make_shared<const std::string>(
                       "batch of " + std::to_string(w->items.size()) +
                       " did not finish within the " + format_ms(config_.execution_timeout_ns) +
                       " ms execution timeout; its instance was abandoned and replaced"));
      timed_out_batches_.fetch_add(1, std::memory_order_relaxed);
      abandoned_workers_.fetch_add(1, std::memory_order_relaxed);
      w->thread.detach();
      w = spawn(w->instance);  // the model keeps serving on a fresh instance
    }
    watch_cv_.wait_until(lock, to_time_point(next), [this] { return watch_stop_; });
  }
}

void model_scheduler::answer_stopped(std::span<request* const> items) noexcept {
  answer_chain chain;
  auto stop = [&](request* r) {
    if (claim(r, request_state::dispatched)) {  // dispatched: no cancel can answer it now
      r->result_outcome = outcome::engine_stopped;
      r->error = msg_stopped();
    } else {
      const bool expired = r->state() == request_state::expired;
      r->result_outcome = expired ? outcome::deadline_exceeded : outcome::cancelled;
      r->error = expired ? msg_deadline() : msg_cancelled();
    }
    chain.add(r);
  };
  auto popped = [&](request* r) {
    ready_.fetch_sub(1, std::memory_order_relaxed);
    if (r->state() == request_state::queued) {
      stop(r);
      return;
    }
    dead_.fetch_sub(1, std::memory_order_relaxed);
    const bool expired = r->state() == request_state::expired;
    r->result_outcome = expired ? outcome::deadline_exceeded : outcome::cancelled;
    r->error = expired ? msg_deadline() : msg_cancelled();
    chain.add(r);
  };
  for (request* r : items) stop(r);
  for (std::size_t l = 0; l < lanes_.size(); ++l) {
    for (request* r : carry_[l]) popped(r);
    carry_[l].clear();
    request* r = nullptr;
    while (lanes_[l]->try_pop(r)) popped(r);
  }
  chain.flush(completions_);
}

}  // namespace inferline
