// CPU kernels against straightforward double-precision references written here, over many
// shapes (tiny, prime, not multiples of any vector width or block size) and edge values.
//
// Tolerances (stated per test, all on float32 outputs):
//   linear         |y - ref| ≤ 2e-5 · (1 + |bias| + Σ_k |x·w|)  (+ 1e-6·|pre| for the GELUs)
//   softmax        |y - ref| ≤ 1e-6 + 1e-5 · ref
//   layer_norm     |y - ref| ≤ 1e-4 · (1 + |ref|)
//   l2_normalize   |y - ref| ≤ 1e-6 + 1e-5 · |ref|
//   mean pool      |y - ref| ≤ 1e-5 · (1 + |ref|)
//   top-k, f16/bf16 packing, image conversion (1e-6 relative): exact or near-exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/math.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"
#include "inferline/kernels/topk.hpp"
#include "launch_limits.cuh"  // the CUDA launchers' size guards: plain host C++

namespace {

namespace k = inferline::kernels;
namespace math = inferline::kernels::math;
using k::activation;
using k::weight_layout;

constexpr float inf = std::numeric_limits<float>::infinity();
const float nan_f = std::numeric_limits<float>::quiet_NaN();

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float lo = -1.0f,
                                 float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

double ref_activation(double x, activation act) {
  switch (act) {
    case activation::none: return x;
    case activation::relu: return x < 0 ? 0 : x;
    case activation::gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case activation::gelu_tanh: {
      const double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
      return 0.5 * x * (1.0 + std::tanh(u));
    }
  }
  return x;
}

// ---- shared math ------------------------------------------------------------------------

TEST(KernelMath, ExpWithinTwoUlpOverNormalRange) {
  double worst = 0;
  for (float x = -86.6f; x < 88.72f; x += 0.00731f) {
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(math::exp_f(x) - ref) / ref);
  }
  EXPECT_LT(worst, 2.0 * 5.97e-8);  // 2 ulp at 2^-24 relative spacing
  EXPECT_EQ(math::exp_f(0.0f), 1.0f);
  EXPECT_EQ(math::exp_f(89.0f), inf);
  EXPECT_EQ(math::exp_f(inf), inf);
  EXPECT_EQ(math::exp_f(-100.0f), 0.0f);
  EXPECT_EQ(math::exp_f(-inf), 0.0f);
  EXPECT_TRUE(std::isnan(math::exp_f(nan_f)));
}

TEST(KernelMath, ErfAndGeluMatchLibm) {
  for (float x = -8.0f; x <= 8.0f; x += 0.001f) {
    ASSERT_NEAR(math::erf_f(x), std::erf(static_cast<double>(x)), 5e-7) << x;
    ASSERT_NEAR(math::gelu(x), ref_activation(x, activation::gelu), 1e-6 * (1 + std::fabs(x)))
        << x;
    ASSERT_NEAR(math::gelu_tanh(x), ref_activation(x, activation::gelu_tanh),
                1e-6 * (1 + std::fabs(x)))
        << x;
  }
  EXPECT_EQ(math::gelu_tanh(-1e30f), 0.0f);
  EXPECT_EQ(math::gelu_tanh(1e30f), 1e30f);
  EXPECT_TRUE(std::isnan(math::gelu(nan_f)));
  EXPECT_TRUE(std::isnan(math::relu(nan_f)));
}

// ---- linear -----------------------------------------------------------------------------

struct mnk {
  std::size_t m, n, k;
};

void check_linear(mnk s, weight_layout layout, activation act, bool with_bias, std::uint32_t seed) {
  const auto x = random_floats(s.m * s.k, seed);
  const auto w = random_floats(s.n * s.k, seed + 1);
  const auto b = random_floats(s.n, seed + 2);
  std::vector<float> y(s.m * s.n, nan_f);
  const float* bias = with_bias ? b.data() : nullptr;
  k::linear(x.data(), w.data(), bias, y.data(), s.m, s.n, s.k, layout, act);
  for (std::size_t i = 0; i < s.m; ++i) {
    for (std::size_t j = 0; j < s.n; ++j) {
      double acc = with_bias ? b[j] : 0.0;
      double mag = 1.0 + (with_bias ? std::fabs(b[j]) : 0.0);
      for (std::size_t p = 0; p < s.k; ++p) {
        const double wv = layout == weight_layout::out_in ? w[j * s.k + p] : w[p * s.n + j];
        acc += static_cast<double>(x[i * s.k + p]) * wv;
        mag += std::fabs(x[i * s.k + p] * wv);
      }
      const double ref = ref_activation(acc, act);
      const double tol = 2e-5 * mag + 1e-6 * std::fabs(acc);
      ASSERT_NEAR(y[i * s.n + j], ref, tol)
          << "m=" << s.m << " n=" << s.n << " k=" << s.k << " at (" << i << "," << j << ")";
    }
  }
}

