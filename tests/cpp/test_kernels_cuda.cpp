// CUDA kernels against the CPU kernels (themselves tested against references in
// test_kernels.cpp), over odd and tiny shapes. Every test skips when the build has no CUDA or
// no device is visible, so this binary passes on CPU-only machines.
//
// Tolerances GPU vs CPU (float32; the GPU contracts multiply-adds into FMAs and sums in another
// order, the per-element math is the same code):
//   linear        |gpu - cpu| ≤ 2e-5 · (1 + |bias| + Σ_k |x·w|)
//   softmax       |gpu - cpu| ≤ 1e-6 + 1e-5 · cpu
//   layer_norm    |gpu - cpu| ≤ 1e-4 · (1 + |cpu|);  l2: 1e-6 + 1e-5 · |cpu|
//   mean pool     |gpu - cpu| ≤ 1e-5 · (1 + |cpu|)
//   top-k, conversions: exact (image conversion 1e-6 relative).
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <limits>
#include <random>
#include <vector>

#include "inferline/build_info.hpp"
#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/cuda_api.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/math.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"
#include "inferline/kernels/topk.hpp"

namespace {

namespace k = inferline::kernels;

#define INFERLINE_SKIP_WITHOUT_GPU()                                             \
  do {                                                                           \
    if (!k::have_cuda) GTEST_SKIP() << "built without CUDA";                     \
    if (inferline::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";   \
  } while (0)

[[maybe_unused]] std::vector<float> random_floats(std::size_t n, std::uint32_t seed,
                                                 float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(KernelCudaInfo, ReportsBuildAndDevicesWithoutCrashing) {
  EXPECT_EQ(inferline::cuda_compiled(), k::have_cuda);
  const int count = inferline::cuda_device_count();
  EXPECT_GE(count, 0);
  if (!k::have_cuda) {
    EXPECT_EQ(count, 0);
  }
  for (int i = 0; i < count; ++i) EXPECT_FALSE(inferline::cuda_device_name(i).empty());
  EXPECT_TRUE(inferline::cuda_device_name(count).empty());
}

#ifdef INFERLINE_HAVE_CUDA
namespace cu = inferline::cuda;

template <class T>
std::vector<T> download(const cu::device_buffer<T>& b) {
  std::vector<T> out(b.size());
  b.download(out.data());
  return out;
}

TEST(KernelCudaMemory, RoundTripAndStreams) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const auto x = random_floats(1000, 1);
  cu::device_buffer<float> a(x.data(), x.size());
  cu::device_buffer<float> b(x.size());
  void* stream = cu::stream_create();
  cu::copy_on_device(b.data(), a.data(), x.size() * sizeof(float), stream);
  cu::stream_synchronize(stream);
  cu::stream_destroy(stream);
  EXPECT_EQ(download(b), x);
  cu::device_buffer<float> moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.size(), x.size());
}

TEST(KernelCudaLinear, MatchesCpuOverShapesLayoutsActivations) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::size_t shapes[][3] = {{1, 1, 1},    {1, 7, 3},     {3, 5, 7},     {13, 17, 19},
                                   {64, 64, 16}, {65, 63, 67},  {1, 257, 129}, {127, 3, 255},
                                   {200, 129, 97}, {97, 1000, 31}, {5, 3, 0}};
  std::uint32_t seed = 100;
  for (const auto& s : shapes) {
    const std::size_t m = s[0], n = s[1], kk = s[2];
    const auto x = random_floats(m * kk, ++seed);
    const auto w = random_floats(n * kk, ++seed);
    const auto b = random_floats(n, ++seed);
    cu::device_buffer<float> dx(x.data(), x.size()), dw(w.data(), w.size()), db(b.data(), n);
    cu::device_buffer<float> dy(m * n);
    for (const auto layout : {k::weight_layout::out_in, k::weight_layout::in_out}) {
      for (const auto act : {k::activation::none, k::activation::relu, k::activation::gelu,
                             k::activation::gelu_tanh}) {
        for (const bool with_bias : {true, false}) {
          std::vector<float> ref(m * n);
          k::linear(x.data(), w.data(), with_bias ? b.data() : nullptr, ref.data(), m, n, kk,
                    layout, act);
          cu::linear(dx.data(), dw.data(), with_bias ? db.data() : nullptr, dy.data(), m, n, kk,
                     layout, act);
          const auto got = download(dy);
          for (std::size_t i = 0; i < m; ++i) {
            for (std::size_t j = 0; j < n; ++j) {
              double mag = 1.0 + (with_bias ? std::fabs(b[j]) : 0.0);
              for (std::size_t p = 0; p < kk; ++p) {
                const float wv =
                    layout == k::weight_layout::out_in ? w[j * kk + p] : w[p * n + j];
                mag += std::fabs(x[i * kk + p] * wv);
              }
              ASSERT_NEAR(got[i * n + j], ref[i * n + j], 2e-5 * mag)
                  << m << "x" << n << "x" << kk << " at (" << i << "," << j << ")";
            }
          }
        }
      }
    }
  }
}

TEST(KernelCudaLinear, EpilogueAloneMatchesCpu) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::size_t m = 37, n = 129;
  const auto y0 = random_floats(m * n, 150, -3.0f, 3.0f);
  const auto b = random_floats(n, 151);
  for (const auto act : {k::activation::none, k::activation::relu, k::activation::gelu,
                         k::activation::gelu_tanh}) {
    for (const bool with_bias : {true, false}) {
      std::vector<float> ref = y0;
      k::bias_activation(ref.data(), m, n, with_bias ? b.data() : nullptr, act);
      cu::device_buffer<float> dy(y0.data(), y0.size()), db(b.data(), n);
      cu::bias_activation(dy.data(), m, n, with_bias ? db.data() : nullptr, act);
      const auto got = download(dy);
      for (std::size_t i = 0; i < ref.size(); ++i) {
        ASSERT_NEAR(got[i], ref[i], 1e-6 + 1e-6 * std::fabs(ref[i]));
      }
    }
  }
}

