// Snapshots and quantiles of the lock-free histogram.
#include "inferline/histogram.hpp"

#include <algorithm>
#include <cmath>

namespace inferline {

histogram_snapshot histogram::snapshot() const {
  histogram_snapshot s;
  s.counts.resize(bucket_count);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < bucket_count; ++i) {
    s.counts[i] = buckets_[i].load(std::memory_order_relaxed);
    total += s.counts[i];
  }
  // The total is taken from the buckets copied, so quantiles are consistent with them even
  // while writers go on; sum and max may run slightly ahead.
  s.count = total;
  s.sum = sum_.load(std::memory_order_relaxed);
  s.max = max_.load(std::memory_order_relaxed);
  return s;
}

double histogram_snapshot::quantile(double q) const noexcept {
  if (count == 0) return 0.0;
  q = std::clamp(q, 0.0, 1.0);
  const auto rank = std::max<std::uint64_t>(
      1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count))));
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    seen += counts[i];
    if (seen >= rank) {
      const double lo = static_cast<double>(histogram::lower_bound(i));
      const double hi = static_cast<double>(histogram::upper_bound(i));
      const double mid = i < histogram::sub_count ? lo : lo + (hi - lo) / 2.0;
      return max ? std::min(mid, static_cast<double>(max)) : mid;
    }
  }
  return static_cast<double>(max);
}

std::uint64_t histogram_snapshot::count_at_most(std::uint64_t bound) const noexcept {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (histogram::upper_bound(i) > bound) break;
    n += counts[i];
  }
  return n;
}

}  // namespace inferline
