// Microbenchmarks of the batching core's hot paths, each beside the naive baseline it replaces;
// after Google Benchmark's table a second table gives each pair's throughput ratio.
//
// Run: core_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// (the ratio table then uses medians). Multi-threaded rows need idle cores: on a busy 2-vCPU
// machine the threads rarely overlap, and a mutex baseline then looks as fast as one thread
// (its unfair hand-off lets one thread run while the other sleeps).
#include <benchmark/benchmark.h>
#include <poll.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"
#include "inferline/clock.hpp"
#include "inferline/completion_queue.hpp"
#include "inferline/histogram.hpp"
#include "inferline/mpmc_queue.hpp"
#include "inferline/platform.hpp"
#include "inferline/request.hpp"
#include "inferline/scheduler.hpp"

namespace {

using namespace inferline;

// ---- queue: one push and one pop per iteration, all threads on one queue -------------------

mpmc_queue<std::uint64_t>& shared_mpmc() {
  static mpmc_queue<std::uint64_t> q(1024);
  return q;
}

void BM_mpmc_queue_push_pop(benchmark::State& state) {
  mpmc_queue<std::uint64_t>& q = shared_mpmc();
  std::uint64_t v = static_cast<std::uint64_t>(state.thread_index());
  for (auto _ : state) {
    while (!q.try_push(v)) cpu_relax();
    // A pop may briefly miss a value whose push is still being published: retry.
    while (!q.try_pop(v)) cpu_relax();
    benchmark::DoNotOptimize(v);
  }
  state.SetItemsProcessed(state.iterations());  // item: one push + one pop
}
BENCHMARK(BM_mpmc_queue_push_pop)->ThreadRange(1, 4)->UseRealTime();

// Baseline: what a queue shared by producers and workers looks like without the lock-free ring.
struct mutex_deque {
  std::mutex mutex;
  std::deque<std::uint64_t> items;
  void push(std::uint64_t v) {
    std::lock_guard lock(mutex);
    items.push_back(v);
  }
  bool pop(std::uint64_t& v) {
    std::lock_guard lock(mutex);
    if (items.empty()) return false;
    v = items.front();
    items.pop_front();
    return true;
  }
};

void BM_mutex_deque_push_pop(benchmark::State& state) {
  static mutex_deque q;
  std::uint64_t v = static_cast<std::uint64_t>(state.thread_index());
  for (auto _ : state) {
    q.push(v);
    while (!q.pop(v)) cpu_relax();
    benchmark::DoNotOptimize(v);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_mutex_deque_push_pop)->ThreadRange(1, 4)->UseRealTime();

// ---- histogram: record latency-like values ---------------------------------------------------

// 4096 log-spread values from ~1 us to ~100 ms, so records land in many buckets.
const std::vector<std::uint64_t>& latencies() {
  static const std::vector<std::uint64_t> v = [] {
    std::vector<std::uint64_t> out(4096);
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    for (std::uint64_t& o : out) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      o = (1'000ull << (x % 17)) + (x >> 40) % 1'000;
    }
    return out;
  }();
  return v;
}

void BM_histogram_record(benchmark::State& state) {
  static histogram h;
  const std::vector<std::uint64_t>& v = latencies();
  std::size_t i = static_cast<std::size_t>(state.thread_index()) * 997;
  for (auto _ : state) {
    h.record(v[i++ & 4095]);
  }
  benchmark::DoNotOptimize(h.snapshot().count);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_histogram_record)->Threads(1)->Threads(2)->UseRealTime();

// Baseline: the same buckets behind a mutex (the layout of prometheus-cpp's histogram).
struct mutex_histogram {
  std::mutex mutex;
  std::vector<std::uint64_t> counts = std::vector<std::uint64_t>(histogram::bucket_count);
  std::uint64_t count = 0;
  std::uint64_t sum = 0;
  std::uint64_t max = 0;
  void record(std::uint64_t value) {
    std::lock_guard lock(mutex);
    ++counts[histogram::bucket_of(value)];
    ++count;
    sum += value;
    if (value > max) max = value;
  }
};

void BM_mutex_histogram_record(benchmark::State& state) {
  static mutex_histogram h;
  const std::vector<std::uint64_t>& v = latencies();
  std::size_t i = static_cast<std::size_t>(state.thread_index()) * 997;
  for (auto _ : state) {
    h.record(v[i++ & 4095]);
  }
  benchmark::DoNotOptimize(h.count);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_mutex_histogram_record)->Threads(1)->Threads(2)->UseRealTime();

// ---- batch assembly: gather B rows of 512 bytes into one contiguous buffer --------------------

constexpr std::size_t max_rows = 64;
// Read at run time, as the scheduler reads its config: with a constant 512 GCC inlines each copy
// as `rep movsq`, about half as fast here as the libc memcpy the scheduler really calls.
volatile std::size_t row_bytes_knob = 512;
const std::size_t row_bytes = row_bytes_knob;

// Source rows live in request slots, 64-byte aligned and apart, as in the scheduler.
struct row_sources {
  request_pool pool{max_rows, row_bytes, nullptr};
  std::vector<const std::byte*> rows;
  row_sources() {
    for (std::size_t i = 0; i < max_rows; ++i) {
      request* r = pool.acquire();
      std::memset(r->input, static_cast<int>(i), row_bytes);
      rows.push_back(r->input);
    }
  }
};

const row_sources& sources() {
  static const row_sources s;
  return s;
}

void BM_gather_pooled_block(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const row_sources& src = sources();
  block_pool* pool = block_pool::create({max_rows * row_bytes});
  for (auto _ : state) {
    block* b = pool->acquire();
    std::byte* dst = b->region(0);
    for (std::size_t r = 0; r < n; ++r) std::memcpy(dst + r * row_bytes, src.rows[r], row_bytes);
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
    b->release();
  }
  pool->close();
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));  // rows
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n * row_bytes));
}
BENCHMARK(BM_gather_pooled_block)->RangeMultiplier(2)->Range(1, 64);

