// Stress-test sizing shared by the C++ tests: smaller loads under the sanitizers.
#pragma once

#include <cstddef>

namespace inferline::testing {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif
#else
inline constexpr bool sanitized = false;
#endif

/// `normal` in a plain build, `instrumented` under TSAN/ASan (5-20x slower, and the CI machine
/// has two cores): the tests check behaviour, so a smaller load proves the same thing.
constexpr std::size_t scaled(std::size_t normal, std::size_t instrumented) noexcept {
  return sanitized ? instrumented : normal;
}

}  // namespace inferline::testing
