// The NaN/Inf check behind `finite=True`: a branch-free scan of IEEE bit patterns per float kind.
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferline {

/// Which IEEE format a tensor's elements have, for the finite check. `none`: not a float (the
/// check does not apply). BF16 travels as uint16 bits, so its kind is declared, not inferred.
enum class float_kind : std::uint8_t { none, fp16, fp32, fp64, bf16 };

/// True when none of the `count` elements at `data` (of kind `kind`) is NaN or Inf; always true
/// for `float_kind::none`. Reads only; thread-safe.
inline bool all_finite(const void* data, std::size_t count, float_kind kind) noexcept {
  switch (kind) {
    case float_kind::fp32: {
      const auto* p = static_cast<const std::uint32_t*>(data);
      std::uint32_t bad = 0;
      for (std::size_t i = 0; i < count; ++i) bad |= ((p[i] & 0x7f800000u) == 0x7f800000u);
      return bad == 0;
    }
    case float_kind::fp64: {
      const auto* p = static_cast<const std::uint64_t*>(data);
      std::uint64_t bad = 0;
      for (std::size_t i = 0; i < count; ++i) {
        bad |= ((p[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
      }
      return bad == 0;
    }
    case float_kind::fp16:
    case float_kind::bf16: {
      const std::uint16_t mask = kind == float_kind::fp16 ? 0x7c00 : 0x7f80;
      const auto* p = static_cast<const std::uint16_t*>(data);
      std::uint16_t bad = 0;
      for (std::size_t i = 0; i < count; ++i) bad |= ((p[i] & mask) == mask);
      return bad == 0;
    }
    case float_kind::none: break;
  }
  return true;
}

}  // namespace inferline
