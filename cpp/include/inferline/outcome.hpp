// How a request ended: the outcome enum and its stable metric-label names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace inferline {

/// How a request ended. Every accepted request ends in exactly one of these.
enum class outcome : std::uint8_t {
  success = 0,
  queue_full,         ///< refused at admission (never accepted)
  deadline_exceeded,  ///< its deadline passed in the queue (never computed) or while computing
  cancelled,          ///< cancelled before its batch was dispatched (never computed)
  model_error,        ///< the model raised or broke its signature; its whole batch failed
  engine_stopped,     ///< refused or answered during shutdown
  invalid_input,      ///< refused at admission by input validation
  count_
};

/// Number of outcome values.
inline constexpr std::size_t outcome_count = static_cast<std::size_t>(outcome::count_);

/// Stable lower-case name of an outcome, as used in metric labels.
constexpr std::string_view outcome_name(outcome o) noexcept {
  switch (o) {
    case outcome::success: return "success";
    case outcome::queue_full: return "queue_full";
    case outcome::deadline_exceeded: return "deadline_exceeded";
    case outcome::cancelled: return "cancelled";
    case outcome::model_error: return "model_error";
    case outcome::engine_stopped: return "engine_stopped";
    case outcome::invalid_input: return "invalid_input";
    case outcome::count_: break;
  }
  return "unknown";
}

}  // namespace inferline
