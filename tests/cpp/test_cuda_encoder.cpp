// The CUDA text encoder against the CPU encoder on random small BERTs (packed batches of mixed
// lengths, key chunks crossed, head sizes 32 and 64), its error paths, and the host/device
// shared math of its kernels (which sequence a packed token belongs to, the online softmax).
// Device tests skip without a CUDA build or device; the shared math runs everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "detail/encoder_math.hpp"
#include "inferline/build_info.hpp"
#include "inferline/encoder/encoder.hpp"
#include "inferline/kernels/cuda_api.hpp"

namespace {

namespace enc = inferline::encoder;
namespace d = inferline::cuda::detail;

#define INFERLINE_SKIP_WITHOUT_GPU()                                                      \
  do {                                                                                    \
    if (!inferline::kernels::have_cuda) GTEST_SKIP() << "built without CUDA";             \
    if (inferline::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";            \
  } while (0)

// ---- shared math (host) -------------------------------------------------------------------

TEST(CudaEncoderMath, SequenceOfFindsTheOwnerOfEveryToken) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> len(1, 9);
  for (int n : {1, 2, 3, 7, 64}) {
    std::vector<std::int32_t> offsets{0};
    for (int i = 0; i < n; ++i) offsets.push_back(offsets.back() + len(rng));
    for (int i = 0; i < n; ++i) {
      for (std::int32_t t = offsets[i]; t < offsets[i + 1]; ++t) {
        ASSERT_EQ(d::sequence_of(offsets.data(), n, t), i) << "n=" << n << " t=" << t;
      }
    }
  }
}

TEST(CudaEncoderMath, OnlineSoftmaxOverChunksEqualsSoftmax) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-30.0f, 30.0f);
  for (int len : {1, 2, 63, 64, 65, 200}) {
    for (int chunk : {1, 7, 64}) {
      std::vector<float> s(static_cast<std::size_t>(len)), v(static_cast<std::size_t>(len));
      for (int i = 0; i < len; ++i) {
        s[static_cast<std::size_t>(i)] = dist(rng);
        v[static_cast<std::size_t>(i)] = dist(rng) / 30.0f;
      }
      // Reference: max-subtracted softmax in double.
      double mx = s[0];
      for (float x : s) mx = std::max(mx, static_cast<double>(x));
      double den = 0.0;
      double num = 0.0;
      for (int i = 0; i < len; ++i) {
        const double e = std::exp(static_cast<double>(s[static_cast<std::size_t>(i)]) - mx);
        den += e;
        num += e * v[static_cast<std::size_t>(i)];
      }
      d::online_softmax sm;
      float acc = 0.0f;
      for (int k0 = 0; k0 < len; k0 += chunk) {
        const int end = std::min(len, k0 + chunk);
        float cmax = s[static_cast<std::size_t>(k0)];
        for (int j = k0; j < end; ++j) cmax = std::max(cmax, s[static_cast<std::size_t>(j)]);
        acc *= sm.rescale(cmax);
        for (int j = k0; j < end; ++j) {
          acc += sm.weight(s[static_cast<std::size_t>(j)]) * v[static_cast<std::size_t>(j)];
        }
      }
      EXPECT_NEAR(sm.sum, den, 1e-5 * den) << len << "/" << chunk;
      EXPECT_NEAR(acc / sm.sum, num / den, 1e-5) << len << "/" << chunk;
    }
  }
}

TEST(CudaEncoderMath, OnlineSoftmaxFirstChunkStartsFromZero) {
  d::online_softmax sm;
  EXPECT_EQ(sm.rescale(3.0f), 0.0f) << "e^(-inf) scales the empty accumulator";
  EXPECT_EQ(sm.max, 3.0f);
  EXPECT_FLOAT_EQ(sm.weight(3.0f), 1.0f);
  EXPECT_FLOAT_EQ(sm.rescale(1.0f), 1.0f) << "a lower chunk max keeps the running max";
}

// ---- random small BERTs -------------------------------------------------------------------

enc::encoder_config small_config(int hidden, int heads) {
  enc::encoder_config c;
  c.layers = 2;
  c.hidden = hidden;
  c.heads = heads;
  c.intermediate = 2 * hidden;
  c.vocab = 97;
  c.max_position = 160;
  c.max_seq_len = 150;
  c.max_batch_size = 8;
  return c;
}

std::vector<float> random_vec(std::size_t n, std::mt19937& rng, float scale, float base = 0.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = base + dist(rng);
  return v;
}

