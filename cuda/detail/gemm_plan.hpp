// How the own CUDA SGEMM covers y[m, n] = x[m, k]·W: which tile shape, how many k slices
// (split-K) so that serving-size batches still launch enough blocks, and which tile elements
// each thread stages and computes. No CUDA header (the index maths is INFERLINE_HD) so the host
// tests check the very plan and mapping the kernel uses.
#pragma once

#include <algorithm>
#include <cstddef>

#include "inferline/kernels/math.hpp"

namespace inferline::cuda::detail {

/// One tile shape of the own SGEMM kernel: a block computes a tile_m x tile_n output tile in
/// tile_k-deep slices, each thread a micro_m x micro_n register tile.
struct gemm_tile {
  int tile_m, tile_n, tile_k, micro_m, micro_n;
  /// Threads per block.
  constexpr int threads() const noexcept { return (tile_m / micro_m) * (tile_n / micro_n); }
};

/// Large products: 128 x 128 tiles, 8 x 8 outputs per thread, 256 threads.
inline constexpr gemm_tile wide_tile{128, 128, 8, 8, 8};
/// Small batches: 32 x 64 tiles, 4 x 4 outputs per thread, 128 threads (twice the blocks of
/// 64 x 64 tiles, eight times those of wide tiles).
inline constexpr gemm_tile narrow_tile{32, 64, 16, 4, 4};

/// Which tile the launcher uses and how k is split. Plain value.
struct gemm_plan {
  bool wide = true;         ///< wide_tile, else narrow_tile
  int splits = 1;           ///< k slices (grid.z); > 1 adds a reduction pass with the epilogue
  std::size_t k_chunk = 0;  ///< k per slice: a multiple of the tile's k depth, slices cover k
};

/// Most k slices of one product.
inline constexpr int max_splits = 16;

/// ⌈a / b⌉ for b > 0 without `a + b - 1`. Pure; thread-safe.
constexpr std::size_t ceil_div(std::size_t a, std::size_t b) noexcept {
  return a / b + (a % b != 0 ? 1 : 0);
}

/// Output blocks of `t` over an m x n product. Pure; thread-safe.
constexpr std::size_t tile_blocks(const gemm_tile& t, std::size_t m, std::size_t n) noexcept {
  return ceil_div(m, static_cast<std::size_t>(t.tile_m)) *
         ceil_div(n, static_cast<std::size_t>(t.tile_n));
}

/// The plan for an m x n x k product on a device with `sms` multiprocessors: wide tiles when
/// they already give every SM a block; otherwise narrow tiles, and when even those leave SMs
/// idle, k split into slices of at least 4 tile depths until about two blocks per SM run.
/// `force_narrow` picks narrow tiles (and at least two slices when k allows) whatever the
/// shape: the tests use it to cover the small-batch path. Pure; thread-safe.
constexpr gemm_plan plan_gemm(std::size_t m, std::size_t n, std::size_t k, int sms,
                              bool force_narrow = false) noexcept {
  gemm_plan p;
  const std::size_t target = static_cast<std::size_t>(sms > 0 ? sms : 1);
  if (!force_narrow && tile_blocks(wide_tile, m, n) >= target) {
    p.k_chunk = k;
    return p;
  }
  p.wide = false;
  const auto depth = static_cast<std::size_t>(narrow_tile.tile_k);
  const std::size_t blocks = tile_blocks(narrow_tile, m, n);
  const std::size_t k_tiles = ceil_div(k, depth);
  std::size_t splits = 1;
  if (blocks < target || force_narrow) {
    splits = std::max<std::size_t>(ceil_div(2 * target, blocks), force_narrow ? 2 : 1);
    splits = std::min<std::size_t>(splits, static_cast<std::size_t>(max_splits));
    splits = std::min<std::size_t>(splits, std::max<std::size_t>(1, k_tiles / 4));
  }
  // Whole tile depths per slice; recount so that no slice is empty.
  const std::size_t chunk_tiles = ceil_div(k_tiles, splits);
  p.k_chunk = k == 0 ? 0 : chunk_tiles * depth;
  p.splits = k == 0 ? 1 : static_cast<int>(ceil_div(k_tiles, chunk_tiles));
  return p;
}

/// `p` with k in one slice (no split-K, so no scratch memory for partial sums). Pure;
/// thread-safe.
constexpr gemm_plan single_slice(gemm_plan p, std::size_t k) noexcept {
  const auto depth = static_cast<std::size_t>(p.wide ? wide_tile.tile_k : narrow_tile.tile_k);
  p.splits = 1;
  p.k_chunk = ceil_div(k, depth) * depth;
  return p;
}

/// Tile row (or column) of a thread's i-th output along an axis shared by `lanes` threads, the
/// thread being lane `lane`: float4 runs of 4 consecutive indices, 4·lanes apart, so that a
/// quarter-warp's shared-memory reads hit 8 consecutive float4s. Pure; thread-safe.
INFERLINE_HD constexpr int fragment_index(int i, int lane, int lanes) {
  return (i / 4) * 4 * lanes + 4 * lane + i % 4;
}

/// Where load `e` of a tile stage lands: line (a row of the source matrix) and the first of
/// `width` (4 for float4 loads, else 1) consecutive elements along a line of `run` elements.
struct staged_element {
  int line;  ///< source line within the tile
  int at;    ///< first element along the line
};

/// The element(s) load `e` stages. Pure; thread-safe.
INFERLINE_HD constexpr staged_element stage_element(int e, int run, int width) {
  return staged_element{e / (run / width), (e % (run / width)) * width};
}

}  // namespace inferline::cuda::detail