TEST(KernelCudaSoftmax, MatchesCpuIncludingInPlaceAndNaNRows) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::size_t shapes[][2] = {{1, 1}, {3, 7}, {2, 33}, {64, 65}, {4, 1000}, {3, 4099}};
  std::uint32_t seed = 200;
  for (const auto& s : shapes) {
    auto x = random_floats(s[0] * s[1], ++seed, -20.0f, 20.0f);
    x[0] = std::numeric_limits<float>::quiet_NaN();  // row 0 becomes NaN on both
    std::vector<float> ref(x.size());
    k::softmax(x.data(), ref.data(), s[0], s[1]);
    cu::device_buffer<float> dx(x.data(), x.size());
    cu::softmax(dx.data(), dx.data(), s[0], s[1]);
    const auto got = download(dx);
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(ref[i])) {
        ASSERT_TRUE(std::isnan(got[i])) << i;
      } else {
        ASSERT_NEAR(got[i], ref[i], 1e-6 + 1e-5 * ref[i]) << s[0] << "x" << s[1] << " @" << i;
      }
    }
  }
}

TEST(KernelCudaNorm, LayerNormAndL2MatchCpu) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::size_t shapes[][2] = {{1, 1}, {3, 5}, {7, 31}, {2, 64}, {3, 768}, {2, 4099}};
  std::uint32_t seed = 300;
  for (const auto& s : shapes) {
    const std::size_t rows = s[0], cols = s[1];
    const auto x = random_floats(rows * cols, ++seed, 95.0f, 105.0f);
    const auto g = random_floats(cols, ++seed, 0.5f, 1.5f);
    const auto b = random_floats(cols, ++seed);
    cu::device_buffer<float> dx(x.data(), x.size()), dg(g.data(), cols), db(b.data(), cols);
    cu::device_buffer<float> dy(x.size());
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<float> ref(x.size());
      k::layer_norm(x.data(), (variant & 1) ? g.data() : nullptr,
                    (variant & 2) ? b.data() : nullptr, ref.data(), rows, cols, 1e-5f);
      cu::layer_norm(dx.data(), (variant & 1) ? dg.data() : nullptr,
                     (variant & 2) ? db.data() : nullptr, dy.data(), rows, cols, 1e-5f);
      const auto got = download(dy);
      for (std::size_t i = 0; i < x.size(); ++i) {
        ASSERT_NEAR(got[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << rows << "x" << cols;
      }
    }
    std::vector<float> ref(x.size());
    k::l2_normalize(x.data(), ref.data(), rows, cols);
    cu::l2_normalize(dx.data(), dy.data(), rows, cols);
    const auto got = download(dy);
    for (std::size_t i = 0; i < x.size(); ++i) {
      ASSERT_NEAR(got[i], ref[i], 1e-6 + 1e-5 * std::fabs(ref[i]));
    }
  }
}

TEST(KernelCudaPool, MaskedMeanMatchesCpu) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::size_t shapes[][3] = {{1, 1, 1}, {2, 3, 5}, {3, 7, 31}, {4, 16, 384}, {2, 13, 129}};
  std::uint32_t seed = 400;
  for (const auto& s : shapes) {
    const std::size_t B = s[0], T = s[1], H = s[2];
    const auto x = random_floats(B * T * H, ++seed);
    std::vector<float> mask(B * T);
    std::mt19937 rng(seed);
    for (auto& m : mask) m = static_cast<float>(rng() % 2);
    cu::device_buffer<float> dx(x.data(), x.size()), dm(mask.data(), mask.size()), dy(B * H);
    for (const bool use_mask : {true, false}) {
      std::vector<float> ref(B * H);
      k::masked_mean_pool(x.data(), use_mask ? mask.data() : nullptr, ref.data(), B, T, H);
      cu::masked_mean_pool(dx.data(), use_mask ? dm.data() : nullptr, dy.data(), B, T, H);
      const auto got = download(dy);
      for (std::size_t i = 0; i < ref.size(); ++i) {
        ASSERT_NEAR(got[i], ref[i], 1e-5 * (1 + std::fabs(ref[i])));
      }
    }
  }
}