// Baseline: a fresh buffer per batch (reserve + append: one allocation, no zero fill).
void BM_gather_fresh_vector(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const row_sources& src = sources();
  for (auto _ : state) {
    std::vector<std::byte> buf;
    buf.reserve(n * row_bytes);
    for (std::size_t r = 0; r < n; ++r) buf.insert(buf.end(), src.rows[r], src.rows[r] + row_bytes);
    benchmark::DoNotOptimize(buf.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n * row_bytes));
}
BENCHMARK(BM_gather_fresh_vector)->RangeMultiplier(2)->Range(1, 64);

// ---- request slots: acquire + release ---------------------------------------------------------

void BM_request_pool_acquire_release(benchmark::State& state) {
  static request_pool pool(1024, 64, nullptr);
  for (auto _ : state) {
    request* r = pool.acquire();
    benchmark::DoNotOptimize(r);
    pool.release(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_request_pool_acquire_release)->Threads(1)->Threads(2)->UseRealTime();

// Baseline: a free list of the same slots behind a mutex.
struct mutex_free_list {
  std::mutex mutex;
  std::unique_ptr<request[]> slots = std::make_unique<request[]>(1024);
  std::vector<request*> free;
  mutex_free_list() {
    for (std::size_t i = 0; i < 1024; ++i) free.push_back(&slots[i]);
  }
  request* acquire() {
    std::lock_guard lock(mutex);
    if (free.empty()) return nullptr;
    request* r = free.back();
    free.pop_back();
    return r;
  }
  void release(request* r) {
    std::lock_guard lock(mutex);
    free.push_back(r);
  }
};

void BM_mutex_free_list_acquire_release(benchmark::State& state) {
  static mutex_free_list pool;
  for (auto _ : state) {
    request* r = pool.acquire();
    benchmark::DoNotOptimize(r);
    pool.release(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_mutex_free_list_acquire_release)->Threads(1)->Threads(2)->UseRealTime();

// ---- lone request round trip: work-conserving batching vs Triton's fixed window ------------

// A backend that computes nothing: the rows measure the scheduler's own round trip.
class null_backend final : public backend {
 public:
  void run(batch& /*b*/) override {}
  std::string platform() const override { return "bench"; }
};

// Concurrency 1 (what every user at low traffic sees): submit one request, sleep in poll(2) on
// the completion fd as the event loop does, drain it, finish it; repeat. The argument is
// max_queue_delay in µs, which work_conserving ignores and fixed_window waits out.
void lone_request_round_trip(benchmark::State& state, batch_policy policy) {
  completion_queue completions;
  scheduler_config c;
  c.name = "bench";
  c.input_bytes = {64};
  c.max_batch_size = 8;
  c.max_queue_delay_ns = state.range(0) * 1'000;
  c.policy = policy;
  model_scheduler sched(c, std::make_shared<null_backend>(), completions);
  sched.start();
  std::uint64_t id = 0;
  for (auto _ : state) {
    request* r = nullptr;
    if (sched.prepare(0, &r) != admit::ok) {
      state.SkipWithError("request refused");
      break;
    }
    sched.commit(r, nullptr, no_deadline, id++);
    request* done = nullptr;
    while ((done = completions.take_all()) == nullptr) {
      pollfd p{completions.fd(), POLLIN, 0};
      ::poll(&p, 1, -1);
    }
    sched.finish(done, done->result_outcome, now_ns());
  }
  sched.shutdown();
  state.SetItemsProcessed(state.iterations());  // item: one round trip
}

void BM_lone_request_work_conserving(benchmark::State& state) {
  lone_request_round_trip(state, batch_policy::work_conserving);
}
BENCHMARK(BM_lone_request_work_conserving)->Arg(200)->Arg(1'000)->UseRealTime();

// Baseline: the same request under Triton's dynamic batcher (the previous behaviour).
void BM_lone_request_fixed_window(benchmark::State& state) {
  lone_request_round_trip(state, batch_policy::fixed_window);
}
BENCHMARK(BM_lone_request_fixed_window)->Arg(200)->Arg(1'000)->UseRealTime();

// ---- ratio table ------------------------------------------------------------------------------

// Prints Google Benchmark's usual table, remembers each run's throughput, and at the end
// prints candidate / baseline for every pair measured with the same arguments and threads.
class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      // With --benchmark_repetitions keep the median (robust on a noisy machine), otherwise
      // the single run.
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
      const auto it = run.counters.find("items_per_second");
      if (it == run.counters.end()) continue;
      std::string variant = run.run_name.args;
      if (!run.run_name.threads.empty()) {
        variant += (variant.empty() ? "" : "/") + run.run_name.threads;
      }
      rates_[run.run_name.function_name].emplace_back(variant, it->second.value);
    }
  }

  void print_ratios() const {
    static const std::pair<const char*, const char*> pairs[] = {
        {"BM_mpmc_queue_push_pop", "BM_mutex_deque_push_pop"},
        {"BM_histogram_record", "BM_mutex_histogram_record"},
        {"BM_gather_pooled_block", "BM_gather_fresh_vector"},
        {"BM_request_pool_acquire_release", "BM_mutex_free_list_acquire_release"},
        {"BM_lone_request_work_conserving", "BM_lone_request_fixed_window"},
    };
    std::printf("\n%-34s %-12s %14s %14s %8s\n", "candidate vs baseline", "variant",
                "candidate/s", "baseline/s", "ratio");
    for (const auto& [cand, base] : pairs) {
      const auto c = rates_.find(cand);
      const auto b = rates_.find(base);
      if (c == rates_.end() || b == rates_.end()) continue;
      for (const auto& [variant, rate] : c->second) {
        for (const auto& [base_variant, base_rate] : b->second) {
          if (base_variant != variant || base_rate <= 0) continue;
          std::printf("%-34s %-12s %13.3gM %13.3gM %7.2fx\n", cand + 3, variant.c_str(),
                      rate / 1e6, base_rate / 1e6, rate / base_rate);
        }
      }
    }
    std::printf("(items/s: queue push+pop pairs, records, gathered rows, acquire+release "
                "pairs, lone-request round trips (variant: max_queue_delay in µs); ratio > 1 "
                "means the core is faster)\n");
  }

 private:
  // function name -> (variant, items per second), in the order the runs were reported
  std::map<std::string, std::vector<std::pair<std::string, double>>> rates_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.print_ratios();
  benchmark::Shutdown();
  return 0;
}