std::shared_ptr<const enc::encoder_weights> random_weights(const enc::encoder_config& c,
                                                           std::uint32_t seed) {
  std::mt19937 rng(seed);
  const auto h = static_cast<std::size_t>(c.hidden);
  const auto in = static_cast<std::size_t>(c.intermediate);
  const float ws = 1.0f / std::sqrt(static_cast<float>(c.hidden));
  auto w = std::make_shared<enc::encoder_weights>();
  w->word_emb = random_vec(static_cast<std::size_t>(c.vocab) * h, rng, 0.5f);
  w->pos_emb = random_vec(static_cast<std::size_t>(c.max_position) * h, rng, 0.2f);
  w->type_emb = random_vec(static_cast<std::size_t>(c.type_vocab) * h, rng, 0.1f);
  w->emb_ln_g = random_vec(h, rng, 0.1f, 1.0f);
  w->emb_ln_b = random_vec(h, rng, 0.1f);
  for (int i = 0; i < c.layers; ++i) {
    enc::encoder_layer_weights l;
    l.qkv_w = random_vec(3 * h * h, rng, ws);
    l.qkv_b = random_vec(3 * h, rng, 0.1f);
    l.attn_out_w = random_vec(h * h, rng, ws);
    l.attn_out_b = random_vec(h, rng, 0.1f);
    l.ln1_g = random_vec(h, rng, 0.1f, 1.0f);
    l.ln1_b = random_vec(h, rng, 0.1f);
    l.ffn_in_w = random_vec(in * h, rng, ws);
    l.ffn_in_b = random_vec(in, rng, 0.1f);
    l.ffn_out_w = random_vec(h * in, rng, 1.0f / std::sqrt(static_cast<float>(in)));
    l.ffn_out_b = random_vec(h, rng, 0.1f);
    l.ln2_g = random_vec(h, rng, 0.1f, 1.0f);
    l.ln2_b = random_vec(h, rng, 0.1f);
    w->layers.push_back(std::move(l));
  }
  return w;
}

struct packed {
  std::vector<std::int32_t> ids, offsets;
  int n() const { return static_cast<int>(offsets.size()) - 1; }
};

packed random_batch(const std::vector<int>& lengths, int vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  packed p;
  p.offsets.push_back(0);
  for (int len : lengths) {
    for (int t = 0; t < len; ++t) p.ids.push_back(id(rng));
    p.offsets.push_back(p.offsets.back() + len);
  }
  return p;
}

void expect_close_rows(const std::vector<float>& got, const std::vector<float>& ref, int n,
                       int hidden, const std::string& what) {
  for (int i = 0; i < n; ++i) {
    double dot = 0.0, ng = 0.0, nr = 0.0;
    for (int j = 0; j < hidden; ++j) {
      const double g = got[static_cast<std::size_t>(i * hidden + j)];
      const double r = ref[static_cast<std::size_t>(i * hidden + j)];
      dot += g * r;
      ng += g * g;
      nr += r * r;
      ASSERT_NEAR(g, r, 1e-3) << what << " row " << i << " col " << j;
    }
    EXPECT_GE(dot / std::sqrt(ng * nr), 0.9999) << what << " row " << i;
    EXPECT_NEAR(std::sqrt(ng), 1.0, 1e-5) << what << ": rows are L2-normalised";
  }
}

void expect_cuda_matches_cpu(const enc::encoder_config& c, const std::vector<int>& lengths,
                             std::uint32_t seed) {
  const auto w = random_weights(c, seed);
  auto cpu = enc::make_cpu_encoder(w, c, 1);
  auto gpu = enc::make_cuda_encoder(w, c, 0);
  const packed b = random_batch(lengths, c.vocab, seed + 1);
  const auto count = static_cast<std::size_t>(b.n() * c.hidden);
  std::vector<float> ref(count), got(count, -7.0f);
  cpu->run(b.ids.data(), b.offsets.data(), b.n(), ref.data());
  gpu->run(b.ids.data(), b.offsets.data(), b.n(), got.data());
  expect_close_rows(got, ref, b.n(), c.hidden,
                    "hidden " + std::to_string(c.hidden) + "/" + std::to_string(c.heads));
}

// ---- error paths that need no device ------------------------------------------------------

TEST(CudaEncoder, UnsupportedHeadSizeIsRefusedBeforeTouchingTheDevice) {
  if (!inferline::kernels::have_cuda) GTEST_SKIP() << "built without CUDA";
  const auto c = small_config(48, 3);  // head size 16
  const auto w = random_weights(c, 1);
  try {
    (void)enc::make_cuda_encoder(w, c, 0);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "text encoder (cuda): head size 16 unsupported (32 or 64)");
  }
}

