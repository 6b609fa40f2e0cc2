// The dynamic batcher: admission, priority lanes, batch forming, dispatch and answers (stopping
// and timeouts are in scheduler_stop.cpp, the cost model in batch_cost_model.cpp).
#include "inferline/scheduler.hpp"
#include "scheduler_internal.hpp"

#include "inferline/clock.hpp"
#include "inferline/platform.hpp"

#include <algorithm>
#include <bit>
#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif
#include <cstdio>
#include <cstring>
#include <string>
#include <exception>
#include <limits>
#include <stdexcept>

namespace inferline {
using namespace scheduler_detail;


model_scheduler::model_scheduler(scheduler_config config, std::shared_ptr<backend> model,
                                 completion_queue& completions)
    : config_(std::move(config)), backend_(std::move(model)), completions_(completions) {
  if (!backend_) throw std::invalid_argument("model_scheduler needs a backend");
  validate(config_);  // with input_bytes: also the queue memory
  for (std::size_t b : config_.input_bytes) {
    input_offsets_.push_back(item_bytes_);
    item_bytes_ += b;
    region_bytes_.push_back(b * config_.max_batch_size);
  }
  // Slots: everything queued (live, or cancelled and not yet swept), every batch being
  // computed, and answers not yet drained by the loop; beyond that admission says queue full.
  // validate() refused settings whose slots and lanes would not fit limits.max_queue_memory.
  pool_ = std::make_unique<request_pool>(request_slots(config_), item_bytes_, this);
  // Every lane can hold every slot (plus one), so a push never meets a full lane.
  for (std::size_t i = 0; i < config_.priority_levels; ++i) {
    lanes_.push_back(std::make_unique<mpmc_queue<request*>>(lane_capacity(config_)));
  }
  carry_.resize(config_.priority_levels);
  blocks_ = block_pool::create(region_bytes_);
}

model_scheduler::~model_scheduler() {
  shutdown();
  blocks_->close();
}

void model_scheduler::start() {
  std::lock_guard lock(workers_mutex_);
  // After shutdown (an engine stopped while the model was still loading), nothing starts:
  // shutdown sets stopping_ before it takes this lock, so threads started here are either
  // seen and joined by it or never started; none is left joinable for the destructor.
  if (started_ || stopping_.load(std::memory_order_seq_cst)) return;
  started_ = true;
  if (config_.on_loop) {  // run_on_loop drives the one instance; nothing to start
    loop_instance_ = std::make_shared<worker>(0, backend_, config_.max_batch_size);
    return;
  }
  workers_.reserve(config_.instances);
  for (std::size_t i = 0; i < config_.instances; ++i) {
    workers_.push_back(spawn(static_cast<int>(i)));
  }
  if (config_.execution_timeout_ns > 0) watchdog_ = std::thread([this] { watchdog_main(); });
}

std::shared_ptr<model_scheduler::worker> model_scheduler::spawn(int instance) {
  auto w = std::make_shared<worker>(instance, backend_, config_.max_batch_size);
  // The thread's copy of `w` keeps the record alive after an abandon.
  w->thread = std::thread([this, w] { worker_main(w); });
  return w;
}

admit model_scheduler::prepare(std::uint32_t priority, request** out) noexcept {
  if (closed_.load(std::memory_order_acquire)) return admit::stopped;
  if (priority >= config_.priority_levels) return admit::bad_priority;
  const auto limit = static_cast<std::int64_t>(config_.max_queue_size);
  const std::int64_t ahead = queued_.fetch_add(1, std::memory_order_relaxed);
  if (ahead >= limit ||
      (config_.policy == batch_policy::latency_target && !can_make_target(ahead))) {
    queued_.fetch_sub(1, std::memory_order_relaxed);
    return admit::queue_full;
  }
  request* r = pool_->acquire();
  if (r == nullptr) {  // answers are piling up faster than the loop drains them
    queued_.fetch_sub(1, std::memory_order_relaxed);
    return admit::queue_full;
  }
  r->priority = priority;
  *out = r;
  return admit::ok;
}

admit model_scheduler::prepare_many(std::uint32_t priority, std::size_t n,
                                    request** out) noexcept {
  if (closed_.load(std::memory_order_acquire)) return admit::stopped;
  if (priority >= config_.priority_levels) return admit::bad_priority;
  if (n == 0) return admit::ok;
  const auto limit = static_cast<std::int64_t>(config_.max_queue_size);
  const auto count = static_cast<std::int64_t>(std::min<std::size_t>(n, config_.max_queue_size + 1));
  if (count > limit) return admit::queue_full;
  // One fetch_add for the whole call: either all of it fits under the bound or none is kept.
  const std::int64_t ahead = queued_.fetch_add(count, std::memory_order_relaxed);
  if (ahead + count > limit || (config_.policy == batch_policy::latency_target &&
                                !can_make_target(ahead + count - 1))) {
    queued_.fetch_sub(count, std::memory_order_relaxed);
    return admit::queue_full;
  }
  for (std::size_t i = 0; i < n; ++i) {
    request* r = pool_->acquire();
    if (r == nullptr) {  // answers are piling up faster than the loop drains them
      for (std::size_t j = 0; j < i; ++j) pool_->release(out[j]);
      queued_.fetch_sub(count, std::memory_order_relaxed);
      return admit::queue_full;
    }
    r->priority = priority;
    out[i] = r;
  }
  return admit::ok;
}

bool model_scheduler::can_make_target(std::int64_t ahead) const noexcept {
  const cost_line cost = cost_.line();
  if (!cost.measured) return true;  // nothing learned yet: refuse nothing
  const auto batch = static_cast<std::int64_t>(config_.max_batch_size);
  const std::int64_t queued = std::max<std::int64_t>(ahead, 0);
  // Full batches ahead run `instances` at a time; then this request's own batch, shared with
  // the items left over.
  const std::int64_t rounds = queued / batch / static_cast<std::int64_t>(config_.instances);
  const auto own = static_cast<std::size_t>(queued % batch) + 1;
  const double finish =
      static_cast<double>(rounds) * static_cast<double>(cost.predict_ns(config_.max_batch_size)) +
      static_cast<double>(cost.predict_ns(own));
  return finish <= static_cast<double>(config_.max_latency_ns);
}

void model_scheduler::abandon(request* r) noexcept {
  queued_.fetch_sub(1, std::memory_order_relaxed);
  pool_->release(r);
}

void model_scheduler::commit(request* r, void* token, std::int64_t deadline_ns,
                             std::uint64_t id) noexcept {
  r->token = token;
  r->deadline_ns = deadline_ns;
  r->id = id;
  r->t_enqueue = now_ns();
  r->cost = 1;
  if (config_.cost_input >= 0) {  // validated: a 4-byte input
    std::int32_t c = 0;
    std::memcpy(&c, r->input + input_offsets_[static_cast<std::size_t>(config_.cost_input)],
                sizeof c);
    r->cost = c > 1 ? static_cast<std::uint32_t>(c) : 1u;
  }
  metrics_.in_flight.fetch_add(1, std::memory_order_relaxed);
  mpmc_queue<request*>& lane = *lanes_[r->priority];
  while (!lane.try_push(r)) cpu_relax();  // only while a pop of the same slot is finishing
  // seq_cst: pairs with the former's sleepers_/ready_ handshake in form_batch, so either the
  // former sees this item before sleeping or this thread sees the sleeper and signals it.
  const std::int64_t ready = ready_.fetch_add(1, std::memory_order_seq_cst) + 1;
  notify_former(ready);
}

void model_scheduler::notify_former(std::int64_t ready) noexcept {
  if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
  if (ready < wake_at_.load(std::memory_order_seq_cst)) return;  // batch not dispatchable yet
  { std::lock_guard lock(sleep_mutex_); }  // the sleeper checks under this mutex: no lost signal
  sleep_cv_.notify_one();
}

bool model_scheduler::cancel(std::uint64_t handle, bool expired) noexcept {
  const auto index = static_cast<std::size_t>(handle >> 32);
  if (index >= pool_->capacity()) return false;
  const auto gen = static_cast<std::uint32_t>(handle);
  if (!pool_->at(index)->transition(
          gen, expired ? request_state::expired : request_state::cancelled)) {
    return false;
  }
  // This call took it out of `queued`: it stops counting now, not when a worker pops it.
  queued_.fetch_sub(1, std::memory_order_relaxed);
  dead_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool model_scheduler::claim(request* r, request_state to) noexcept {
  if (r->transition(r->generation(), to)) {
    queued_.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }
  dead_.fetch_sub(1, std::memory_order_relaxed);  // a cancel won: it already uncounted it
  return false;
}

void model_scheduler::worker_main(const std::shared_ptr<worker>& w) {
  try {
    w->model->on_worker_start(w->instance);
  } catch (...) {
    // A failing per-instance setup surfaces on the first batch instead.
  }
  while (form_batch(w->items)) {
    if (!compute(*w)) return;  // abandoned: this scheduler may be gone; touch nothing of it
    w->items.clear();
  }
  {
    std::lock_guard lock(workers_mutex_);
    w->exited = true;
  }
  workers_cv_.notify_all();
}

bool model_scheduler::keep(request* r, std::int64_t now, answer_chain& chain) noexcept {
  request_state st = r->state();
  if (st == request_state::queued) {
    if (r->deadline_ns > now) return true;
    if (claim(r, request_state::expired)) st = request_state::expired;
    else st = r->state();
  } else {
    dead_.fetch_sub(1, std::memory_order_relaxed);  // answered here, once
  }
  r->result_outcome =
      st == request_state::expired ? outcome::deadline_exceeded : outcome::cancelled;
  r->error = st == request_state::expired ? msg_deadline() : msg_cancelled();
  chain.add(r);
  return false;
}

bool model_scheduler::pull(std::vector<request*>& items, std::int64_t now) {
  answer_chain answered;
  std::size_t tokens = 0;  // the batch is at most max_batch_size items: summed each call
  if (config_.max_batch_tokens != 0) {
    for (const request* r : items) tokens += r->cost;
  }
  bool capped = false;
  for (std::size_t l = 0; l < lanes_.size() && !capped; ++l) {
    std::deque<request*>& carried = carry_[l];  // older than anything still in the lane
    // A live request that does not fit goes back to the front of its lane's carried list
    // (still counted in ready_), so the next batch starts with it: FIFO is kept.
    auto take = [&](request* r) {
      if (!keep(r, now, answered)) {
        ready_.fetch_sub(1, std::memory_order_relaxed);
        return;
      }
      if (over_cap(items, tokens, r)) {
        carried.push_front(r);
        capped = true;
        return;
      }
      ready_.fetch_sub(1, std::memory_order_relaxed);
      tokens += r->cost;
      items.push_back(r);
    };
    while (!capped && items.size() < config_.max_batch_size && !carried.empty()) {
      request* r = carried.front();
      carried.pop_front();
      take(r);
    }
    request* r = nullptr;
    while (!capped && items.size() < config_.max_batch_size && lanes_[l]->try_pop(r)) take(r);
    if (items.size() >= config_.max_batch_size) break;
  }
  answered.flush(completions_);
  if (dead_.load(std::memory_order_relaxed) >
      static_cast<std::int64_t>(config_.max_queue_size / 2)) {
    sweep(now);
  }
  return capped;
}

void model_scheduler::sweep(std::int64_t now) {
  answer_chain answered;
  for (std::size_t l = 0; l < lanes_.size(); ++l) {
    std::deque<request*>& carried = carry_[l];
    for (std::size_t n = carried.size(); n > 0; --n) {  // compact, keeping the order
      request* r = carried.front();
      carried.pop_front();
      if (keep(r, now, answered)) {
        carried.push_back(r);
      } else {
        ready_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    // Only what is in the lane now: entries pushed meanwhile wait for the next pull.
    request* r = nullptr;
    for (std::ptrdiff_t n = lanes_[l]->size(); n > 0 && lanes_[l]->try_pop(r); --n) {
      if (keep(r, now, answered)) {
        carried.push_back(r);  // still counted in ready_: it can be pulled
      } else {
        ready_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
  }
  answered.flush(completions_);
}

bool model_scheduler::form_batch(std::vector<request*>& items) {
  std::unique_lock form(form_mutex_);
  std::int64_t oldest = no_deadline;
  for (;;) {
    if (stopping_.load(std::memory_order_acquire)) {
      answer_stopped(items);
      items.clear();
      return false;
    }
    std::int64_t now = now_ns();
    const std::size_t before = items.size();
    const bool capped = pull(items, now);
    for (std::size_t i = before; i < items.size(); ++i) {
      oldest = std::min(oldest, items[i]->t_enqueue);
    }
    if (capped || items.size() >= config_.max_batch_size) return true;
    const std::int64_t due = batch_due(items.size(), oldest);
    if (now >= due) return true;
    // What lets the batch leave before `due`: any item when nothing is held (the only way a
    // work_conserving former sleeps), else a full batch.
    const auto need = static_cast<std::int64_t>(
        items.empty() ? 1 : config_.max_batch_size - items.size());
    if (config_.idle_spin_ns > 0 && items.empty()) {
      // A short spin catches the next request without paying a sleep/wake round trip.
      const std::int64_t spin_until = now + config_.idle_spin_ns;
      while (ready_.load(std::memory_order_acquire) < need &&
             !stopping_.load(std::memory_order_relaxed) && now_ns() < spin_until) {
        cpu_relax();
      }
      if (ready_.load(std::memory_order_acquire) >= need) continue;
    }
    // seq_cst handshake with commit(): publish what wakes us, then re-check under the mutex.
    wake_at_.store(need, std::memory_order_seq_cst);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    {
      std::unique_lock sleep(sleep_mutex_);
      while (!stopping_.load(std::memory_order_seq_cst) &&
             ready_.load(std::memory_order_seq_cst) < need) {
        if (due == no_deadline) {
          sleep_cv_.wait(sleep);
        } else if (sleep_cv_.wait_until(sleep, to_time_point(due)) == std::cv_status::timeout) {
          break;
        }
      }
    }
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

std::int64_t model_scheduler::run_on_loop() {
  std::lock_guard form(form_mutex_);
  if (!loop_instance_) return no_deadline;  // not started (or not on_loop)
  worker& w = *loop_instance_;
  if (stopping_.load(std::memory_order_acquire)) {
    answer_stopped(w.items);  // what it held, and whatever is still in the lanes
    w.items.clear();
    return no_deadline;
  }
  const std::int64_t now = now_ns();
  const bool capped = pull(w.items, now);
  if (w.items.empty()) return no_deadline;
  if (!capped && w.items.size() < config_.max_batch_size) {
    std::int64_t oldest = no_deadline;
    for (const request* r : w.items) oldest = std::min(oldest, r->t_enqueue);
    const std::int64_t due = batch_due(w.items.size(), oldest);
    if (now < due) return due;  // held for a fuller batch (fixed_window, latency_target)
  }
  compute(w);  // never abandoned: no watchdog, and shutdown leaves this instance alone
  w.items.clear();
  return ready_.load(std::memory_order_acquire) > 0 ? run_again : no_deadline;
}

std::int64_t model_scheduler::batch_due(std::size_t held, std::int64_t oldest) const noexcept {
  if (held == 0) return no_deadline;
  switch (config_.policy) {
    case batch_policy::fixed_window:
      return add_saturating(oldest, config_.max_queue_delay_ns);
    case batch_policy::latency_target: {
      const cost_line cost = cost_.line();
      if (!cost.measured) return leave_now;
      // Held while the oldest, with one more item in its batch, still makes the target.
      return add_saturating(oldest, config_.max_latency_ns) - cost.predict_ns(held + 1);
    }
    case batch_policy::work_conserving:
      break;
  }
  return leave_now;  // the former is an idle instance: it takes what is there
}

bool model_scheduler::compute(worker& w) {
  std::vector<request*>& items = w.items;
  answer_chain answered;
  const std::int64_t dispatch = now_ns();
  std::size_t kept = 0;
  for (request* r : items) {
    const request_state to =
        r->deadline_ns > dispatch ? request_state::dispatched : request_state::expired;
    if (claim(r, to) && to == request_state::dispatched) {
      r->t_dispatch = dispatch;
      metrics_.queue_wait_ns.record(static_cast<std::uint64_t>(dispatch - r->t_enqueue));
      items[kept++] = r;
      continue;
    }
    const bool expired = r->state() == request_state::expired;
    r->result_outcome = expired ? outcome::deadline_exceeded : outcome::cancelled;
    r->error = expired ? msg_deadline() : msg_cancelled();
    answered.add(r);
  }
  items.resize(kept);
  answered.flush(completions_);
  if (items.empty()) return true;

  std::shared_ptr<const std::string> error;
  block* inputs = nullptr;
  bool ran = false;  // the phase said running: a watchdog or shutdown may take the batch
  const std::size_t n = items.size();
  const std::int64_t start = now_ns();
  try {
    inputs = blocks_->acquire();
    for (std::size_t row = 0; row < n; ++row) {
      const std::byte* src = items[row]->input;
      for (std::size_t k = 0; k < config_.input_bytes.size(); ++k) {
        const std::size_t bytes = config_.input_bytes[k];
        std::memcpy(inputs->region(k) + row * bytes, src + input_offsets_[k], bytes);
      }
      // The stand-in the backend sees: the request's identity, none of its answer.
      request& shadow = w.shadows[row];
      shadow.id = items[row]->id;
      shadow.priority = items[row]->priority;
      shadow.deadline_ns = items[row]->deadline_ns;
      shadow.t_enqueue = items[row]->t_enqueue;
      shadow.t_dispatch = dispatch;
      shadow.result = nullptr;
      shadow.output = nullptr;
      shadow.row = 0;
    }
    batch b;
    b.size = n;
    b.requests = std::span<request* const>(w.shadow_ptrs.data(), n);
    b.inputs = inputs;
    b.instance = w.instance;
    if (config_.execution_timeout_ns > 0) {  // a backend may restart the clock (hold_clock)
      b.deadline = &w.deadline;
      b.execution_timeout_ns = config_.execution_timeout_ns;
    }
    w.deadline.store(config_.execution_timeout_ns > 0
                         ? add_saturating(start, config_.execution_timeout_ns)
                         : no_deadline,
                     std::memory_order_relaxed);
    // release: publishes `items` and the deadline to take_batch, which acquires the phase.
    // Only this worker writes its phase, except take_batch's running -> abandoned.
    const std::uint64_t seq = (w.phase.load(std::memory_order_relaxed) >> 2) + 1;
    w.phase.store(seq << 2 | phase_running, std::memory_order_release);
    ran = true;
    w.model->run(b);
#if defined(__GLIBCXX__)
  } catch (const abi::__forced_unwind&) {
    throw;  // thread cancellation (e.g. CPython ending a thread at exit): must propagate
#endif
  } catch (const std::exception& e) {
    error = std::make_shared<const std::string>(e.what());
  } catch (...) {
    error = std::make_shared<const std::string>("model raised an unknown exception");
  }
  if (ran) {
    std::uint64_t running = w.phase.load(std::memory_order_relaxed);
    // acq_rel: pairs with take_batch. Losing means the batch was answered without us.
    if (phase_state(running) != phase_running ||
        !w.phase.compare_exchange_strong(running, (running & ~std::uint64_t{3}) | phase_idle,
                                         std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
      // Abandoned: discard the late answer through what this thread owns; return at once.
      for (std::size_t row = 0; row < n; ++row) {
        request& shadow = w.shadows[row];
        if (shadow.output != nullptr) shadow.output->release();
        if (shadow.result != nullptr) w.model->discard_result(shadow.result);
        shadow.output = nullptr;
        shadow.result = nullptr;
      }
      if (inputs != nullptr) inputs->release();
      return false;
    }
  }
  const std::int64_t end = now_ns();
  if (inputs != nullptr) inputs->release();
  metrics_.compute_ns.record(static_cast<std::uint64_t>(end - start));
  metrics_.batch_size.record(n);
  metrics_.batches.fetch_add(1, std::memory_order_relaxed);
  metrics_.items_computed.fetch_add(n, std::memory_order_relaxed);
  if (!error && config_.policy == batch_policy::latency_target) {
    cost_.observe(n, end - start);  // a failed batch's time says nothing of the cost
  }
  for (std::size_t row = 0; row < n; ++row) {
    request* r = items[row];
    request& shadow = w.shadows[row];
    r->t_compute_start = start;
    r->t_compute_end = end;
    r->batch_size = static_cast<std::uint32_t>(n);
    r->instance = static_cast<std::uint32_t>(w.instance);
    if (error) {
      if (shadow.output != nullptr) shadow.output->release();
      if (shadow.result != nullptr) w.model->discard_result(shadow.result);
      r->result_outcome = outcome::model_error;
      r->error = error;
    } else {
      r->result = shadow.result;
      r->output = shadow.output;
      r->row = shadow.row;
      r->result_outcome = outcome::success;
    }
    shadow.output = nullptr;
    shadow.result = nullptr;
    answered.add(r);
  }
  answered.flush(completions_);
  return true;
}

void model_scheduler::run_direct(std::size_t batch_size,
                                 const std::vector<const std::byte*>& inputs) {
  if (batch_size == 0 || batch_size > config_.max_batch_size) {
    throw std::invalid_argument("warm-up batch size must be between 1 and max_batch_size");
  }
  if (inputs.size() != config_.input_bytes.size()) {
    throw std::invalid_argument("warm-up needs one input pointer per model input");
  }
  block* blk = blocks_->acquire();
  const block_hold hold(blk);
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const std::size_t n = config_.input_bytes[k] * batch_size;
    if (inputs[k] == nullptr) std::memset(blk->region(k), 0, n);
    else std::memcpy(blk->region(k), inputs[k], n);
  }
  batch b;
  b.size = batch_size;
  b.inputs = blk;
  b.instance = 0;
  backend_->run(b);
}

void model_scheduler::finish(request* r, outcome counted, std::int64_t answered_ns) noexcept {
  metrics_.count(counted);
  metrics_.request_ns.record(static_cast<std::uint64_t>(std::max<std::int64_t>(0, answered_ns - r->t_enqueue)));
  metrics_.in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (r->output != nullptr) r->output->release();
  if (r->result != nullptr) backend_->discard_result(r->result);
  pool_->release(r);
}

}  // namespace inferline