TEST(KernelLinear, MatchesReferenceOverShapesLayoutsActivations) {
  const mnk shapes[] = {{1, 1, 1},   {1, 7, 3},    {2, 1, 5},    {3, 5, 7},   {13, 17, 19},
                        {31, 33, 1}, {64, 64, 64}, {65, 63, 67}, {1, 257, 129}, {127, 3, 255},
                        {200, 129, 97}, {97, 1000, 31}};
  std::uint32_t seed = 1;
  for (const auto s : shapes) {
    for (const auto layout : {weight_layout::out_in, weight_layout::in_out}) {
      for (const auto act :
           {activation::none, activation::relu, activation::gelu, activation::gelu_tanh}) {
        for (const bool with_bias : {true, false}) {
          check_linear(s, layout, act, with_bias, seed += 3);
        }
      }
    }
  }
}

TEST(KernelLinear, LargeOutputMatchesReference) {
  // 3000 x 1000 outputs: OpenBLAS splits this across its threads and its own blocking.
  check_linear({3000, 1000, 17}, weight_layout::out_in, activation::gelu, true, 99);
}

TEST(KernelLinear, ZeroInnerDimensionGivesActivatedBias) {
  const std::vector<float> b = {-1.0f, 0.5f, 2.0f};
  std::vector<float> y(6, nan_f);
  k::linear(nullptr, nullptr, b.data(), y.data(), 2, 3, 0, weight_layout::out_in,
            activation::relu);
  EXPECT_EQ(y, (std::vector<float>{0.0f, 0.5f, 2.0f, 0.0f, 0.5f, 2.0f}));
}

TEST(KernelLinear, EmptyOutputIsANoOp) {
  k::linear(nullptr, nullptr, nullptr, nullptr, 0, 5, 5, weight_layout::out_in, activation::none);
  k::linear(nullptr, nullptr, nullptr, nullptr, 5, 0, 5, weight_layout::in_out, activation::gelu);
}

TEST(KernelLinear, BiasActivationEpilogueAlone) {
  std::vector<float> y = {-2.0f, -0.5f, 0.25f, 3.0f, nan_f, -inf};
  const std::vector<float> b = {1.0f, 0.0f, -1.0f};
  k::bias_activation(y.data(), 2, 3, b.data(), activation::relu);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_EQ(y[2], 0.0f);
  EXPECT_EQ(y[3], 4.0f);
  EXPECT_TRUE(std::isnan(y[4]));  // NaN propagates through ReLU
  EXPECT_EQ(y[5], 0.0f);
}

TEST(KernelLinear, BlasThreadsRoundTrip) {
  const int before = k::blas_threads();
  k::set_blas_threads(1);
  EXPECT_EQ(k::blas_threads(), 1);
  k::set_blas_threads(before);
  EXPECT_NE(std::string(k::blas_config()).find("OpenBLAS"), std::string::npos);
}

// ---- softmax ----------------------------------------------------------------------------

void check_softmax(const std::vector<float>& x, std::size_t rows, std::size_t cols,
                   const std::vector<float>& y) {
  for (std::size_t r = 0; r < rows; ++r) {
    double mx = -INFINITY;
    for (std::size_t j = 0; j < cols; ++j) mx = std::max(mx, double{x[r * cols + j]});
    double sum = 0;
    for (std::size_t j = 0; j < cols; ++j) sum += std::exp(x[r * cols + j] - mx);
    for (std::size_t j = 0; j < cols; ++j) {
      const double ref = std::exp(x[r * cols + j] - mx) / sum;
      ASSERT_NEAR(y[r * cols + j], ref, 1e-6 + 1e-5 * ref) << rows << "x" << cols;
    }
  }
}

