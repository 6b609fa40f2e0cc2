// Per-element kernel math shared by the CPU kernels and the CUDA kernels (INFERLINE_HD).
//
// Everything here is branch-light float32 arithmetic on scalars so that, on the CPU, loops that
// call it vectorise without -ffast-math, and, under nvcc, the GPU runs the very same formulas
// the host tests check. Nothing here allocates, throws or touches global state.
#pragma once

#include <cstdint>

#if !defined(__CUDA_ARCH__)
#include <bit>
#include <cmath>
#endif

#if defined(__CUDACC__)
/// Marks a function callable from host and device code (__host__ __device__) under nvcc.
#define INFERLINE_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
/// Marks a function callable from host and device code under nvcc; an always-inlined function
/// for host compilers (the CPU loops only vectorise when these are inlined into them).
#define INFERLINE_HD inline __attribute__((always_inline))
#else
/// Marks a function callable from host and device code under nvcc; inline for host compilers.
#define INFERLINE_HD inline
#endif

namespace inferline::kernels {

/// Activation fused into the matrix-multiply epilogue. Plain value type; thread-safe.
enum class activation : std::uint8_t {
  none = 0,       ///< identity
  relu = 1,       ///< max(x, 0); NaN stays NaN
  gelu = 2,       ///< exact GELU, 0.5·x·(1 + erf(x/√2)) (PyTorch nn.GELU() default)
  gelu_tanh = 3,  ///< tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
};

/// Layout of the weight matrix of a linear layer. Plain value type; thread-safe.
enum class weight_layout : std::uint8_t {
  out_in = 0,  ///< W is [N, K] row-major (PyTorch nn.Linear, safetensors exports): y = x·Wᵀ + b
  in_out = 1,  ///< W is [K, N] row-major: y = x·W + b
};

/// Layout of a converted image batch. Plain value type; thread-safe.
enum class image_layout : std::uint8_t {
  nhwc = 0,  ///< output keeps the input's [N, H, W, C] order
  nchw = 1,  ///< output is planar [N, C, H, W] (what most vision models take)
};

namespace math {

/// Bit pattern of a float. Pure function; thread-safe.
INFERLINE_HD std::uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return std::bit_cast<std::uint32_t>(f);
#endif
}

/// Float with the given bit pattern. Pure function; thread-safe.
INFERLINE_HD float bits_to_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

/// True when `x` is a NaN (works under -ffast-math too, unlike x != x). Pure; thread-safe.
INFERLINE_HD bool is_nan(float x) { return (float_to_bits(x) & 0x7fffffffu) > 0x7f800000u; }

/// max(a, b) for the reductions; NaN in `b` is ignored, NaN in `a` is kept. Pure; thread-safe.
INFERLINE_HD float max_f(float a, float b) { return b > a ? b : a; }

/// e^x in float32: Cephes polynomial after round-to-nearest range reduction, within 2 ulp where
/// the result is a normal float; +inf above 88.7228 (overflow), 0 below -86.64 (results under
/// 2^-125 are flushed), NaN for NaN. No float→int conversion and no libm call, so CPU loops that
/// use it vectorise. Pure; thread-safe.
INFERLINE_HD float exp_f(float x) {
  constexpr float log2e = 1.44269504088896341f;
  constexpr float ln2_hi = 0.693359375f;       // exact in 9 bits: n·ln2_hi has no rounding error
  constexpr float ln2_lo = -2.12194440e-4f;
  constexpr float round_magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  constexpr float hi = 88.72283905206835f;    // ln(FLT_MAX): n ≤ 128
  constexpr float lo = -86.64339f;            // -125·ln2: n ≥ -125, so 2^(n-1) stays normal
  const float xc = x > hi ? hi : (x < lo ? lo : x);  // NaN passes through both compares
  const float t = xc * log2e + round_magic;
  const float n = t - round_magic;
  const float r = (xc - n * ln2_hi) - n * ln2_lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // The low mantissa bits of t hold n in two's complement; shifting n + 126 into the exponent
  // field builds 2^(n-1), and doubling p makes up the missing factor 2 (2^128 has no encoding).
  const std::uint32_t pow2 = (float_to_bits(t) + 126u - 0x4b400000u) << 23;
  const float y = (p + p) * bits_to_float(pow2);
  return x > hi ? bits_to_float(0x7f800000u) : (x < lo ? 0.0f : y);
}

/// erf(x) in float32: rational minimax approximation on [-4, 4] (the form used by Eigen and
/// XLA), |error| < 5e-7 absolute; ±1 beyond ±4, NaN for NaN. Pure; thread-safe.
INFERLINE_HD float erf_f(float x) {
  const float xc = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
  const float x2 = xc * xc;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  p = p * xc;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return p / q;
}

/// ReLU; NaN propagates (x < 0 is false for NaN). Pure; thread-safe.
INFERLINE_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }

/// Exact (erf) GELU. Pure; thread-safe.
INFERLINE_HD float gelu(float x) { return 0.5f * x * (1.0f + erf_f(x * 0.70710678118654752f)); }

/// tanh-approximation GELU, written as x·σ(2u) = x / (1 + e^(-2u)), which equals
/// 0.5·x·(1 + tanh(u)) and needs one exp. Pure; thread-safe.
INFERLINE_HD float gelu_tanh(float x) {
  constexpr float k = 0.79788456080286536f;  // √(2/π)
  const float u = k * (x + 0.044715f * x * x * x);
  return x / (1.0f + exp_f(-2.0f * u));
}

/// Applies `act` to `x`. Pure; thread-safe.
template <activation act>
INFERLINE_HD float apply_activation(float x) {
  if constexpr (act == activation::relu) {
    return relu(x);
  } else if constexpr (act == activation::gelu) {
    return gelu(x);
  } else if constexpr (act == activation::gelu_tanh) {
    return gelu_tanh(x);
  } else {
    return x;
  }
}

