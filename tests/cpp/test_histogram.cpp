// histogram: bucket bounds, the 6.25% error bound, quantiles and cumulative counts on known
// distributions, and exact totals under concurrent writers and readers.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#include "inferline/histogram.hpp"
#include "stress_scale.hpp"

namespace {

using inferline::histogram;
using inferline::histogram_snapshot;
using inferline::testing::scaled;

constexpr std::uint64_t u64_max = std::numeric_limits<std::uint64_t>::max();

// Values worth checking: the linear range, its edge, every power of two and its neighbours,
// a geometric sweep, and the top of the range.
std::vector<std::uint64_t> sweep_values() {
  std::vector<std::uint64_t> v;
  for (std::uint64_t i = 0; i <= 40; ++i) v.push_back(i);
  for (unsigned e = 1; e < 64; ++e) {
    const std::uint64_t p = std::uint64_t{1} << e;
    v.push_back(p - 1);
    v.push_back(p);
    v.push_back(p + 1);
    v.push_back(p + p / 2);
  }
  for (std::uint64_t x = 17; x < u64_max / 3; x = x * 3 + 1) v.push_back(x);
  v.push_back(u64_max - 1);
  v.push_back(u64_max);
  return v;
}

TEST(Histogram, SmallValuesHaveTheirOwnBuckets) {
  for (std::uint64_t v = 0; v < histogram::sub_count; ++v) {
    EXPECT_EQ(histogram::bucket_of(v), v);
    EXPECT_EQ(histogram::lower_bound(v), v);
    EXPECT_EQ(histogram::upper_bound(v), v);
  }
  EXPECT_EQ(histogram::bucket_of(15), 15u);
  EXPECT_EQ(histogram::bucket_of(16), 16u);
  EXPECT_EQ(histogram::lower_bound(16), 16u);
}

TEST(Histogram, BucketsTileTheWholeRange) {
  EXPECT_EQ(histogram::lower_bound(0), 0u);
  for (std::size_t i = 0; i + 1 < histogram::bucket_count; ++i) {
    ASSERT_LE(histogram::lower_bound(i), histogram::upper_bound(i)) << i;
    ASSERT_EQ(histogram::upper_bound(i) + 1, histogram::lower_bound(i + 1)) << i;
    ASSERT_EQ(histogram::bucket_of(histogram::lower_bound(i)), i);
    ASSERT_EQ(histogram::bucket_of(histogram::upper_bound(i)), i);
  }
  const std::size_t last = histogram::bucket_count - 1;
  EXPECT_EQ(histogram::upper_bound(last), u64_max);
  EXPECT_EQ(histogram::bucket_of(u64_max), last);
  EXPECT_EQ(histogram::bucket_of(histogram::lower_bound(last)), last);
}

TEST(Histogram, EveryValueLiesWithinItsBucket) {
  for (std::uint64_t v : sweep_values()) {
    const std::size_t i = histogram::bucket_of(v);
    ASSERT_LT(i, histogram::bucket_count) << v;
    ASSERT_LE(histogram::lower_bound(i), v) << v;
    ASSERT_GE(histogram::upper_bound(i), v) << v;
  }
}

TEST(Histogram, RelativeErrorIsAtMostOneSixteenth) {
  // A bucket's width relative to its smallest value bounds the error of any estimate inside it.
  for (std::size_t i = histogram::sub_count; i < histogram::bucket_count; ++i) {
    const double lo = static_cast<double>(histogram::lower_bound(i));
    const double width =
        static_cast<double>(histogram::upper_bound(i) - histogram::lower_bound(i)) + 1;
    ASSERT_LE(width / lo, 0.0625 + 1e-12) << "bucket " << i;
  }
  // And for single recorded values, the reported quantile (bucket midpoint) is within it.
  for (std::uint64_t v : sweep_values()) {
    if (v == 0) continue;
    histogram h;
    h.record(v);
    h.record(u64_max);  // keeps the max cap from hiding the midpoint estimate
    const double est = h.snapshot().quantile(0.5);
    const double err = (est > static_cast<double>(v) ? est - static_cast<double>(v)
                                                     : static_cast<double>(v) - est) /
                       static_cast<double>(v);
    ASSERT_LE(err, 0.0625) << "value " << v << " estimated " << est;
  }
}

TEST(Histogram, EmptySnapshot) {
  histogram h;
  const histogram_snapshot s = h.snapshot();
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.sum, 0u);
  EXPECT_EQ(s.max, 0u);
  EXPECT_EQ(s.quantile(0.5), 0.0);
  EXPECT_EQ(s.mean(), 0.0);
  EXPECT_EQ(s.count_at_most(u64_max), 0u);
  EXPECT_EQ(s.counts.size(), histogram::bucket_count);
}