TEST(KernelSoftmax, MatchesReferenceOverShapes) {
  const std::pair<std::size_t, std::size_t> shapes[] = {
      {1, 1}, {1, 2}, {3, 7}, {5, 16}, {2, 17}, {7, 31}, {4, 1000}, {3, 4099}, {64, 65}};
  std::uint32_t seed = 10;
  for (const auto& [rows, cols] : shapes) {
    const auto x = random_floats(rows * cols, ++seed, -20.0f, 20.0f);
    std::vector<float> y(x.size());
    k::softmax(x.data(), y.data(), rows, cols);
    check_softmax(x, rows, cols, y);
  }
}

TEST(KernelSoftmax, InPlaceLargeValuesAndInfinities) {
  const std::vector<float> in = {1000.0f, 1001.0f, 999.0f, -inf};
  std::vector<float> x = in;
  k::softmax(x.data(), x.data(), 1, 4);
  check_softmax(in, 1, 4, x);
  EXPECT_EQ(x[3], 0.0f);
}

TEST(KernelSoftmax, NaNOrAllMinusInfRowIsNaNAndDoesNotLeak) {
  std::vector<float> x = {1.0f, nan_f, 2.0f, -inf, -inf, -inf, 0.0f, 0.0f, 0.0f};
  std::vector<float> y(9);
  k::softmax(x.data(), y.data(), 3, 3);
  for (int j = 0; j < 6; ++j) EXPECT_TRUE(std::isnan(y[j])) << j;
  for (int j = 6; j < 9; ++j) EXPECT_NEAR(y[j], 1.0 / 3.0, 1e-7);
}

// ---- layer norm and L2 ------------------------------------------------------------------

TEST(KernelLayerNorm, MatchesReferenceWithAndWithoutAffine) {
  const std::pair<std::size_t, std::size_t> shapes[] = {
      {1, 1}, {1, 2}, {3, 5}, {7, 31}, {2, 64}, {5, 127}, {3, 768}, {2, 4099}};
  std::uint32_t seed = 20;
  for (const auto& [rows, cols] : shapes) {
    // An offset mean of 100 exercises the two-pass variance.
    const auto x = random_floats(rows * cols, ++seed, 95.0f, 105.0f);
    const auto g = random_floats(cols, ++seed, 0.5f, 1.5f);
    const auto b = random_floats(cols, ++seed);
    for (int variant = 0; variant < 4; ++variant) {
      const float* gp = (variant & 1) ? g.data() : nullptr;
      const float* bp = (variant & 2) ? b.data() : nullptr;
      std::vector<float> y(x.size());
      k::layer_norm(x.data(), gp, bp, y.data(), rows, cols, 1e-5f);
      for (std::size_t r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (std::size_t j = 0; j < cols; ++j) mean += x[r * cols + j];
        mean /= cols;
        for (std::size_t j = 0; j < cols; ++j) var += std::pow(x[r * cols + j] - mean, 2);
        var /= cols;
        for (std::size_t j = 0; j < cols; ++j) {
          const double ref = (x[r * cols + j] - mean) / std::sqrt(var + 1e-5) *
                                 (gp ? gp[j] : 1.0) + (bp ? bp[j] : 0.0);
          ASSERT_NEAR(y[r * cols + j], ref, 1e-4 * (1 + std::fabs(ref)))
              << rows << "x" << cols << " variant " << variant;
        }
      }
    }
  }
}

TEST(KernelLayerNorm, ConstantRowGivesBetaInPlace) {
  std::vector<float> x(9, 3.0f);
  const std::vector<float> g = {2.0f, 2.0f, 2.0f};
  const std::vector<float> b = {0.5f, -0.5f, 1.0f};
  k::layer_norm(x.data(), g.data(), b.data(), x.data(), 3, 3);
  for (std::size_t i = 0; i < 9; ++i) EXPECT_FLOAT_EQ(x[i], b[i % 3]);
}

