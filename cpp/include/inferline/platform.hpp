// Platform constants and hints shared by the lock-free structures: cache-line size, spin hint.
#pragma once

#include <cstddef>

namespace inferline {

/// Size of a cache line for padding hot atomics apart (false sharing). A constant, so
/// thread-safe.
inline constexpr std::size_t cache_line = 64;

/// CPU hint for spin-wait loops. Thread-safe.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace inferline
