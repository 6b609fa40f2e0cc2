// The dynamic batcher: admission, priority lanes, batch forming, dispatch and answers.
#include "inferline/scheduler.hpp"

#include "inferline/clock.hpp"
#include "inferline/platform.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>

namespace inferline {
namespace {

// A chain of answered requests, pushed to the completion queue in one go.
struct answer_chain {
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

std::size_t round_up_pow2(std::size_t n) {
  std::size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

const std::shared_ptr<const std::string>& msg_cancelled() {
  static const auto m = std::make_shared<const std::string>("request cancelled before it was computed");
  return m;
}
const std::shared_ptr<const std::string>& msg_deadline() {
  static const auto m = std::make_shared<const std::string>(
      "deadline exceeded while queued; the request was not computed");
  return m;
}
const std::shared_ptr<const std::string>& msg_stopped() {
  static const auto m = std::make_shared<const std::string>(
      "engine stopped before the request was computed");
  return m;
}

// batch_due's answer for "dispatch what is held now".
constexpr std::int64_t leave_now = std::numeric_limits<std::int64_t>::min();

// stamp + duration (>= 0), saturating at no_deadline.
std::int64_t add_saturating(std::int64_t stamp, std::int64_t duration) noexcept {
  return duration > no_deadline - stamp ? no_deadline : stamp + duration;
}

}  // namespace

// ---- batch cost model ----------------------------------------------------------------------

void batch_cost_model::observe(std::size_t n, std::int64_t ns) noexcept {
  if (n == 0) return;
  const auto x = static_cast<double>(n);
  auto y = static_cast<double>(std::max<std::int64_t>(ns, 0));
  std::lock_guard lock(write_mutex_);
  // The last publication was made under this mutex, so this relaxed read sees it.
  const cost_line current = line();
  if (current.measured) y = std::min(y, 8.0 * static_cast<double>(current.predict_ns(n)) + 1e3);
  constexpr double keep = 1.0 - 1.0 / memory_batches;
  sum_w_ = keep * sum_w_ + 1.0;
  sum_n_ = keep * sum_n_ + x;
  sum_nn_ = keep * sum_nn_ + x * x;
  sum_y_ = keep * sum_y_ + y;
  sum_ny_ = keep * sum_ny_ + x * y;
  const double mean_n = sum_n_ / sum_w_;
  const double mean_y = sum_y_ / sum_w_;
  const double var_n = sum_nn_ / sum_w_ - mean_n * mean_n;
  double a = 0;
  double b = 0;
  if (var_n >= 0.25) {
    a = (sum_ny_ / sum_w_ - mean_n * mean_y) / var_n;
    b = mean_y - a * mean_n;
  } else {
    a = sum_y_ / sum_n_;  // sizes hardly vary: proportional, over-predicts larger batches
  }
  if (a < 0) {
    a = 0;
    b = mean_y;
  } else if (b < 0) {
    b = 0;
    a = sum_ny_ / sum_nn_;
  }
  const auto bits = [](double v) {
    return static_cast<std::uint64_t>(std::bit_cast<std::uint32_t>(static_cast<float>(v)));
  };
  packed_.store(bits(a) << 32 | bits(b), std::memory_order_relaxed);
}

cost_line batch_cost_model::line() const noexcept {
  const std::uint64_t p = packed_.load(std::memory_order_relaxed);
  if (p == unmeasured) return {};
  return {std::bit_cast<float>(static_cast<std::uint32_t>(p >> 32)),
          std::bit_cast<float>(static_cast<std::uint32_t>(p)), true};
}

// ---- scheduler -----------------------------------------------------------------------------

model_scheduler::model_scheduler(scheduler_config config, std::shared_ptr<backend> model,
                                 completion_queue& completions)
    : config_(std::move(config)), backend_(std::move(model)), completions_(completions) {
  if (!backend_) throw std::invalid_argument("model_scheduler needs a backend");
  validate(config_);
  validate_policy(config_);
  for (std::size_t b : config_.input_bytes) {
    input_offsets_.push_back(item_bytes_);
    item_bytes_ += b;
    region_bytes_.push_back(b * config_.max_batch_size);
  }
  // Slots: everything queued, every batch being computed, and answers not yet drained by the
  // loop (bounded by the same amount again; beyond that admission says queue full).
  const std::size_t in_compute = config_.instances * config_.max_batch_size;
  pool_ = std::make_unique<request_pool>(2 * (config_.max_queue_size + in_compute), item_bytes_,
                                         this);
  // A lane never holds more than max_queue_size; the margin keeps a push from meeting a slot
  // whose pop is still in progress.
  const std::size_t lane_capacity = round_up_pow2(config_.max_queue_size + in_compute + 1);
  for (std::size_t i = 0; i < config_.priority_levels; ++i) {
    lanes_.push_back(std::make_unique<mpmc_queue<request*>>(lane_capacity));
  }
  blocks_ = block_pool::create(region_bytes_);
}

model_scheduler::~model_scheduler() {
  shutdown();
  blocks_->close();
}

void model_scheduler::start() {
  if (started_) return;
  started_ = true;
  workers_.reserve(config_.instances);
  for (std::size_t i = 0; i < config_.instances; ++i) {
    workers_.emplace_back([this, i] { worker_main(static_cast<int>(i)); });
  }
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
  return pool_->at(index)->transition(
      gen, expired ? request_state::expired : request_state::cancelled);
}

void model_scheduler::close() noexcept { closed_.store(true, std::memory_order_release); }

void model_scheduler::shutdown() {
  std::call_once(shutdown_once_, [this] {
    close();
    stopping_.store(true, std::memory_order_seq_cst);
    {
      std::lock_guard lock(sleep_mutex_);
    }
    sleep_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    // Workers answered what they found; sweep what arrived after (or if never started).
    std::lock_guard form(form_mutex_);
    answer_stopped({});
  });
}

void model_scheduler::answer_stopped(std::span<request* const> items) noexcept {
  answer_chain chain;
  auto stop = [&](request* r) {
    queued_.fetch_sub(1, std::memory_order_relaxed);
    r->result_outcome = outcome::engine_stopped;
    r->error = msg_stopped();
    chain.add(r);
  };
  for (request* r : items) stop(r);
  for (auto& lane : lanes_) {
    request* r = nullptr;
    while (lane->try_pop(r)) {
      ready_.fetch_sub(1, std::memory_order_relaxed);
      stop(r);
    }
  }
  chain.flush(completions_);
}

void model_scheduler::worker_main(int instance) {
  try {
    backend_->on_worker_start(instance);
  } catch (...) {
    // A failing per-instance setup surfaces on the first batch instead.
  }
  std::vector<request*> items;
  items.reserve(config_.max_batch_size);
  while (form_batch(items)) {
    compute(items, instance);
    items.clear();
  }
}

void model_scheduler::pull(std::vector<request*>& items, std::int64_t now) {
  answer_chain answered;
  for (auto& lane : lanes_) {
    request* r = nullptr;
    while (items.size() < config_.max_batch_size && lane->try_pop(r)) {
      ready_.fetch_sub(1, std::memory_order_relaxed);
      const std::uint32_t gen = r->generation();
      request_state st = r->state();
      if (st == request_state::queued && r->deadline_ns <= now) {
        st = r->transition(gen, request_state::expired) ? request_state::expired : r->state();
      }
      if (st == request_state::queued) {
        items.push_back(r);
        continue;
      }
      queued_.fetch_sub(1, std::memory_order_relaxed);
      r->result_outcome =
          st == request_state::expired ? outcome::deadline_exceeded : outcome::cancelled;
      r->error = st == request_state::expired ? msg_deadline() : msg_cancelled();
      answered.add(r);
    }
    if (items.size() >= config_.max_batch_size) break;
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
    pull(items, now);
    for (std::size_t i = before; i < items.size(); ++i) {
      oldest = std::min(oldest, items[i]->t_enqueue);
    }
    if (items.size() >= config_.max_batch_size) return true;
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

void model_scheduler::compute(std::vector<request*>& items, int instance) {
  answer_chain answered;
  const std::int64_t dispatch = now_ns();
  std::size_t kept = 0;
  for (request* r : items) {
    const std::uint32_t gen = r->generation();
    queued_.fetch_sub(1, std::memory_order_relaxed);
    bool go = false;
    if (r->deadline_ns > dispatch) go = r->transition(gen, request_state::dispatched);
    else r->transition(gen, request_state::expired);
    if (go) {
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
  if (items.empty()) return;

  std::shared_ptr<const std::string> error;
  block* inputs = nullptr;
  const std::int64_t start = now_ns();
  try {
    inputs = blocks_->acquire();
    for (std::size_t row = 0; row < items.size(); ++row) {
      const std::byte* src = items[row]->input;
      for (std::size_t k = 0; k < config_.input_bytes.size(); ++k) {
        const std::size_t n = config_.input_bytes[k];
        std::memcpy(inputs->region(k) + row * n, src + input_offsets_[k], n);
      }
    }
    batch b;
    b.size = items.size();
    b.requests = std::span<request* const>(items.data(), items.size());
    b.inputs = inputs;
    b.instance = instance;
    backend_->run(b);
  } catch (const std::exception& e) {
    error = std::make_shared<const std::string>(e.what());
  } catch (...) {
    error = std::make_shared<const std::string>("model raised an unknown exception");
  }
  const std::int64_t end = now_ns();
  if (inputs != nullptr) inputs->release();
  metrics_.compute_ns.record(static_cast<std::uint64_t>(end - start));
  metrics_.batch_size.record(items.size());
  metrics_.batches.fetch_add(1, std::memory_order_relaxed);
  metrics_.items_computed.fetch_add(items.size(), std::memory_order_relaxed);
  if (!error && config_.policy == batch_policy::latency_target) {
    cost_.observe(items.size(), end - start);  // a failed batch's time says nothing of the cost
  }
  for (request* r : items) {
    r->t_compute_start = start;
    r->t_compute_end = end;
    r->batch_size = static_cast<std::uint32_t>(items.size());
    if (error) {
      if (r->output != nullptr) {
        r->output->release();
        r->output = nullptr;
      }
      if (r->result != nullptr) {
        backend_->discard_result(r->result);
        r->result = nullptr;
      }
      r->result_outcome = outcome::model_error;
      r->error = error;
    } else {
      r->result_outcome = outcome::success;
    }
    answered.add(r);
  }
  answered.flush(completions_);
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
  struct releaser {
    block* b;
    ~releaser() { b->release(); }
  } guard{blk};
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
