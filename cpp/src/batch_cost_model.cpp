// The online batch cost model of the latency_target policy (see batch_cost_model).
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "inferline/scheduler.hpp"

namespace inferline {

void batch_cost_model::observe(std::size_t n, std::int64_t ns) noexcept {
  if (n == 0) return;
  const auto x = static_cast<double>(n);
  auto y = static_cast<double>(std::max<std::int64_t>(ns, 0));
  std::lock_guard lock(write_mutex_);
  // The last publication was made under this mutex, so this relaxed read sees it.
  const cost_line current = line();
  if (current.measured) y = std::min(y, 8.0 * static_cast<double>(current.predict_ns(n)) + 1e3);
  constexpr double keep = 1.0 - 1.0 / memory_batches;
  sum_w_ = keep * sum_w_ + 1.0;
  sum_n_ = keep * sum_n_ + x;
  sum_nn_ = keep * sum_nn_ + x * x;
  sum_y_ = keep * sum_y_ + y;
  sum_ny_ = keep * sum_ny_ + x * y;
  const double mean_n = sum_n_ / sum_w_;
  const double mean_y = sum_y_ / sum_w_;
  const double var_n = sum_nn_ / sum_w_ - mean_n * mean_n;
  double a = 0;
  double b = 0;
  if (var_n >= 0.25) {
    a = (sum_ny_ / sum_w_ - mean_n * mean_y) / var_n;
    b = mean_y - a * mean_n;
  } else {
    a = sum_y_ / sum_n_;  // sizes hardly vary: proportional, over-predicts larger batches
  }
  if (a < 0) {
    a = 0;
    b = mean_y;
  } else if (b < 0) {
    b = 0;
    a = sum_ny_ / sum_nn_;
  }
  const auto bits = [](double v) {
    return static_cast<std::uint64_t>(std::bit_cast<std::uint32_t>(static_cast<float>(v)));
  };
  packed_.store(bits(a) << 32 | bits(b), std::memory_order_relaxed);
}

cost_line batch_cost_model::line() const noexcept {
  const std::uint64_t p = packed_.load(std::memory_order_relaxed);
  if (p == unmeasured) return {};
  return {std::bit_cast<float>(static_cast<std::uint32_t>(p >> 32)),
          std::bit_cast<float>(static_cast<std::uint32_t>(p)), true};
}

}  // namespace inferline