TEST(KernelCudaTopK, MatchesCpuExactlyWithTiesAndNaN) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::size_t shapes[][3] = {{1, 1, 1}, {3, 7, 2}, {2, 31, 31}, {4, 1000, 5},
                                   {3, 1000, 40}, {2, 4099, 10}};
  std::uint32_t seed = 500;
  for (const auto& s : shapes) {
    const std::size_t rows = s[0], cols = s[1], kk = s[2];
    std::mt19937 rng(++seed);
    std::vector<float> x(rows * cols);
    for (auto& v : x) v = static_cast<float>(rng() % 7);  // many ties
    if (cols > 3) x[2] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> rv(rows * kk);
    std::vector<std::int64_t> ri(rows * kk);
    k::topk(x.data(), rows, cols, kk, rv.data(), ri.data());
    cu::device_buffer<float> dx(x.data(), x.size()), dv(rows * kk);
    cu::device_buffer<std::int64_t> di(rows * kk);
    cu::topk(dx.data(), rows, cols, kk, dv.data(), di.data());
    EXPECT_EQ(download(di), ri) << rows << "x" << cols << " k=" << kk;
    const auto gv = download(dv);
    for (std::size_t i = 0; i < gv.size(); ++i) {
      if (std::isnan(rv[i])) {
        EXPECT_TRUE(std::isnan(gv[i]));
      } else {
        EXPECT_EQ(gv[i], rv[i]);
      }
    }
  }
}

TEST(KernelCudaConvert, HalfAndBfloatMatchCpuBitForBit) {
  INFERLINE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(600);
  std::vector<float> x(300000);
  for (auto& v : x) v = k::math::bits_to_float(static_cast<std::uint32_t>(rng()));
  cu::device_buffer<float> dx(x.data(), x.size()), dback(x.size());
  cu::device_buffer<std::uint16_t> dh(x.size());
  std::vector<std::uint16_t> ref(x.size());
  std::vector<float> ref_back(x.size());

  k::convert_f32_to_f16(x.data(), ref.data(), x.size());
  cu::convert_f32_to_f16(dx.data(), dh.data(), x.size());
  EXPECT_EQ(download(dh), ref);
  k::convert_f16_to_f32(ref.data(), ref_back.data(), x.size());
  cu::convert_f16_to_f32(dh.data(), dback.data(), x.size());
  auto back = download(dback);
  for (std::size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(k::math::float_to_bits(back[i]), k::math::float_to_bits(ref_back[i])) << i;
  }

  k::convert_f32_to_bf16(x.data(), ref.data(), x.size());
  cu::convert_f32_to_bf16(dx.data(), dh.data(), x.size());
  EXPECT_EQ(download(dh), ref);
  k::convert_bf16_to_f32(ref.data(), ref_back.data(), x.size());
  cu::convert_bf16_to_f32(dh.data(), dback.data(), x.size());
  back = download(dback);
  for (std::size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(k::math::float_to_bits(back[i]), k::math::float_to_bits(ref_back[i])) << i;
  }
}

TEST(KernelCudaConvert, HalfToFloatIsBitExactForAllHalvesNaNPayloadsIncluded) {
  INFERLINE_SKIP_WITHOUT_GPU();
  // A float multiply on the GPU returns its canonical NaN: the conversion must keep every NaN
  // half's sign and payload exactly as the host does.
  std::vector<std::uint16_t> all(65536);
  for (std::uint32_t h = 0; h < all.size(); ++h) all[h] = static_cast<std::uint16_t>(h);
  cu::device_buffer<std::uint16_t> dh(all.data(), all.size());
  cu::device_buffer<float> df(all.size());
  cu::convert_f16_to_f32(dh.data(), df.data(), all.size());
  const auto got = download(df);
  for (std::uint32_t h = 0; h < all.size(); ++h) {
    ASSERT_EQ(k::math::float_to_bits(got[h]),
              k::math::float_to_bits(k::math::f16_to_f32(static_cast<std::uint16_t>(h))))
        << std::hex << "half 0x" << h;
  }
}

