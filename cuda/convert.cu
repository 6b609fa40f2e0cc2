// CUDA dtype conversions: grid-stride element-wise kernels over the shared math helpers.
#include "convert.cuh"

#include <algorithm>
#include <stdexcept>

#include "cuda_check.cuh"
#include "launch_limits.cuh"

namespace inferline::cuda {
namespace {

namespace math = kernels::math;

constexpr unsigned convert_threads = 256;
constexpr std::size_t max_blocks = 4096;  // grid-stride beyond this: enough to fill any GPU

struct affine_table {
  math::pixel_affine ch[max_image_channels];
};

// Blocks for `count` elements; throws when a grid-stride index below `count` could wrap.
unsigned blocks_for(std::size_t count, const char* launcher) {
  limits::require_fits(limits::strided_fits(count, max_blocks * convert_threads, SIZE_MAX),
                       launcher);
  return static_cast<unsigned>(std::min(max_blocks, limits::blocks_for(count, convert_threads)));
}

template <kernels::image_layout layout>
__global__ void image_kernel(const std::uint8_t* __restrict__ in, float* __restrict__ out,
                             std::size_t total, std::size_t pixels, std::size_t c,
                             affine_table aff) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t o = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < total;
       o += stride) {
    if constexpr (layout == kernels::image_layout::nchw) {
      // o = (img·c + ch)·pixels + p; consecutive threads write consecutive p.
      const std::size_t p = o % pixels;
      const std::size_t plane = o / pixels;
      const std::size_t ch = plane % c;
      const std::size_t img = plane / c;
      out[o] = math::normalize_pixel(in[(img * pixels + p) * c + ch], aff.ch[ch]);
    } else {
      out[o] = math::normalize_pixel(in[o], aff.ch[o % c]);
    }
  }
}

template <class In, class Out, class Fn>
__global__ void map_kernel(const In* __restrict__ in, Out* __restrict__ out, std::size_t count) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    out[i] = Fn{}(in[i]);
  }
}

struct to_f16 {
  __device__ std::uint16_t operator()(float f) const { return math::f32_to_f16(f); }
};
struct from_f16 {
  __device__ float operator()(std::uint16_t h) const { return math::f16_to_f32(h); }
};
struct to_bf16 {
  __device__ std::uint16_t operator()(float f) const { return math::f32_to_bf16(f); }
};
struct from_bf16 {
  __device__ float operator()(std::uint16_t h) const { return math::bf16_to_f32(h); }
};

template <class In, class Out, class Fn>
void launch_map(const In* in, Out* out, std::size_t count, void* stream, const char* launcher) {
  if (count == 0) return;
  map_kernel<In, Out, Fn><<<blocks_for(count, launcher), convert_threads, 0,
                            detail::as_stream(stream)>>>(in, out, count);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void image_u8_to_f32(const std::uint8_t* in, std::size_t n, std::size_t h, std::size_t w,
                     std::size_t c, const float* mean, const float* std_dev, float* out,
                     kernels::image_layout layout, void* stream) {
  if (c > max_image_channels) {
    throw std::invalid_argument("inferline::cuda::image_u8_to_f32: more than 16 channels");
  }
  constexpr const char* launcher = "image_u8_to_f32";
  const std::size_t pixels = limits::checked_product(h, w, launcher);
  const std::size_t total = limits::checked_product(
      limits::checked_product(n, pixels, launcher), c, launcher);
  if (total == 0) return;
  const unsigned blocks = blocks_for(total, launcher);
  affine_table aff{};
  for (std::size_t ch = 0; ch < c; ++ch) {
    aff.ch[ch] = math::make_pixel_affine(mean[ch], std_dev[ch]);
  }
  const cudaStream_t s = detail::as_stream(stream);
  if (layout == kernels::image_layout::nchw) {
    image_kernel<kernels::image_layout::nchw>
        <<<blocks, convert_threads, 0, s>>>(in, out, total, pixels, c, aff);
  } else {
    image_kernel<kernels::image_layout::nhwc>
        <<<blocks, convert_threads, 0, s>>>(in, out, total, pixels, c, aff);
  }
  CUDA_CHECK_LAUNCH();
}

void convert_f32_to_f16(const float* in, std::uint16_t* out, std::size_t count, void* stream) {
  launch_map<float, std::uint16_t, to_f16>(in, out, count, stream, "convert_f32_to_f16");
}

void convert_f16_to_f32(const std::uint16_t* in, float* out, std::size_t count, void* stream) {
  launch_map<std::uint16_t, float, from_f16>(in, out, count, stream, "convert_f16_to_f32");
}

void convert_f32_to_bf16(const float* in, std::uint16_t* out, std::size_t count, void* stream) {
  launch_map<float, std::uint16_t, to_bf16>(in, out, count, stream, "convert_f32_to_bf16");
}

void convert_bf16_to_f32(const std::uint16_t* in, float* out, std::size_t count, void* stream) {
  launch_map<std::uint16_t, float, from_bf16>(in, out, count, stream, "convert_bf16_to_f32");
}

}  // namespace inferline::cuda
