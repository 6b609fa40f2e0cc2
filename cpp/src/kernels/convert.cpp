// CPU dtype conversions: uint8 image normalisation and float16 / bfloat16 packing, vectorised.
#include "inferline/kernels/convert.hpp"

#include <vector>

#include "cpu_simd.hpp"

namespace inferline::kernels {
namespace {

// Planar output for a compile-time channel count: the inner loop de-interleaves C channels per
// pixel, which the vectoriser turns into shuffles.
template <std::size_t C>
INFERLINE_CPU_CLONES void image_to_planar(const std::uint8_t* in, std::size_t pixels,
                                          const math::pixel_affine* aff, float* out) {
  INFERLINE_SIMD
  for (std::size_t p = 0; p < pixels; ++p) {
    for (std::size_t ch = 0; ch < C; ++ch) {
      out[ch * pixels + p] = math::normalize_pixel(in[p * C + ch], aff[ch]);
    }
  }
}

INFERLINE_CPU_CLONES void image_to_planar_any(const std::uint8_t* in, std::size_t pixels,
                                              std::size_t c, const math::pixel_affine* aff,
                                              float* out) {
  for (std::size_t ch = 0; ch < c; ++ch) {
    const math::pixel_affine a = aff[ch];
    float* plane = out + ch * pixels;
    INFERLINE_SIMD
    for (std::size_t p = 0; p < pixels; ++p) plane[p] = math::normalize_pixel(in[p * c + ch], a);
  }
}

// Interleaved output: one pixel row is w·c contiguous values, scaled by a per-position
// scale/bias row built once per call, so the inner loop is a plain contiguous multiply-add.
INFERLINE_CPU_CLONES void image_row_interleaved(const std::uint8_t* in, std::size_t len,
                                                const float* scale, const float* bias,
                                                float* out) {
  INFERLINE_SIMD
  for (std::size_t i = 0; i < len; ++i) out[i] = static_cast<float>(in[i]) * scale[i] + bias[i];
}

}  // namespace

void image_u8_to_f32(const std::uint8_t* in, std::size_t n, std::size_t h, std::size_t w,
                     std::size_t c, const float* mean, const float* std_dev, float* out,
                     image_layout layout) {
  if (n == 0 || h == 0 || w == 0 || c == 0) return;
  // Grows once per thread to the largest image row / channel count seen, then reused.
  thread_local std::vector<math::pixel_affine> aff;
  aff.resize(c);
  for (std::size_t ch = 0; ch < c; ++ch) aff[ch] = math::make_pixel_affine(mean[ch], std_dev[ch]);
  const std::size_t pixels = h * w;
  if (layout == image_layout::nchw) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint8_t* src = in + i * pixels * c;
      float* dst = out + i * pixels * c;
      switch (c) {
        case 1: image_to_planar<1>(src, pixels, aff.data(), dst); break;
        case 3: image_to_planar<3>(src, pixels, aff.data(), dst); break;
        case 4: image_to_planar<4>(src, pixels, aff.data(), dst); break;
        default: image_to_planar_any(src, pixels, c, aff.data(), dst); break;
      }
    }
    return;
  }
  const std::size_t row_len = w * c;
  thread_local std::vector<float> scale_row;
  thread_local std::vector<float> bias_row;
  scale_row.resize(row_len);
  bias_row.resize(row_len);
  for (std::size_t i = 0; i < row_len; ++i) {
    scale_row[i] = aff[i % c].scale;
    bias_row[i] = aff[i % c].bias;
  }
  for (std::size_t row = 0; row < n * h; ++row) {
    image_row_interleaved(in + row * row_len, row_len, scale_row.data(), bias_row.data(),
                          out + row * row_len);
  }
}

INFERLINE_CPU_CLONES void convert_f32_to_f16(const float* in, std::uint16_t* out,
                                             std::size_t count) {
  INFERLINE_SIMD
  for (std::size_t i = 0; i < count; ++i) out[i] = math::f32_to_f16(in[i]);
}

INFERLINE_CPU_CLONES void convert_f16_to_f32(const std::uint16_t* in, float* out,
                                             std::size_t count) {
  INFERLINE_SIMD
  for (std::size_t i = 0; i < count; ++i) out[i] = math::f16_to_f32(in[i]);
}

INFERLINE_CPU_CLONES void convert_f32_to_bf16(const float* in, std::uint16_t* out,
                                              std::size_t count) {
  INFERLINE_SIMD
  for (std::size_t i = 0; i < count; ++i) out[i] = math::f32_to_bf16(in[i]);
}

INFERLINE_CPU_CLONES void convert_bf16_to_f32(const std::uint16_t* in, float* out,
                                              std::size_t count) {
  INFERLINE_SIMD
  for (std::size_t i = 0; i < count; ++i) out[i] = math::bf16_to_f32(in[i]);
}

}  // namespace inferline::kernels