TEST(KernelL2Normalize, MatchesReferenceAndHandlesZeroRows) {
  const std::pair<std::size_t, std::size_t> shapes[] = {
      {1, 1}, {2, 3}, {7, 31}, {3, 384}, {5, 1025}};
  std::uint32_t seed = 30;
  for (const auto& [rows, cols] : shapes) {
    auto x = random_floats(rows * cols, ++seed, -3.0f, 3.0f);
    std::fill(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(cols), 0.0f);  // row 0 zero
    std::vector<float> y(x.size());
    k::l2_normalize(x.data(), y.data(), rows, cols);
    for (std::size_t r = 0; r < rows; ++r) {
      double sq = 0;
      for (std::size_t j = 0; j < cols; ++j) sq += double{x[r * cols + j]} * x[r * cols + j];
      const double norm = std::max(std::sqrt(sq), 1e-12);
      for (std::size_t j = 0; j < cols; ++j) {
        const double ref = x[r * cols + j] / norm;
        ASSERT_NEAR(y[r * cols + j], ref, 1e-6 + 1e-5 * std::fabs(ref));
      }
    }
    k::l2_normalize(x.data(), x.data(), rows, cols);  // in place gives the same
    EXPECT_EQ(x, y);
  }
}

// ---- masked mean pooling ----------------------------------------------------------------

TEST(KernelMeanPool, MatchesReferenceWithMasksAndWithout) {
  const std::size_t shapes[][3] = {{1, 1, 1}, {2, 3, 5}, {3, 7, 31}, {4, 16, 384}, {2, 13, 129}};
  std::uint32_t seed = 40;
  for (const auto& s : shapes) {
    const std::size_t B = s[0], T = s[1], H = s[2];
    const auto x = random_floats(B * T * H, ++seed);
    std::vector<float> mask(B * T);
    std::mt19937 rng(seed);
    for (auto& m : mask) m = static_cast<float>(rng() % 2);
    mask[0] = 1.0f;  // at least one live token in row 0
    for (const bool use_mask : {true, false}) {
      std::vector<float> y(B * H, nan_f);
      k::masked_mean_pool(x.data(), use_mask ? mask.data() : nullptr, y.data(), B, T, H);
      for (std::size_t b = 0; b < B; ++b) {
        double count = 0;
        for (std::size_t t = 0; t < T; ++t) count += use_mask ? mask[b * T + t] : 1.0;
        for (std::size_t h = 0; h < H; ++h) {
          double acc = 0;
          for (std::size_t t = 0; t < T; ++t) {
            acc += (use_mask ? mask[b * T + t] : 1.0) * x[(b * T + t) * H + h];
          }
          const double ref = count > 0 ? acc / count : 0.0;
          ASSERT_NEAR(y[b * H + h], ref, 1e-5 * (1 + std::fabs(ref)));
        }
      }
    }
  }
}

TEST(KernelMeanPool, AllPaddingGivesZerosAndPaddingNaNDoesNotLeak) {
  // Row 0: every token masked; row 1: NaN under a masked token.
  const std::vector<float> x = {nan_f, nan_f, 1.0f, 2.0f, 3.0f, 4.0f, nan_f, inf};
  const std::vector<float> mask = {0.0f, 0.0f, 1.0f, 0.0f};
  std::vector<float> y(4, nan_f);
  k::masked_mean_pool(x.data(), mask.data(), y.data(), 2, 2, 2);
  EXPECT_EQ(y, (std::vector<float>{0.0f, 0.0f, 3.0f, 4.0f}));
}

// ---- top-k ------------------------------------------------------------------------------

void check_topk(const std::vector<float>& x, std::size_t rows, std::size_t cols, std::size_t kk) {
  std::vector<float> v(rows * kk);
  std::vector<std::int64_t> ix(rows * kk);
  k::topk(x.data(), rows, cols, kk, v.data(), ix.data());
  for (std::size_t r = 0; r < rows; ++r) {
    std::vector<std::int64_t> order(cols);
    std::iota(order.begin(), order.end(), 0);
    const float* row = x.data() + r * cols;
    std::stable_sort(order.begin(), order.end(), [row](std::int64_t a, std::int64_t b) {
      const bool na = std::isnan(row[a]), nb = std::isnan(row[b]);
      if (na != nb) return na;
      if (na) return false;
      return row[a] > row[b];
    });
    for (std::size_t i = 0; i < kk; ++i) {
      ASSERT_EQ(ix[r * kk + i], order[i]) << "row " << r << " rank " << i << " k=" << kk;
      const float want = row[order[i]];
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(v[r * kk + i]));
      } else {
        ASSERT_EQ(v[r * kk + i], want);
      }
    }
  }
}

