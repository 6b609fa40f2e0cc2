// Monotonic nanosecond clock shared by every stage stamp and deadline.
//
// The clock contract: every deadline and stamp in the core is nanoseconds on
// std::chrono::steady_clock, which on Linux (libstdc++ and libc++) is CLOCK_MONOTONIC, the
// clock behind Python's time.monotonic() and asyncio's loop.time(). Callers outside the core
// never pass absolute stamps in: the bindings take a timeout in seconds and add it to now_ns().
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>

namespace inferline {

/// Nanoseconds on the steady clock. Thread-safe.
inline std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Deadline value meaning "none".
inline constexpr std::int64_t no_deadline = std::numeric_limits<std::int64_t>::max();

/// Converts a steady-clock nanosecond stamp to a time_point for timed waits. Thread-safe.
inline std::chrono::steady_clock::time_point to_time_point(std::int64_t ns) noexcept {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
}

}  // namespace inferline
