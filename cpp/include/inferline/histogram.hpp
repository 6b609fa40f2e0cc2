// Lock-free log-linear histogram: 16 linear sub-buckets per power of two, atomic counts.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace inferline {

/// A consistent-enough copy of a histogram, taken without stopping writers.
struct histogram_snapshot {
  std::vector<std::uint64_t> counts;  ///< per bucket, index as in `histogram::bucket_of`
  std::uint64_t count = 0;            ///< total recorded values (sum of counts)
  std::uint64_t sum = 0;              ///< sum of recorded values
  std::uint64_t max = 0;              ///< largest recorded value

  /// Value at quantile `q` in [0, 1] (bucket midpoint, capped by `max`); 0 when empty.
  double quantile(double q) const noexcept;
  /// Number of values <= `bound` (bucket granularity: counts whole buckets whose upper
  /// bound is <= `bound`). Used for cumulative Prometheus buckets.
  std::uint64_t count_at_most(std::uint64_t bound) const noexcept;
  /// Mean of the recorded values; 0 when empty.
  double mean() const noexcept { return count ? static_cast<double>(sum) / count : 0.0; }
};

/// Records unsigned 64-bit values (nanoseconds, batch sizes) with <= 6.25% relative error.
/// Values below 16 are exact. Writers use relaxed atomic increments and never block; readers
/// copy the buckets while writers go on. Thread-safe.
class histogram {
 public:
  static constexpr unsigned sub_bits = 4;
  static constexpr std::size_t sub_count = std::size_t{1} << sub_bits;
  static constexpr std::size_t bucket_count = (64 - sub_bits + 1) * sub_count;

  /// Adds one value. Thread-safe, wait-free apart from the max update.
  void record(std::uint64_t value) noexcept {
    buckets_[bucket_of(value)].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(value, std::memory_order_relaxed);
    std::uint64_t seen = max_.load(std::memory_order_relaxed);
    while (value > seen &&
           !max_.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
    }
  }

  /// Copies the current state. Thread-safe; concurrent records may or may not be included.
  histogram_snapshot snapshot() const;

  /// Bucket index of `value`.
  static constexpr std::size_t bucket_of(std::uint64_t value) noexcept {
    if (value < sub_count) return static_cast<std::size_t>(value);
    const unsigned e = 63u - static_cast<unsigned>(__builtin_clzll(value));  // >= sub_bits
    const std::uint64_t sub = (value >> (e - sub_bits)) & (sub_count - 1);
    return static_cast<std::size_t>((e - sub_bits + 1) * sub_count + sub);
  }

  /// Smallest value that lands in bucket `index`.
  static constexpr std::uint64_t lower_bound(std::size_t index) noexcept {
    if (index < sub_count) return index;
    const unsigned e = static_cast<unsigned>(index / sub_count) + sub_bits - 1;
    const std::uint64_t sub = index % sub_count;
    return (sub_count + sub) << (e - sub_bits);
  }

  /// Largest value that lands in bucket `index`.
  static constexpr std::uint64_t upper_bound(std::size_t index) noexcept {
    if (index + 1 >= bucket_count) return ~std::uint64_t{0};
    return lower_bound(index + 1) - 1;
  }

 private:
  std::array<std::atomic<std::uint64_t>, bucket_count> buckets_{};
  std::atomic<std::uint64_t> sum_{0};
  std::atomic<std::uint64_t> max_{0};
};

static_assert(histogram::bucket_of(15) == 15, "values below 16 are exact");
static_assert(histogram::bucket_of(16) == 16, "the log range starts right after the linear one");
static_assert(histogram::lower_bound(histogram::bucket_of(1000)) <= 1000 &&
                  histogram::upper_bound(histogram::bucket_of(1000)) >= 1000,
              "a value lies within its bucket's bounds");
static_assert(histogram::bucket_of(~std::uint64_t{0}) == histogram::bucket_count - 1,
              "the largest value lands in the last bucket");

}  // namespace inferline
