// The CUDA GEMM paths (cuBLASLt, the own kernel's wide tiles, its small-batch split-K path)
// against the CPU linear (OpenBLAS sgemm + epilogue), and the host-side plan that picks the
// own kernel's tiles and k slices. Device tests skip without a CUDA build or device; the plan
// and the size guards run everywhere.
//
// Tolerance GPU vs CPU: |gpu - cpu| ≤ 2e-5 · (1 + |bias| + Σ_k |x·w|) (float32 sums in another
// order, FMA contraction; no TF32 anywhere).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "detail/gemm_plan.hpp"
#include "inferline/build_info.hpp"
#include "inferline/kernels/cuda_api.hpp"
#include "inferline/kernels/linear.hpp"

namespace {

namespace k = inferline::kernels;
namespace d = inferline::cuda::detail;

#define INFERLINE_SKIP_WITHOUT_GPU()                                             \
  do {                                                                           \
    if (!k::have_cuda) GTEST_SKIP() << "built without CUDA";                     \
    if (inferline::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";   \
  } while (0)

// ---- the plan (host) ----------------------------------------------------------------------

TEST(CudaGemmPlan, SlicesCoverKInWholeTileDepths) {
  for (const std::size_t m : {1u, 16u, 100u, 512u, 4096u}) {
    for (const std::size_t n : {1u, 384u, 1152u, 1536u}) {
      for (const std::size_t kk : {0u, 1u, 15u, 16u, 17u, 384u, 1536u, 5000u}) {
        for (const bool force : {false, true}) {
          const d::gemm_plan p = d::plan_gemm(m, n, kk, 132, force);
          const auto& t = p.wide ? d::wide_tile : d::narrow_tile;
          ASSERT_GE(p.splits, 1);
          ASSERT_LE(p.splits, d::max_splits);
          if (p.splits > 1) {
            ASSERT_FALSE(p.wide) << "split-K runs narrow tiles only";
            EXPECT_EQ(p.k_chunk % static_cast<std::size_t>(t.tile_k), 0u);
            // Every slice holds at least one k; together they cover k exactly once.
            EXPECT_LT((static_cast<std::size_t>(p.splits) - 1) * p.k_chunk, kk);
            EXPECT_GE(static_cast<std::size_t>(p.splits) * p.k_chunk, kk);
          } else {
            EXPECT_GE(p.k_chunk, kk) << "one slice must cover k";
          }
          if (force) {
            EXPECT_FALSE(p.wide);
          }
        }
      }
    }
  }
}

TEST(CudaGemmPlan, ServingBatchesFillTheDevice) {
  // MiniLM's GEMMs for 4..64 short sentences: wide tiles alone would leave most of 132 SMs
  // idle; the plan launches at least one block per SM (k allowing four tile depths per slice).
  const int sms = 132;
  for (const std::size_t m : {64u, 128u, 512u}) {
    for (const auto& nk : {std::array<std::size_t, 2>{384, 384}, {1152, 384}, {1536, 384},
                           {384, 1536}}) {
      const d::gemm_plan p = d::plan_gemm(m, nk[0], nk[1], sms);
      EXPECT_FALSE(p.wide) << m << "x" << nk[0];
      const std::size_t blocks = d::tile_blocks(d::narrow_tile, m, nk[0]) *
                                 static_cast<std::size_t>(p.splits);
      const std::size_t max_splits_for_k = nk[1] / (4 * d::narrow_tile.tile_k);
      EXPECT_TRUE(blocks >= static_cast<std::size_t>(sms) ||
                  static_cast<std::size_t>(p.splits) >= std::min<std::size_t>(
                                                            max_splits_for_k, d::max_splits))
          << m << "x" << nk[0] << "x" << nk[1] << ": " << blocks << " blocks";
    }
  }
  // A large product keeps the wide register-blocked tiles and no split.
  const d::gemm_plan big = d::plan_gemm(8192, 1536, 384, sms);
  EXPECT_TRUE(big.wide);
  EXPECT_EQ(big.splits, 1);
}

// Every output of a tile belongs to exactly one (thread, register) of the kernel's mapping.
void expect_fragments_cover(int extent, int micro) {
  const int lanes = extent / micro;
  std::vector<int> owners(static_cast<std::size_t>(extent), 0);
  for (int lane = 0; lane < lanes; ++lane) {
    for (int i = 0; i < micro; ++i) {
      const int at = d::fragment_index(i, lane, lanes);
      ASSERT_GE(at, 0);
      ASSERT_LT(at, extent);
      ++owners[static_cast<std::size_t>(at)];
      if (i % 4 == 0) {
        EXPECT_EQ(at % 4, 0) << "float4 runs start 16-byte aligned";
      }
    }
  }
  for (int at = 0; at < extent; ++at) EXPECT_EQ(owners[static_cast<std::size_t>(at)], 1) << at;
}

// Every element of a staged tile is loaded exactly once, by scalar or float4 loads.
void expect_stage_covers(int lines, int run, int width) {
  std::vector<int> loads(static_cast<std::size_t>(lines * run), 0);
  for (int e = 0; e < lines * run / width; ++e) {
    const d::staged_element s = d::stage_element(e, run, width);
    ASSERT_LT(s.line, lines);
    ASSERT_LE(s.at + width, run);
    for (int q = 0; q < width; ++q) ++loads[static_cast<std::size_t>(s.line * run + s.at + q)];
  }
  for (std::size_t i = 0; i < loads.size(); ++i) EXPECT_EQ(loads[i], 1) << i;
}

TEST(CudaGemmPlan, ThreadFragmentsCoverEachTileOnce) {
  for (const auto& t : {d::wide_tile, d::narrow_tile}) {
    expect_fragments_cover(t.tile_m, t.micro_m);
    expect_fragments_cover(t.tile_n, t.micro_n);
    for (const int width : {1, 4}) {
      expect_stage_covers(t.tile_m, t.tile_k, width);  // x: lines along k
      expect_stage_covers(t.tile_n, t.tile_k, width);  // W [n, k]: lines along k
      expect_stage_covers(t.tile_k, t.tile_n, width);  // W [k, n]: lines along n
    }
  }
}

TEST(CudaGemmPlan, SingleSliceCoversKWithoutSplitting) {
  const d::gemm_plan split = d::plan_gemm(64, 384, 1536, 132);
  ASSERT_GT(split.splits, 1);
  const d::gemm_plan one = d::single_slice(split, 1536);
  EXPECT_EQ(one.splits, 1);
  EXPECT_EQ(one.wide, split.wide);
  EXPECT_EQ(one.k_chunk, 1536u);
  EXPECT_EQ(d::single_slice(split, 17).k_chunk, 32u) << "whole tile depths";
  EXPECT_EQ(d::single_slice(split, 0).k_chunk, 0u);
}

TEST(CudaGemmPlan, TileShapesMatchTheirThreadCounts) {
  EXPECT_EQ(d::wide_tile.threads(), 256);
  EXPECT_EQ(d::narrow_tile.threads(), 128);
  EXPECT_EQ(d::tile_blocks(d::wide_tile, 129, 128), 2u);
  EXPECT_EQ(d::ceil_div(SIZE_MAX, 2), SIZE_MAX / 2 + 1);  // no `a + b - 1` overflow
}

#ifdef INFERLINE_HAVE_CUDA
namespace cu = inferline::cuda;

TEST(CudaGemm, TooLargeDimensionsThrowBeforeLaunching) {
  // The own kernel's int indices: m beyond INT_MAX is refused before any CUDA call, so this
  // runs without a device too.
  const std::size_t huge = std::size_t{1} << 31;
  try {
    cu::linear_with(cu::gemm_path::own_wide, nullptr, nullptr, nullptr, nullptr, huge, 8, 8,
                    k::weight_layout::out_in, k::activation::none);
    FAIL() << "expected std::length_error";
  } catch (const std::length_error& e) {
    EXPECT_STREQ(e.what(), "inferline::cuda::linear: dimensions too large for one launch");
  }
}

TEST(CudaGemm, CublasltStatusSaysWhatWasFound) {
  const std::string s = cu::cublaslt_status();
  if (cu::cublaslt_available()) {
    EXPECT_EQ(s.rfind("loaded ", 0), 0u) << s;
  } else {
    EXPECT_TRUE(s.rfind("no cuBLASLt found (tried libcublasLt.so.13", 0) == 0 ||
                s.rfind("disabled by INFERLINE_CUBLASLT=", 0) == 0)
        << s;
  }
}

struct gemm_case {
  std::size_t m, n, k;
};

/// x [m, k], w [n, k] (or [k, n]: same count) and bias [n] of one case, uniform in [-1, 1).
struct gemm_data {
  std::vector<float> x, w, b;
};

gemm_data random_data(const gemm_case& c, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto fill = [&](std::size_t count) {
    std::vector<float> v(count);
    std::generate(v.begin(), v.end(), [&] { return dist(rng); });
    return v;
  };
  gemm_data d;
  d.x = fill(c.m * c.k);
  d.w = fill(c.n * c.k);
  d.b = fill(c.n);
  return d;
}

// Runs `path` on every case, layout, activation and bias choice against the CPU.
void expect_path_matches_cpu(cu::gemm_path path, const std::vector<gemm_case>& cases,
                             std::size_t x_offset = 0, bool use_workspace = true) {
  std::uint32_t seed = 7;
  cu::gemm_workspace ws;
  void* stream = cu::stream_create();
  for (const gemm_case& c : cases) {
    const auto [x, w, b] = random_data(c, ++seed);
    // x_offset > 0 starts x off a 16-byte boundary: the kernel must take its scalar loads.
    cu::device_buffer<float> dx(x.size() + x_offset), dw(w.data(), w.size()), db(b.data(), c.n);
    cu::copy_to_device(dx.data() + x_offset, x.data(), x.size() * sizeof(float));
    cu::device_buffer<float> dy(c.m * c.n);
    for (const auto layout : {k::weight_layout::out_in, k::weight_layout::in_out}) {
      for (const auto act : {k::activation::none, k::activation::relu, k::activation::gelu,
                             k::activation::gelu_tanh}) {
        for (const bool with_bias : {true, false}) {
          std::vector<float> ref(c.m * c.n);
          k::linear(x.data(), w.data(), with_bias ? b.data() : nullptr, ref.data(), c.m, c.n,
                    c.k, layout, act);
          cu::linear_with(path, dx.data() + x_offset, dw.data(), with_bias ? db.data() : nullptr,
                          dy.data(), c.m, c.n, c.k, layout, act, stream,
                          use_workspace ? &ws : nullptr);
          cu::stream_synchronize(stream);
          std::vector<float> got(c.m * c.n);
          dy.download(got.data());
          for (std::size_t i = 0; i < c.m; ++i) {
            for (std::size_t j = 0; j < c.n; ++j) {
              double mag = 1.0 + (with_bias ? std::fabs(b[j]) : 0.0);
              for (std::size_t p = 0; p < c.k; ++p) {
                const float wv =
                    layout == k::weight_layout::out_in ? w[j * c.k + p] : w[p * c.n + j];
                mag += std::fabs(x[i * c.k + p] * wv);
              }
              ASSERT_NEAR(got[i * c.n + j], ref[i * c.n + j], 2e-5 * mag)
                  << c.m << "x" << c.n << "x" << c.k << " at (" << i << "," << j << ")";
            }
          }
        }
      }
    }
  }
  cu::stream_destroy(stream);
}

// Odd shapes (partial tiles, k not a multiple of 4 or of the tile depth) and serving shapes.
const std::vector<gemm_case> shapes = {{1, 1, 1},     {3, 5, 7},      {33, 65, 17},
                                       {130, 129, 9}, {64, 384, 384}, {200, 1152, 384},
                                       {17, 384, 1536}};

TEST(CudaGemm, OwnWideTilesMatchCpu) {
  INFERLINE_SKIP_WITHOUT_GPU();
  expect_path_matches_cpu(cu::gemm_path::own_wide, shapes);
}

TEST(CudaGemm, OwnSmallBatchSplitKMatchesCpu) {
  INFERLINE_SKIP_WITHOUT_GPU();
  expect_path_matches_cpu(cu::gemm_path::own_narrow, shapes);
}

TEST(CudaGemm, OwnKernelChosenByShapeMatchesCpu) {
  INFERLINE_SKIP_WITHOUT_GPU();
  expect_path_matches_cpu(cu::gemm_path::own, shapes);
}

TEST(CudaGemm, UnalignedInputTakesScalarLoads) {
  INFERLINE_SKIP_WITHOUT_GPU();
  expect_path_matches_cpu(cu::gemm_path::own_wide, {{40, 72, 64}}, 1);
  expect_path_matches_cpu(cu::gemm_path::own_narrow, {{40, 72, 256}}, 1);
}

TEST(CudaGemm, CublasltMatchesCpu) {
  INFERLINE_SKIP_WITHOUT_GPU();
  if (!cu::cublaslt_available()) GTEST_SKIP() << cu::cublaslt_status();
  expect_path_matches_cpu(cu::gemm_path::cublaslt, shapes);
  expect_path_matches_cpu(cu::gemm_path::automatic, shapes);
  // x 4 bytes past an allocation: the heuristic is told the real alignment.
  expect_path_matches_cpu(cu::gemm_path::cublaslt, {{40, 72, 64}}, 1);
}

TEST(CudaGemm, ForcedCublasltWithoutItSaysWhy) {
  INFERLINE_SKIP_WITHOUT_GPU();
  if (cu::cublaslt_available()) GTEST_SKIP() << "cuBLASLt is available here";
  cu::device_buffer<float> x(4), w(4), y(4);
  try {
    cu::linear_with(cu::gemm_path::cublaslt, x.data(), w.data(), nullptr, y.data(), 2, 2, 2,
                    k::weight_layout::out_in, k::activation::none);
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("inferline::cuda::linear: cuBLASLt unavailable (", 0),
              0u)
        << e.what();
  }
}

TEST(CudaGemm, WithoutWorkspaceEveryPathStillMatchesCpu) {
  // No workspace: no split-K and cuBLASLt without workspace; nothing is allocated.
  INFERLINE_SKIP_WITHOUT_GPU();
  const std::vector<gemm_case> serving = {{48, 384, 1536}, {17, 1152, 384}};
  expect_path_matches_cpu(cu::gemm_path::own_narrow, serving, 0, false);
  expect_path_matches_cpu(cu::gemm_path::automatic, serving, 0, false);
}
#endif  // INFERLINE_HAVE_CUDA

}  // namespace
