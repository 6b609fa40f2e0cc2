// Size guards of the CUDA launchers, as plain host C++ (no CUDA header) so that the host tests
// check the very checks the launchers run: ceil-divisions that cannot overflow, strided loops
// whose index cannot wrap, and products that must fit.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace inferline::cuda::limits {

/// Most threads per block of any launcher: row kernels' `j += blockDim.x` loops step by at
/// most this much.
inline constexpr std::size_t max_block_threads = 1024;

/// Largest grid.y (and grid.z) a launch may ask for.
inline constexpr std::size_t max_grid_y = 65535;

/// Largest grid.x a launch may ask for.
inline constexpr std::size_t max_grid_x = 0x7fffffffu;

/// ⌈count / per⌉ for per > 0, with no `count + per - 1` that could overflow. Pure; thread-safe.
constexpr std::size_t blocks_for(std::size_t count, std::size_t per) noexcept {
  return count / per + (count % per != 0 ? 1 : 0);
}

/// True when an index below `bound`, advanced by `step` (≥ 1), stays ≤ `max`, the largest value
/// of its type: loops `for (i = start; i < bound; i += step)` with start < step then end
/// without wrapping, and `bound + step - 1` (a rounded-up tile count) fits too. Pure;
/// thread-safe.
constexpr bool strided_fits(std::size_t bound, std::size_t step, std::size_t max) noexcept {
  return step >= 1 && step - 1 <= max && bound <= max - (step - 1);
}

/// True when a row kernel can walk `cols` columns with `unsigned j += blockDim.x` loops and run
/// `rows` blocks: rows ≤ INT_MAX and cols ≤ UINT_MAX - (max_block_threads - 1). Pure;
/// thread-safe.
constexpr bool row_kernel_fits(std::size_t rows, std::size_t cols) noexcept {
  return rows <= static_cast<std::size_t>(INT_MAX) &&
         strided_fits(cols, max_block_threads, UINT_MAX);
}

/// True when the tiled linear kernel's int indices cannot overflow for y[m, n] = x[m, k]·W:
/// m, n and k rounded up to their tiles fit in int (so do `k0 += tile_k` and every tile
/// origin), and the ⌈m / tile_m⌉ row tiles fit in grid.y. Pure; thread-safe.
constexpr bool linear_fits(std::size_t m, std::size_t n, std::size_t k, std::size_t tile_m,
                           std::size_t tile_n, std::size_t tile_k) noexcept {
  constexpr auto int_max = static_cast<std::size_t>(INT_MAX);
  return strided_fits(m, tile_m, int_max) && strided_fits(n, tile_n, int_max) &&
         strided_fits(k, tile_k, int_max) && blocks_for(m, tile_m) <= max_grid_y &&
         blocks_for(n, tile_n) <= max_grid_x;
}

/// Throws std::length_error "inferline::cuda::<launcher>: dimensions too large for one launch"
/// unless `ok`.
inline void require_fits(bool ok, const char* launcher) {
  if (!ok) {
    throw std::length_error(std::string("inferline::cuda::") + launcher +
                            ": dimensions too large for one launch");
  }
}

/// a·b, or std::length_error naming `launcher` when the product overflows size_t. Thread-safe.
inline std::size_t checked_product(std::size_t a, std::size_t b, const char* launcher) {
  std::size_t r = 0;
  require_fits(!__builtin_mul_overflow(a, b, &r), launcher);
  return r;
}

}  // namespace inferline::cuda::limits