TEST(KernelTopK, MatchesStableSortOverShapesBothPaths) {
  const std::size_t shapes[][3] = {{1, 1, 1},  {1, 5, 5},    {3, 7, 2},     {2, 31, 31},
                                   {4, 1000, 1}, {4, 1000, 5}, {3, 1000, 32}, {3, 1000, 33},
                                   {2, 4099, 100}, {5, 64, 64}};
  std::uint32_t seed = 50;
  for (const auto& s : shapes) {
    check_topk(random_floats(s[0] * s[1], ++seed), s[0], s[1], s[2]);
  }
}

TEST(KernelTopK, TiesGoToLowerIndexAndNaNRanksFirst) {
  std::mt19937 rng(7);
  std::vector<float> x(3 * 200);
  for (auto& v : x) v = static_cast<float>(rng() % 5);  // many ties
  x[17] = nan_f;
  x[250] = nan_f;
  x[251] = -inf;
  x[252] = inf;
  x[253] = nan_f;
  for (const std::size_t kk : {1, 3, 10, 40, 200}) check_topk(x, 3, 200, kk);
}

TEST(KernelTopK, SortedRowsAndHugeKTakeTheFallbackPathsCorrectly) {
  // Ascending rows insert every element: the insertion budget runs out and selection takes
  // over mid-row. Descending rows never insert. k > 1024 always selects.
  const std::size_t cols = 3000;
  std::vector<float> x(3 * cols);
  for (std::size_t j = 0; j < cols; ++j) {
    x[j] = static_cast<float>(j);                    // ascending
    x[cols + j] = static_cast<float>(cols - j);      // descending
    x[2 * cols + j] = static_cast<float>(j % 17);    // sawtooth with ties
  }
  for (const std::size_t kk : {1, 5, 64, 100, 1024, 1025, 2999, 3000}) check_topk(x, 3, cols, kk);
}

TEST(KernelTopK, RejectsKBeyondRowLength) {
  const std::vector<float> x(4);
  std::vector<float> v(5);
  std::vector<std::int64_t> ix(5);
  EXPECT_THROW(k::topk(x.data(), 1, 4, 5, v.data(), ix.data()), std::invalid_argument);
  k::topk(x.data(), 1, 4, 0, v.data(), ix.data());  // k = 0 is a no-op
}

// ---- conversions ------------------------------------------------------------------------

// Straightforward reference: exact double arithmetic and nearbyint (round half to even).
std::uint16_t ref_f16(float f) {
  const std::uint32_t u = math::float_to_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  if (std::isnan(f)) return sign | 0x7e00u;
  if (std::isinf(f)) return sign | 0x7c00u;
  const double a = std::fabs(static_cast<double>(f));
  if (a < std::ldexp(1.0, -14)) {  // half subnormal range (rounding may reach the min normal)
    return sign | static_cast<std::uint16_t>(std::nearbyint(a / std::ldexp(1.0, -24)));
  }
  int e = 0;
  const double m = std::frexp(a, &e);  // a = m·2^e, m in [0.5, 1)
  e -= 1;                              // a = (2m)·2^e, 2m in [1, 2)
  double q = std::nearbyint((2 * m - 1) * 1024);
  if (q == 1024) {
    q = 0;
    ++e;
  }
  if (e + 15 >= 31) return sign | 0x7c00u;
  return sign | static_cast<std::uint16_t>(((e + 15) << 10) | static_cast<int>(q));
}

std::uint16_t ref_bf16(float f) {
  const std::uint32_t u = math::float_to_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  if (std::isnan(f)) return 0;  // checked separately
  const double a = std::fabs(static_cast<double>(f));
  if (a == 0) return sign;
  if (a < std::ldexp(1.0, -126)) {
    return sign | static_cast<std::uint16_t>(std::nearbyint(a / std::ldexp(1.0, -133)));
  }
  if (std::isinf(a)) return sign | 0x7f80u;
  int e = 0;
  const double m = std::frexp(a, &e);
  e -= 1;
  double q = std::nearbyint((2 * m - 1) * 128);
  if (q == 128) {
    q = 0;
    ++e;
  }
  if (e + 127 >= 255) return sign | 0x7f80u;
  return sign | static_cast<std::uint16_t>(((e + 127) << 7) | static_cast<int>(q));
}

