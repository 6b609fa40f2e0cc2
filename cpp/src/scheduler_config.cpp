// Checks a scheduler_config against the one table of limits.
#include "inferline/scheduler_config.hpp"

#include <stdexcept>
#include <string>

namespace inferline {
namespace {

void require_count(const char* what, std::size_t value, std::size_t limit) {
  if (value < 1 || value > limit) {
    throw std::invalid_argument(std::string(what) + " must be between 1 and " +
                                std::to_string(limit) + ", got " + std::to_string(value));
  }
}

}  // namespace

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
  validate_policy(config);
}

}  // namespace inferline
