// Checks a scheduler_config against the one table of limits, and sizes its queue storage.
#include "inferline/scheduler_config.hpp"

#include <cstdio>
#include <stdexcept>
#include <string>

#include "inferline/mpmc_queue.hpp"
#include "inferline/request.hpp"

namespace inferline {
namespace {

void require_count(const char* what, std::size_t value, std::size_t limit) {
  if (value < 1 || value > limit) {
    throw std::invalid_argument(std::string(what) + " must be between 1 and " +
                                std::to_string(limit) + ", got " + std::to_string(value));
  }
}

std::size_t round_up_pow2(std::size_t n) noexcept {
  std::size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / static_cast<double>(1u << 30));
  return buf;
}

// One lane entry: the queue's slot for a request pointer (cache-line aligned).
constexpr double lane_entry_bytes = static_cast<double>(cache_line);

}  // namespace

std::size_t request_slots(const scheduler_config& config) noexcept {
  // The counts are validated first, so this cannot overflow: at most 2 * (2^24 + 2^8 * 2^16).
  return 2 * (config.max_queue_size + config.instances * config.max_batch_size);
}

std::size_t lane_capacity(const scheduler_config& config) noexcept {
  return round_up_pow2(request_slots(config) + 1);
}

double queue_memory_bytes(const scheduler_config& config) noexcept {
  double item = 0;
  for (std::size_t b : config.input_bytes) item += static_cast<double>(b);
  const double stride = item <= 64 ? 64.0 : static_cast<double>((static_cast<std::size_t>(item) + 63) / 64 * 64);
  const double per_slot = stride + static_cast<double>(sizeof(request)) + 4.0;
  return static_cast<double>(request_slots(config)) * per_slot +
         static_cast<double>(config.priority_levels) *
             static_cast<double>(lane_capacity(config)) * lane_entry_bytes;
}

void validate(const scheduler_config& config) {
  require_count("max_batch_size", config.max_batch_size, limits.max_batch_size);
  require_count("max_queue_size", config.max_queue_size, limits.max_queue_size);
  require_count("priority_levels", config.priority_levels, limits.max_priority_levels);
  require_count("instances", config.instances, limits.max_instances);
  if (config.max_queue_delay_ns < 0) {
    throw std::invalid_argument("max_queue_delay must be >= 0, got " +
                                std::to_string(config.max_queue_delay_ns) + " ns");
  }
  if (config.idle_spin_ns < 0) {
    throw std::invalid_argument("idle_spin must be >= 0, got " +
                                std::to_string(config.idle_spin_ns) + " ns");
  }
  if (config.execution_timeout_ns < 0 ||
      config.execution_timeout_ns > ms_to_ns(limits.max_execution_timeout_ms)) {
    throw std::invalid_argument(
        "execution_timeout must be between 0 (none) and " +
        std::to_string(ms_to_ns(limits.max_execution_timeout_ms)) + " ns, got " +
        std::to_string(config.execution_timeout_ns) + " ns");
  }
  validate_policy(config);
  if (config.on_loop && config.instances != 1) {
    throw std::invalid_argument("a model run on the event loop has one instance (the loop's "
                                "thread), got instances " + std::to_string(config.instances));
  }
  if (config.on_loop && config.execution_timeout_ns != 0) {
    throw std::invalid_argument("a model run on the event loop cannot have an execution "
                                "timeout: a batch on the loop's thread cannot be abandoned");
  }
  if (config.max_batch_tokens > limits.max_batch_tokens) {
    throw std::invalid_argument("max_batch_tokens must be between 0 (no cap) and " +
                                std::to_string(limits.max_batch_tokens) + ", got " +
                                std::to_string(config.max_batch_tokens));
  }
  if (config.cost_input < -1) {
    throw std::invalid_argument("cost_input must be -1 (every item costs 1) or an input index, "
                                "got " + std::to_string(config.cost_input));
  }
  if (config.cost_input >= 0 && !config.input_bytes.empty()) {
    const auto i = static_cast<std::size_t>(config.cost_input);
    if (i >= config.input_bytes.size() || config.input_bytes[i] != sizeof(std::int32_t)) {
      throw std::invalid_argument("cost_input " + std::to_string(config.cost_input) +
                                  " must name an INT32 [1] input (one of " +
                                  std::to_string(config.input_bytes.size()) + " inputs)");
    }
  }
  const double need = queue_memory_bytes(config);
  if (need > static_cast<double>(limits.max_queue_memory_bytes)) {
    double item = 0;
    for (std::size_t b : config.input_bytes) item += static_cast<double>(b);
    throw std::invalid_argument(
        "max_queue_size " + std::to_string(config.max_queue_size) + " (with " +
        std::to_string(config.priority_levels) + " priority_levels, " +
        std::to_string(config.instances) + " instances of max_batch_size " +
        std::to_string(config.max_batch_size) + " and " +
        std::to_string(static_cast<std::size_t>(item)) + "-byte items) needs " + gib(need) +
        " of queue memory at load, more than the limit of " +
        gib(static_cast<double>(limits.max_queue_memory_bytes)) +
        "; lower max_queue_size (or max_queue_bytes, priority_levels, max_batch_size, "
        "instances)");
  }
}

}  // namespace inferline