std::vector<float> conversion_inputs() {
  std::vector<float> v = {0.0f,      -0.0f,         1.0f,        -1.0f,         65504.0f,
                          65519.99f, 65520.0f,      -65520.0f,   1e6f,          inf,
                          -inf,      6.1035156e-5f, 5.96e-8f,    2.98e-8f,      2.9802322e-8f,
                          8.94e-8f,  1e-30f,        1.0009766f,  1.0004883f,    1.0014648f,
                          3.4028235e38f, -3.4028235e38f, 1.1754944e-38f, 1e-45f, 0.1f};
  std::mt19937 rng(123);
  for (int i = 0; i < 200000; ++i) {
    float f = math::bits_to_float(static_cast<std::uint32_t>(rng()));
    if (!std::isnan(f)) v.push_back(f);
  }
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);
  for (int i = 0; i < 200000; ++i) v.push_back(dist(rng));
  for (int e = -30; e < 17; ++e) {
    for (int i = 0; i < 500; ++i) {
      v.push_back(std::ldexp(1.0f + static_cast<float>(i) / 1024.0f + 1.0f / 2048.0f, e));
    }
  }
  return v;
}

TEST(KernelConvert, F16RoundToNearestEvenMatchesReference) {
  const auto in = conversion_inputs();
  std::vector<std::uint16_t> out(in.size());
  k::convert_f32_to_f16(in.data(), out.data(), in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(out[i], ref_f16(in[i])) << "input " << in[i] << " bits " << std::hex
                                      << math::float_to_bits(in[i]);
  }
}

TEST(KernelConvert, F16AllValuesRoundTripExactly) {
  std::vector<std::uint16_t> all(65536);
  std::iota(all.begin(), all.end(), 0);
  std::vector<float> f(all.size());
  std::vector<std::uint16_t> back(all.size());
  k::convert_f16_to_f32(all.data(), f.data(), all.size());
  k::convert_f32_to_f16(f.data(), back.data(), f.size());
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const bool is_nan = (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0;
    if (is_nan) {
      ASSERT_TRUE(std::isnan(f[h])) << h;
      ASSERT_EQ(back[h], (h & 0x8000u) | 0x7e00u) << "NaN keeps its sign, becomes quiet";
    } else {
      // Value check independent of the bit trick: sign · mantissa · 2^exp.
      const int e = static_cast<int>((h >> 10) & 0x1f);
      const int m = static_cast<int>(h & 0x3ff);
      double ref = e == 0 ? std::ldexp(m, -24)
                   : e == 31 ? INFINITY
                             : std::ldexp(1024 + m, e - 25);
      if (h & 0x8000u) ref = -ref;
      ASSERT_EQ(f[h], static_cast<float>(ref)) << h;
      ASSERT_EQ(back[h], h);
    }
  }
}

// Float32 bits of half `h`, decoded field by field with integers only: the sign, exponent and
// mantissa move to their float32 places (subnormal halves through their exact value); a NaN
// keeps its payload and comes out quiet, as the host FPU and F16C give it.
std::uint32_t ref_f16_bits(std::uint32_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  if (e == 0x1fu) return sign | 0x7f800000u | (m << 13) | (m != 0 ? 0x00400000u : 0u);
  if (e != 0) return sign | ((e + 112) << 23) | (m << 13);
  return sign | math::float_to_bits(std::ldexp(static_cast<float>(m), -24));  // exact
}

TEST(KernelConvert, F16ToF32IsBitExactForAllHalvesNaNPayloadsIncluded) {
  // The shared __host__ __device__ function itself (what the GPU runs), then the vectorised
  // CPU loop built on it. A GPU's float multiply would return one canonical NaN, so every NaN
  // half (sign and payload) must go through integer operations to come out as checked here.
  std::vector<std::uint16_t> all(65536);
  std::iota(all.begin(), all.end(), 0);
  std::vector<float> widened(all.size());
  k::convert_f16_to_f32(all.data(), widened.data(), all.size());
  std::size_t nans = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const std::uint32_t want = ref_f16_bits(h);
    ASSERT_EQ(math::float_to_bits(math::f16_to_f32(static_cast<std::uint16_t>(h))), want)
        << std::hex << "half 0x" << h;
    ASSERT_EQ(math::float_to_bits(widened[h]), want) << std::hex << "half 0x" << h;
    if (math::is_nan(widened[h])) ++nans;
  }
  EXPECT_EQ(nans, 2u * 1023u);  // both signs, every nonzero payload
  // Spot checks written out by hand: signalling and quiet NaNs of both signs, and the infs.
  EXPECT_EQ(math::float_to_bits(math::f16_to_f32(0x7c01u)), 0x7fc02000u);
  EXPECT_EQ(math::float_to_bits(math::f16_to_f32(0xfd55u)), 0xffeaa000u);
  EXPECT_EQ(math::float_to_bits(math::f16_to_f32(0x7e00u)), 0x7fc00000u);
  EXPECT_EQ(math::float_to_bits(math::f16_to_f32(0xffffu)), 0xffffe000u);
  EXPECT_EQ(math::float_to_bits(math::f16_to_f32(0x7c00u)), 0x7f800000u);
  EXPECT_EQ(math::float_to_bits(math::f16_to_f32(0xfc00u)), 0xff800000u);
}