/// Layer-norm output for one element given the row's mean and 1/sqrt(var + eps). Pure;
/// thread-safe.
INFERLINE_HD float layer_norm_apply(float x, float mean, float rstd, float gamma, float beta) {
  return (x - mean) * rstd * gamma + beta;
}

/// Scale that L2-normalises a row whose sum of squares is `sum_sq` (F.normalize semantics:
/// divide by max(‖x‖, eps)). Pure; thread-safe.
INFERLINE_HD float l2_scale(float sum_sq, float eps) {
#if defined(__CUDA_ARCH__)
  const float norm = sqrtf(sum_sq);
#else
  const float norm = std::sqrt(sum_sq);
#endif
  return 1.0f / (norm > eps ? norm : eps);
}

/// Per-channel affine that maps a uint8 pixel to (v/255 - mean) / std as v·scale + bias.
struct pixel_affine {
  float scale;  ///< 1 / (255·std)
  float bias;   ///< -mean / std
};

/// Folds mean and std (given on the [0, 1] scale, torchvision style) into one multiply-add.
/// Pure; thread-safe.
INFERLINE_HD pixel_affine make_pixel_affine(float mean, float std_dev) {
  return pixel_affine{1.0f / (255.0f * std_dev), -mean / std_dev};
}

/// Normalised float of a uint8 pixel. Pure; thread-safe.
INFERLINE_HD float normalize_pixel(std::uint8_t v, pixel_affine a) {
  return static_cast<float>(v) * a.scale + a.bias;
}

/// IEEE binary16 bits of `f`, round to nearest even; overflow gives ±inf, NaN gives a quiet NaN
/// with the sign kept, subnormal halves are produced exactly. Branch-free float arithmetic
/// (after Maratyszcza's FP16 library): the FPU does the rounding. Needs IEEE float arithmetic
/// without flush-to-zero. Pure; thread-safe.
INFERLINE_HD std::uint16_t f32_to_f16(float f) {
  const float scale_to_inf = bits_to_float(0x77800000u);   // 2^112
  const float scale_to_zero = bits_to_float(0x08800000u);  // 2^-110
  const float ax = bits_to_float(float_to_bits(f) & 0x7fffffffu);
  float base = (ax * scale_to_inf) * scale_to_zero;  // saturates to inf exactly when |f| ≥ 65520
  const std::uint32_t w = float_to_bits(f);
  const std::uint32_t shl1_w = w + w;
  const std::uint32_t sign = w & 0x80000000u;
  std::uint32_t bias = shl1_w & 0xff000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  // Adding 2^(e+1-10) aligns the mantissa so the addition rounds at bit 10 of the half.
  base = bits_to_float((bias >> 1) + 0x07800000u) + base;
  const std::uint32_t bits = float_to_bits(base);
  const std::uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
  const std::uint32_t mantissa_bits = bits & 0x00000fffu;
  const std::uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<std::uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

/// Float value of IEEE binary16 bits `h` (exact; subnormals, inf and NaN included). A NaN keeps
/// its sign and payload (shifted into the top of the float mantissa) and comes out quiet, as
/// F16C's vcvtph2ps and a host FPU's multiply give it. Pure; thread-safe.
INFERLINE_HD float f16_to_f32(std::uint16_t h) {
  const std::uint32_t w = static_cast<std::uint32_t>(h) << 16;
  const std::uint32_t sign = w & 0x80000000u;
  const std::uint32_t two_w = w + w;
  const std::uint32_t exp_offset = 0xe0u << 23;
  const float exp_scale = bits_to_float(0x07800000u);  // 2^-112
  const float normalized = bits_to_float((two_w >> 4) + exp_offset) * exp_scale;
  const std::uint32_t magic_mask = 126u << 23;
  const float denormalized = bits_to_float((two_w >> 17) | magic_mask) - 0.5f;
  const std::uint32_t cutoff = 1u << 27;
  // Exponent 0x1F (inf, NaN) in integers: a GPU's multiply would turn every NaN into its one
  // canonical NaN, losing the sign and payload the host keeps.
  const std::uint32_t mantissa = static_cast<std::uint32_t>(h) & 0x3ffu;
  const std::uint32_t inf_nan =
      sign | 0x7f800000u | (mantissa << 13) | (mantissa != 0 ? 0x00400000u : 0u);
  const std::uint32_t finite =
      sign | (two_w < cutoff ? float_to_bits(denormalized) : float_to_bits(normalized));
  return bits_to_float((static_cast<std::uint32_t>(h) & 0x7c00u) == 0x7c00u ? inf_nan : finite);
}

/// bfloat16 bits of `f`, round to nearest even; NaN gives a quiet NaN with the sign kept
/// (never rounds a NaN into inf). Pure; thread-safe.
INFERLINE_HD std::uint16_t f32_to_bf16(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

/// Float value of bfloat16 bits `h` (exact). Pure; thread-safe.
INFERLINE_HD float bf16_to_f32(std::uint16_t h) {
  return bits_to_float(static_cast<std::uint32_t>(h) << 16);
}

/// Top-k order: true when (va, ia) ranks before (vb, ib). Larger values first; NaN ranks above
/// every number (as torch.topk does); equal values (and NaN vs NaN) by lower index first.
/// A strict total order on (value, index) pairs. Pure; thread-safe.
INFERLINE_HD bool topk_before(float va, std::int64_t ia, float vb, std::int64_t ib) {
  const bool na = is_nan(va);
  const bool nb = is_nan(vb);
  if (na || nb) return na && nb ? ia < ib : na;
  if (va != vb) return va > vb;
  return ia < ib;
}

}  // namespace math
}  // namespace inferline::kernels
