// Host launchers for CUDA dtype conversions: uint8 images to normalised float32 and float32 <->
// float16 / bfloat16 (16-bit values as their uint16 bit patterns).
#pragma once

#include <cstddef>
#include <cstdint>

#include "inferline/kernels/math.hpp"

namespace inferline::cuda {

/// Most channels image_u8_to_f32 accepts (the per-channel affine travels as a kernel argument).
inline constexpr std::size_t max_image_channels = 16;

/// uint8 [n, h, w, c] → normalised float32 in `layout`, same contract as
/// kernels::image_u8_to_f32. `in` and `out` are device pointers; `mean` and `std_dev` are HOST
/// arrays of `c` values (c ≤ max_image_channels, else std::invalid_argument). Queued on
/// `stream` (null: default stream). Thread-safe.
void image_u8_to_f32(const std::uint8_t* in, std::size_t n, std::size_t h, std::size_t w,
                     std::size_t c, const float* mean, const float* std_dev, float* out,
                     kernels::image_layout layout, void* stream = nullptr);

/// float32 → float16 bits (round to nearest even) on device pointers. Thread-safe.
void convert_f32_to_f16(const float* in, std::uint16_t* out, std::size_t count,
                        void* stream = nullptr);

/// float16 bits → float32 on device pointers. Thread-safe.
void convert_f16_to_f32(const std::uint16_t* in, float* out, std::size_t count,
                        void* stream = nullptr);

/// float32 → bfloat16 bits (round to nearest even, NaN kept) on device pointers. Thread-safe.
void convert_f32_to_bf16(const float* in, std::uint16_t* out, std::size_t count,
                         void* stream = nullptr);

/// bfloat16 bits → float32 on device pointers. Thread-safe.
void convert_bf16_to_f32(const std::uint16_t* in, float* out, std::size_t count,
                         void* stream = nullptr);

}  // namespace inferline::cuda
