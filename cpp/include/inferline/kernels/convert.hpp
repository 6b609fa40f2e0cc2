// CPU dtype conversions: uint8 images to normalised float32, float32 <-> float16 / bfloat16.
#pragma once

#include <cstddef>
#include <cstdint>

#include "inferline/kernels/math.hpp"

namespace inferline::kernels {

/// Converts a uint8 image batch [n, h, w, c] (HWC, as decoders produce) to float32
/// (v/255 - mean[ch]) / std[ch], laid out as `layout` says. `mean` and `std_dev` hold `c`
/// values on the [0, 1] scale (torchvision convention, e.g. 0.485 / 0.229). Single-threaded on
/// the caller's thread; thread-safe for distinct outputs.
void image_u8_to_f32(const std::uint8_t* in, std::size_t n, std::size_t h, std::size_t w,
                     std::size_t c, const float* mean, const float* std_dev, float* out,
                     image_layout layout);

/// float32 → IEEE float16 bits, round to nearest even, overflow to ±inf, NaN kept quiet.
/// Single-threaded on the caller's thread; thread-safe for distinct outputs.
void convert_f32_to_f16(const float* in, std::uint16_t* out, std::size_t count);

/// IEEE float16 bits → float32 (exact). Thread-safe for distinct outputs.
void convert_f16_to_f32(const std::uint16_t* in, float* out, std::size_t count);

/// float32 → bfloat16 bits, round to nearest even, NaN kept quiet. Thread-safe for distinct
/// outputs.
void convert_f32_to_bf16(const float* in, std::uint16_t* out, std::size_t count);

/// bfloat16 bits → float32 (exact). Thread-safe for distinct outputs.
void convert_bf16_to_f32(const std::uint16_t* in, float* out, std::size_t count);

}  // namespace inferline::kernels