TEST(KernelConvert, Bf16RoundToNearestEvenMatchesReferenceAndKeepsNaN) {
  const auto in = conversion_inputs();
  std::vector<std::uint16_t> out(in.size());
  k::convert_f32_to_bf16(in.data(), out.data(), in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(out[i], ref_bf16(in[i])) << "input " << in[i];
  }
  // NaNs whose payload lives only in the low 16 bits must not become inf; sign survives.
  const std::vector<float> nans = {math::bits_to_float(0x7f800001u),
                                   math::bits_to_float(0xff800001u),
                                   math::bits_to_float(0x7fffffffu), nan_f};
  std::vector<std::uint16_t> nb(nans.size());
  k::convert_f32_to_bf16(nans.data(), nb.data(), nans.size());
  std::vector<float> nf(nans.size());
  k::convert_bf16_to_f32(nb.data(), nf.data(), nb.size());
  for (std::size_t i = 0; i < nans.size(); ++i) {
    EXPECT_TRUE(std::isnan(nf[i])) << i;
    EXPECT_EQ(std::signbit(nf[i]), std::signbit(nans[i])) << i;
  }
  // Every bf16 value widens exactly and narrows back to itself.
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = math::bf16_to_f32(static_cast<std::uint16_t>(h));
    ASSERT_EQ(math::float_to_bits(f), h << 16);
    if (!std::isnan(f)) {
      ASSERT_EQ(math::f32_to_bf16(f), h);
    }
  }
}

TEST(KernelConvert, ImageToFloatBothLayoutsManyChannelCounts) {
  const std::size_t shapes[][4] = {{1, 1, 1, 1}, {1, 1, 1, 3}, {2, 3, 5, 3},  {1, 7, 9, 4},
                                   {3, 4, 6, 1}, {2, 5, 3, 5}, {1, 33, 17, 3}};
  std::uint32_t seed = 60;
  for (const auto& s : shapes) {
    const std::size_t N = s[0], H = s[1], W = s[2], C = s[3];
    std::mt19937 rng(++seed);
    std::vector<std::uint8_t> img(N * H * W * C);
    for (auto& p : img) p = static_cast<std::uint8_t>(rng());
    img[0] = 0;
    img[img.size() - 1] = 255;
    const auto mean = random_floats(C, seed, 0.3f, 0.6f);
    const auto sd = random_floats(C, seed + 1, 0.2f, 0.3f);
    for (const auto layout : {k::image_layout::nhwc, k::image_layout::nchw}) {
      std::vector<float> out(img.size(), nan_f);
      k::image_u8_to_f32(img.data(), N, H, W, C, mean.data(), sd.data(), out.data(), layout);
      for (std::size_t n = 0; n < N; ++n) {
        for (std::size_t p = 0; p < H * W; ++p) {
          for (std::size_t c = 0; c < C; ++c) {
            const double ref = (img[(n * H * W + p) * C + c] / 255.0 - mean[c]) / sd[c];
            const std::size_t o = layout == k::image_layout::nhwc ? (n * H * W + p) * C + c
                                                                  : (n * C + c) * H * W + p;
            ASSERT_NEAR(out[o], ref, 1e-6 * (1 + std::fabs(ref)));
          }
        }
      }
    }
  }
}

// ---- CUDA launch guards (shared host code; the launchers throw what these decide) --------------

namespace limits = inferline::cuda::limits;

TEST(CudaLaunchLimits, BlocksForRoundsUpWithoutOverflowing) {
  EXPECT_EQ(limits::blocks_for(0, 64), 0u);
  EXPECT_EQ(limits::blocks_for(1, 64), 1u);
  EXPECT_EQ(limits::blocks_for(64, 64), 1u);
  EXPECT_EQ(limits::blocks_for(65, 64), 2u);
  constexpr std::size_t top = std::numeric_limits<std::size_t>::max();
  // (top + 63) / 64 would wrap to 0; the guard's form does not.
  EXPECT_EQ(limits::blocks_for(top, 64), top / 64 + 1);
  EXPECT_EQ(limits::blocks_for(top, 1), top);
}