TEST(KernelCudaConvert, ImageMatchesCpuBothLayouts) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::size_t shapes[][4] = {{1, 1, 1, 1}, {2, 3, 5, 3}, {1, 7, 9, 4}, {2, 33, 17, 3}};
  std::uint32_t seed = 700;
  for (const auto& s : shapes) {
    const std::size_t N = s[0], H = s[1], W = s[2], C = s[3];
    std::mt19937 rng(++seed);
    std::vector<std::uint8_t> img(N * H * W * C);
    for (auto& p : img) p = static_cast<std::uint8_t>(rng());
    const auto mean = random_floats(C, seed, 0.3f, 0.6f);
    const auto sd = random_floats(C, seed + 1, 0.2f, 0.3f);
    cu::device_buffer<std::uint8_t> di(img.data(), img.size());
    cu::device_buffer<float> dout(img.size());
    for (const auto layout : {k::image_layout::nhwc, k::image_layout::nchw}) {
      std::vector<float> ref(img.size());
      k::image_u8_to_f32(img.data(), N, H, W, C, mean.data(), sd.data(), ref.data(), layout);
      cu::image_u8_to_f32(di.data(), N, H, W, C, mean.data(), sd.data(), dout.data(), layout);
      const auto got = download(dout);
      for (std::size_t i = 0; i < ref.size(); ++i) {
        ASSERT_NEAR(got[i], ref[i], 1e-6 * (1 + std::fabs(ref[i])));
      }
    }
  }
  EXPECT_THROW(cu::image_u8_to_f32(nullptr, 1, 1, 1, 17, nullptr, nullptr, nullptr,
                                   k::image_layout::nhwc),
               std::invalid_argument);
}

TEST(KernelCudaErrors, BadArgumentsThrowWithFileAndLine) {
  INFERLINE_SKIP_WITHOUT_GPU();
  EXPECT_THROW(cu::topk(nullptr, 1, 3, 4, nullptr, nullptr), std::invalid_argument);
  try {
    (void)cu::device_malloc(std::size_t{1} << 62);  // far beyond any GPU
    FAIL() << "expected an allocation failure";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaMalloc"), std::string::npos) << what;
    EXPECT_NE(what.find("memory.cu:"), std::string::npos) << what;
  }
}
void expect_too_large(const std::function<void()>& launch, const std::string& launcher) {
  try {
    launch();
    FAIL() << launcher << ": expected std::length_error";
  } catch (const std::length_error& e) {
    EXPECT_EQ(std::string(e.what()),
              "inferline::cuda::" + launcher + ": dimensions too large for one launch");
  }
}

TEST(KernelCudaErrors, SizesThatWouldWrapAreRejectedBeforeAnyLaunch) {
  // No device needed: every check runs before the first CUDA call, so null pointers are fine.
  constexpr std::size_t top = std::numeric_limits<std::size_t>::max();
  const float one = 1.0f;
  using k::activation;
  using k::weight_layout;
  // Row kernels: an unsigned `j += blockDim.x` loop over UINT_MAX columns would wrap.
  expect_too_large([] { cu::softmax(nullptr, nullptr, 1, UINT_MAX); }, "softmax");
  expect_too_large([] { cu::layer_norm(nullptr, nullptr, nullptr, nullptr, 1, UINT_MAX, 1e-5f); },
                   "layer_norm");
  expect_too_large([] { cu::l2_normalize(nullptr, nullptr, 1, UINT_MAX - 1, 1e-12f); },
                   "l2_normalize");
  // Linear: n + tile - 1 and k0 + tile_k in int.
  expect_too_large(
      [] {
        cu::linear(nullptr, nullptr, nullptr, nullptr, 1, INT_MAX, 1, weight_layout::out_in,
                   activation::none);
      },
      "linear");
  expect_too_large(
      [] {
        cu::linear(nullptr, nullptr, nullptr, nullptr, 1, 1, INT_MAX - 1, weight_layout::in_out,
                   activation::relu);
      },
      "linear");
  // Element counts whose product, or whose grid-stride index, overflows size_t.
  expect_too_large(
      [] { cu::bias_activation(nullptr, top / 2, 3, nullptr, activation::gelu); },
      "bias_activation");
  expect_too_large([] { cu::convert_f16_to_f32(nullptr, nullptr, top); }, "convert_f16_to_f32");
  expect_too_large([&] {
    cu::image_u8_to_f32(nullptr, top / 2, 2, 2, 1, &one, &one, nullptr, k::image_layout::nchw);
  }, "image_u8_to_f32");
  expect_too_large([] { cu::masked_mean_pool(nullptr, nullptr, nullptr, 65536, 1, 1); },
                   "masked_mean_pool");
  expect_too_large([] { cu::masked_mean_pool(nullptr, nullptr, nullptr, 2, top / 2, 2); },
                   "masked_mean_pool");
}
#else
TEST(KernelCuda, SkippedWithoutCudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