TEST(Histogram, QuantilesOfUniformOneToThousand) {
  histogram h;
  for (std::uint64_t v = 1; v <= 1000; ++v) h.record(v);
  const histogram_snapshot s = h.snapshot();
  EXPECT_EQ(s.count, 1000u);
  EXPECT_EQ(s.sum, 500'500u);
  EXPECT_EQ(s.max, 1000u);
  EXPECT_DOUBLE_EQ(s.mean(), 500.5);
  for (double q : {0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999}) {
    const double exact = q * 1000.0;
    EXPECT_NEAR(s.quantile(q), exact, exact * 0.0625) << "q=" << q;
  }
  EXPECT_EQ(s.quantile(0.0), 1.0);     // the smallest value, exact below 16
  EXPECT_EQ(s.quantile(1.0), 1000.0);  // capped by the recorded max
  EXPECT_EQ(s.quantile(-1.0), 1.0);    // clamped
  EXPECT_EQ(s.quantile(2.0), 1000.0);
}

TEST(Histogram, QuantilesBelowSixteenAreExact) {
  histogram h;
  for (std::uint64_t v = 0; v < 16; ++v) {
    for (int k = 0; k < 10; ++k) h.record(v);
  }
  const histogram_snapshot s = h.snapshot();
  EXPECT_EQ(s.quantile(0.05), 0.0);
  EXPECT_EQ(s.quantile(0.5), 7.0);   // rank 80 is the last 7
  EXPECT_EQ(s.quantile(0.51), 8.0);  // rank 82
  EXPECT_EQ(s.quantile(1.0), 15.0);
}

TEST(Histogram, QuantilesOfTwoPointDistribution) {
  histogram h;
  for (int i = 0; i < 900; ++i) h.record(1'000);       // 1 us
  for (int i = 0; i < 100; ++i) h.record(1'000'000);   // 1 ms
  const histogram_snapshot s = h.snapshot();
  EXPECT_NEAR(s.quantile(0.5), 1'000.0, 1'000.0 * 0.0625);
  EXPECT_NEAR(s.quantile(0.9), 1'000.0, 1'000.0 * 0.0625);
  EXPECT_NEAR(s.quantile(0.91), 1'000'000.0, 1'000'000.0 * 0.0625);
  EXPECT_NEAR(s.quantile(0.99), 1'000'000.0, 1'000'000.0 * 0.0625);
  EXPECT_LE(s.quantile(0.99), 1'000'000.0 * (1 + 0.0625));
}

TEST(Histogram, CountAtMostCountsWholeBuckets) {
  histogram h;
  for (std::uint64_t v = 1; v <= 1000; ++v) h.record(v);
  const histogram_snapshot s = h.snapshot();
  auto values_at_most = [](std::uint64_t b) -> std::uint64_t { return b >= 1000 ? 1000 : b; };
  EXPECT_EQ(s.count_at_most(0), 0u);
  EXPECT_EQ(s.count_at_most(15), 15u);
  EXPECT_EQ(s.count_at_most(1023), 1000u);
  EXPECT_EQ(s.count_at_most(u64_max), 1000u);
  for (std::uint64_t b = 0; b <= 1100; ++b) {
    // Exact at a bucket's upper bound; otherwise only the buckets entirely below `b` count.
    const std::size_t i = histogram::bucket_of(b);
    const std::uint64_t want = histogram::upper_bound(i) == b
                                   ? values_at_most(b)
                                   : values_at_most(histogram::lower_bound(i) - 1);
    ASSERT_EQ(s.count_at_most(b), want) << "bound " << b;
    ASSERT_LE(s.count_at_most(b), values_at_most(b));
  }
}

TEST(Histogram, ExtremeValues) {
  histogram h;
  h.record(0);
  h.record(u64_max);
  const histogram_snapshot s = h.snapshot();
  EXPECT_EQ(s.count, 2u);
  EXPECT_EQ(s.max, u64_max);
  EXPECT_EQ(s.counts[0], 1u);
  EXPECT_EQ(s.counts[histogram::bucket_count - 1], 1u);
  EXPECT_EQ(s.quantile(0.5), 0.0);
  EXPECT_NEAR(s.quantile(1.0), static_cast<double>(u64_max), static_cast<double>(u64_max) * 0.0625);
  EXPECT_EQ(s.count_at_most(u64_max - 1), 1u);
  EXPECT_EQ(s.count_at_most(u64_max), 2u);
}

TEST(Histogram, ConcurrentRecordsAreAllCounted) {
  const std::size_t threads = 4;
  const std::uint64_t per_thread = scaled(400'000, 100'000);
  histogram h;
  std::atomic<bool> go{false};
  std::atomic<bool> done{false};
  std::vector<std::thread> writers;
  for (std::size_t t = 0; t < threads; ++t) {
    writers.emplace_back([&, t] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      // Thread t records t+1, t+1+threads, ...: distinct values spread over many buckets.
      for (std::uint64_t i = 0; i < per_thread; ++i) h.record(i * threads + t + 1);
    });
  }
  // A reader takes snapshots while the writers go on: counts only ever grow. The writers start
  // once the reader has taken its first snapshot, so the two always overlap however the threads
  // are scheduled (on a loaded machine the writers could otherwise finish before it runs).
  std::atomic<bool> reading{false};
  std::thread reader([&] {
    std::uint64_t last = 0;
    do {
      const histogram_snapshot s = h.snapshot();
      EXPECT_GE(s.count, last);
      std::uint64_t total = 0;
      for (std::uint64_t c : s.counts) total += c;
      EXPECT_EQ(total, s.count);
      last = s.count;
      reading.store(true, std::memory_order_release);
    } while (!done.load(std::memory_order_acquire));
  });
  while (!reading.load(std::memory_order_acquire)) std::this_thread::yield();
  go.store(true, std::memory_order_release);
  for (std::thread& t : writers) t.join();
  done.store(true, std::memory_order_release);
  reader.join();

  const std::uint64_t n = threads * per_thread;
  const histogram_snapshot s = h.snapshot();
  EXPECT_EQ(s.count, n);
  EXPECT_EQ(s.sum, n * (n + 1) / 2);  // the values recorded are exactly 1..n
  EXPECT_EQ(s.max, n);
  EXPECT_EQ(s.count_at_most(u64_max), n);
  EXPECT_NEAR(s.quantile(0.5), n / 2.0, n / 2.0 * 0.0625);
}

}  // namespace
