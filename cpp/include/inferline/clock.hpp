// Monotonic nanosecond clock shared by every stage stamp and deadline.
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

/// CPU hint for spin-wait loops.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace inferline