TEST(CudaLaunchLimits, StridedLoopsFitExactlyUpToTheWrap) {
  // An index below `bound` advanced by `step` reaches at most bound - 1 + step.
  EXPECT_TRUE(limits::strided_fits(0, 1, 0));
  EXPECT_TRUE(limits::strided_fits(UINT_MAX - 255, 256, UINT_MAX));
  EXPECT_FALSE(limits::strided_fits(UINT_MAX - 254, 256, UINT_MAX));
  EXPECT_FALSE(limits::strided_fits(UINT_MAX, 256, UINT_MAX));
  EXPECT_FALSE(limits::strided_fits(10, 0, UINT_MAX)) << "a zero step never advances";
  EXPECT_FALSE(limits::strided_fits(0, std::size_t{UINT_MAX} + 2, UINT_MAX));
  // The same limit, checked by running the loop in 32-bit arithmetic from its last start.
  const std::uint32_t bound = UINT_MAX - 255, step = 256;
  std::uint32_t j = bound - 1;
  j += step;
  EXPECT_GT(j, bound - 1) << "no wrap at the largest bound strided_fits accepts";
}

TEST(CudaLaunchLimits, RowKernelsRejectColumnsWhoseLoopWouldWrap) {
  constexpr std::size_t widest = std::size_t{UINT_MAX} - (limits::max_block_threads - 1);
  EXPECT_TRUE(limits::row_kernel_fits(1, 384));
  EXPECT_TRUE(limits::row_kernel_fits(INT_MAX, widest));
  EXPECT_FALSE(limits::row_kernel_fits(INT_MAX, widest + 1));
  EXPECT_FALSE(limits::row_kernel_fits(INT_MAX, UINT_MAX)) << "accepted before the guard";
  EXPECT_FALSE(limits::row_kernel_fits(std::size_t{INT_MAX} + 1, 1));
}

TEST(CudaLaunchLimits, LinearRejectsSizesWhoseTileIndicesOverflowInt) {
  // The tiles of cuda/linear.cu: 64 x 64 outputs, 16-deep k slices.
  constexpr std::size_t tm = 64, tn = 64, tk = 16;
  constexpr std::size_t int_max = INT_MAX;
  EXPECT_TRUE(limits::linear_fits(32, 1536, 384, tm, tn, tk));
  EXPECT_TRUE(limits::linear_fits(1, int_max - 63, int_max - 15, tm, tn, tk));
  // n + tile_n - 1 and the last k0 + tile_k must stay within int.
  EXPECT_FALSE(limits::linear_fits(1, int_max - 62, 1, tm, tn, tk));
  EXPECT_FALSE(limits::linear_fits(1, int_max, 1, tm, tn, tk)) << "accepted before the guard";
  EXPECT_FALSE(limits::linear_fits(1, 1, int_max - 14, tm, tn, tk));
  // Row tiles go in grid.y (at most 65535 of them).
  EXPECT_TRUE(limits::linear_fits(65535 * tm, 1, 1, tm, tn, tk));
  EXPECT_FALSE(limits::linear_fits(65535 * tm + 1, 1, 1, tm, tn, tk));
}

TEST(CudaLaunchLimits, FailedChecksThrowLengthErrorNamingTheLauncher) {
  EXPECT_NO_THROW(limits::require_fits(true, "softmax"));
  try {
    limits::require_fits(false, "softmax");
    FAIL() << "expected std::length_error";
  } catch (const std::length_error& e) {
    EXPECT_STREQ(e.what(), "inferline::cuda::softmax: dimensions too large for one launch");
  }
  EXPECT_EQ(limits::checked_product(1 << 20, 1 << 20, "x"), std::size_t{1} << 40);
  try {
    (void)limits::checked_product(std::size_t{1} << 40, std::size_t{1} << 40, "bias_activation");
    FAIL() << "expected std::length_error";
  } catch (const std::length_error& e) {
    EXPECT_STREQ(e.what(),
                 "inferline::cuda::bias_activation: dimensions too large for one launch");
  }
}

}  // namespace