TEST(CudaEncoder, MissingDeviceIsNamed) {
  if (!inferline::kernels::have_cuda) GTEST_SKIP() << "built without CUDA";
  const auto c = small_config(64, 2);
  const auto w = random_weights(c, 1);
  const int count = inferline::cuda_device_count();
  try {
    (void)enc::make_cuda_encoder(w, c, count);  // one past the last device
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "text encoder (cuda): no CUDA device " +
                                         std::to_string(count) + " (" + std::to_string(count) +
                                         " visible)");
  }
}

TEST(CudaEncoder, WeightsNotMatchingTheConfigAreRefused) {
  if (!inferline::kernels::have_cuda) GTEST_SKIP() << "built without CUDA";
  const auto c = small_config(64, 2);
  auto bad = std::make_shared<enc::encoder_weights>(*random_weights(c, 1));
  bad->layers.pop_back();
  EXPECT_THROW(
      {
        try {
          (void)enc::make_cuda_encoder(bad, c, 0);
        } catch (const std::invalid_argument& e) {
          EXPECT_STREQ(e.what(), "text encoder (cuda): weights do not match the config");
          throw;
        }
      },
      std::invalid_argument);
}

// ---- device -------------------------------------------------------------------------------

TEST(CudaEncoder, MatchesCpuOnMixedLengths) {
  INFERLINE_SKIP_WITHOUT_GPU();
  // 1 token, short, exactly one key chunk (64), one past it, several chunks, the maximum.
  expect_cuda_matches_cpu(small_config(64, 2), {1, 5, 64, 65, 130, 150, 2, 17}, 11);
}

TEST(CudaEncoder, MatchesCpuWithHeadSize64) {
  INFERLINE_SKIP_WITHOUT_GPU();
  expect_cuda_matches_cpu(small_config(128, 2), {3, 70, 1}, 21);
}

TEST(CudaEncoder, MatchesCpuAtMiniLmWidth) {
  INFERLINE_SKIP_WITHOUT_GPU();
  auto c = small_config(384, 12);
  c.intermediate = 1536;
  expect_cuda_matches_cpu(c, {9, 16, 33, 1, 120, 12, 8, 40}, 31);
}

TEST(CudaEncoder, GrowingAndShrinkingBatchesGiveTheSameRows) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const auto c = small_config(64, 2);
  const auto w = random_weights(c, 41);
  auto gpu = enc::make_cuda_encoder(w, c, 0);
  const packed one = random_batch({12}, c.vocab, 42);
  std::vector<float> alone(static_cast<std::size_t>(c.hidden));
  gpu->run(one.ids.data(), one.offsets.data(), 1, alone.data());
  // The same sequence first in a larger batch (activations regrown), then alone again.
  packed big = random_batch({12, 150, 150, 150, 150, 150, 150, 150}, c.vocab, 43);
  std::copy(one.ids.begin(), one.ids.end(), big.ids.begin());
  std::vector<float> rows(static_cast<std::size_t>(8 * c.hidden));
  gpu->run(big.ids.data(), big.offsets.data(), 8, rows.data());
  std::vector<float> again(alone.size());
  gpu->run(one.ids.data(), one.offsets.data(), 1, again.data());
  EXPECT_EQ(again, alone);
  for (std::size_t j = 0; j < alone.size(); ++j) EXPECT_NEAR(rows[j], alone[j], 1e-5);
}

TEST(CudaEncoder, ExecutorsOnTwoThreadsShareWeightsAndAgree) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const auto c = small_config(64, 2);
  const auto w = random_weights(c, 51);
  const packed b = random_batch({7, 30, 2}, c.vocab, 52);
  std::vector<float> ref(static_cast<std::size_t>(3 * c.hidden));
  enc::make_cuda_encoder(w, c, 0)->run(b.ids.data(), b.offsets.data(), 3, ref.data());
  std::vector<std::vector<float>> got(2, std::vector<float>(ref.size()));
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      auto e = enc::make_cuda_encoder(w, c, 0);
      for (int r = 0; r < 20; ++r) e->run(b.ids.data(), b.offsets.data(), 3, got[t].data());
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(got[0], ref);
  EXPECT_EQ(got[1], ref);
}

TEST(CudaEncoder, BadBatchIsRefusedWithTheCheckersMessage) {
  INFERLINE_SKIP_WITHOUT_GPU();
  const auto c = small_config(64, 2);
  auto gpu = enc::make_cuda_encoder(random_weights(c, 61), c, 0);
  const std::vector<std::int32_t> ids{1, 2, 500};
  const std::vector<std::int32_t> offsets{0, 3};
  std::vector<float> out(static_cast<std::size_t>(c.hidden));
  try {
    gpu->run(ids.data(), offsets.data(), 1, out.data());
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "text encoder: sequence 0 has token id 500 outside 0..96");
  }
}

}  // namespace
