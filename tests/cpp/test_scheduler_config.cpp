// The one table of limits and defaults, scheduler_config's check against it, and the finite
// check behind `finite=True`.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "inferline/finite.hpp"
#include "inferline/limits.hpp"
#include "inferline/scheduler_config.hpp"

namespace inferline {
namespace {

TEST(Limits, TableHoldsTheDocumentedValues) {
  EXPECT_EQ(limits.max_batch_size, 65536u);
  EXPECT_EQ(limits.max_queue_size, std::size_t{1} << 24);
  EXPECT_EQ(limits.max_priority_levels, 16u);
  EXPECT_EQ(limits.max_instances, 256u);
  EXPECT_EQ(limits.max_ndim, 32u);
  EXPECT_EQ(defaults.max_batch_size, 8u);
  EXPECT_DOUBLE_EQ(defaults.max_queue_delay_ms, 1.0);
  EXPECT_EQ(defaults.max_queue_size, 1024u);
  EXPECT_EQ(defaults.priority_levels, 1u);
  EXPECT_EQ(defaults.instances, 1u);
  EXPECT_DOUBLE_EQ(defaults.idle_spin_us, 0.0);
}

TEST(SchedulerConfig, DefaultsComeFromTheTableAndAreValid) {
  const scheduler_config c;
  EXPECT_EQ(c.max_batch_size, defaults.max_batch_size);
  EXPECT_EQ(c.max_queue_delay_ns, 1'000'000);
  EXPECT_EQ(c.max_queue_size, defaults.max_queue_size);
  EXPECT_EQ(c.priority_levels, defaults.priority_levels);
  EXPECT_EQ(c.instances, defaults.instances);
  EXPECT_EQ(c.idle_spin_ns, 0);
  EXPECT_NO_THROW(validate(c));
}

TEST(SchedulerConfig, EveryCountIsCheckedAtBothEnds) {
  struct field {
    std::size_t scheduler_config::*member;
    std::size_t limit;
    const char* name;
  };
  const field fields[] = {
      {&scheduler_config::max_batch_size, limits.max_batch_size, "max_batch_size"},
      {&scheduler_config::max_queue_size, limits.max_queue_size, "max_queue_size"},
      {&scheduler_config::priority_levels, limits.max_priority_levels, "priority_levels"},
      {&scheduler_config::instances, limits.max_instances, "instances"},
  };
  for (const field& f : fields) {
    scheduler_config c;
    c.*f.member = f.limit;
    // At its limit a count is accepted, unless the queue memory it needs is over its limit:
    // then the refusal names the memory (SchedulerAccounting tests the message).
    if (queue_memory_bytes(c) <= static_cast<double>(limits.max_queue_memory_bytes)) {
      EXPECT_NO_THROW(validate(c)) << f.name;
    } else {
      try {
        validate(c);
        ADD_FAILURE() << f.name << " at its limit needs more queue memory than allowed";
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("queue memory"), std::string::npos) << e.what();
      }
    }
    for (std::size_t bad : {std::size_t{0}, f.limit + 1}) {
      c.*f.member = bad;
      try {
        validate(c);
        ADD_FAILURE() << f.name << " = " << bad << " was accepted";
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(f.name), std::string::npos) << e.what();
      }
    }
  }
}

TEST(SchedulerConfig, NegativeDelaysAreRefused) {
  scheduler_config c;
  c.max_queue_delay_ns = -1;
  EXPECT_THROW(validate(c), std::invalid_argument);
  c.max_queue_delay_ns = 0;
  c.idle_spin_ns = -1;
  EXPECT_THROW(validate(c), std::invalid_argument);
}

template <class T>
std::vector<T> values(std::initializer_list<T> v) {
  return v;
}

TEST(Finite, Fp32AndFp64) {
  const float inf = std::numeric_limits<float>::infinity();
  auto f = values<float>({0.0f, -1.5f, 3e38f});
  EXPECT_TRUE(all_finite(f.data(), f.size(), float_kind::fp32));
  for (float bad : {inf, -inf, std::numeric_limits<float>::quiet_NaN()}) {
    f[1] = bad;
    EXPECT_FALSE(all_finite(f.data(), f.size(), float_kind::fp32));
  }
  auto d = values<double>({1.0, 1e308});
  EXPECT_TRUE(all_finite(d.data(), d.size(), float_kind::fp64));
  d[0] = std::nan("");
  EXPECT_FALSE(all_finite(d.data(), d.size(), float_kind::fp64));
  EXPECT_TRUE(all_finite(d.data(), d.size(), float_kind::none));  // not a float: no check
}

TEST(Finite, HalfAndBfloat16BitPatterns) {
  // fp16: exponent bits 0x7c00 all set is Inf/NaN; 0x7bff is the largest finite half.
  auto h = values<std::uint16_t>({0x3c00, 0x7bff, 0xfbff});
  EXPECT_TRUE(all_finite(h.data(), h.size(), float_kind::fp16));
  h[2] = 0x7c00;
  EXPECT_FALSE(all_finite(h.data(), h.size(), float_kind::fp16));
  // bf16: exponent bits 0x7f80; 0x7c00 is a large finite bfloat16.
  auto b = values<std::uint16_t>({0x3f80, 0x7c00, 0x7f7f});
  EXPECT_TRUE(all_finite(b.data(), b.size(), float_kind::bf16));
  b[0] = 0xffc0;  // NaN
  EXPECT_FALSE(all_finite(b.data(), b.size(), float_kind::bf16));
}

}  // namespace
}  // namespace inferline
