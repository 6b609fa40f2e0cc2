// The CPU text encoder on a small random BERT: packing invariants (a batch equals each sequence
// alone, padding never matters, unit-norm outputs), both attention paths against a float64
// reference written here, the safetensors/config.json loading and the batch checks.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "inferline/encoder/encoder.hpp"
#include "inferline/encoder/text_encoder_backend.hpp"

namespace {

using namespace inferline::encoder;

encoder_config small_config() {
  encoder_config c;
  c.layers = 2;
  c.hidden = 64;
  c.heads = 4;
  c.intermediate = 128;
  c.vocab = 50;
  c.max_position = 128;
  c.max_seq_len = 100;
  c.max_batch_size = 8;
  return c;
}

std::vector<float> random_vec(std::mt19937& rng, std::size_t n, float scale, float offset = 0) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = offset + u(rng);
  return v;
}

std::shared_ptr<encoder_weights> random_weights(const encoder_config& c, unsigned seed) {
  std::mt19937 rng(seed);
  const auto h = static_cast<std::size_t>(c.hidden);
  const auto in = static_cast<std::size_t>(c.intermediate);
  auto w = std::make_shared<encoder_weights>();
  w->word_emb = random_vec(rng, static_cast<std::size_t>(c.vocab) * h, 1.0f);
  w->pos_emb = random_vec(rng, static_cast<std::size_t>(c.max_position) * h, 0.5f);
  w->type_emb = random_vec(rng, static_cast<std::size_t>(c.type_vocab) * h, 0.5f);
  w->emb_ln_g = random_vec(rng, h, 0.2f, 1.0f);
  w->emb_ln_b = random_vec(rng, h, 0.1f);
  for (int l = 0; l < c.layers; ++l) {
    encoder_layer_weights L;
    L.qkv_w = random_vec(rng, 3 * h * h, 0.25f);
    L.qkv_b = random_vec(rng, 3 * h, 0.1f);
    L.attn_out_w = random_vec(rng, h * h, 0.15f);
    L.attn_out_b = random_vec(rng, h, 0.1f);
    L.ln1_g = random_vec(rng, h, 0.2f, 1.0f);
    L.ln1_b = random_vec(rng, h, 0.1f);
    L.ffn_in_w = random_vec(rng, in * h, 0.15f);
    L.ffn_in_b = random_vec(rng, in, 0.1f);
    L.ffn_out_w = random_vec(rng, h * in, 0.1f);
    L.ffn_out_b = random_vec(rng, h, 0.1f);
    L.ln2_g = random_vec(rng, h, 0.2f, 1.0f);
    L.ln2_b = random_vec(rng, h, 0.1f);
    w->layers.push_back(std::move(L));
  }
  return w;
}

// ---- float64 reference: the same BERT forward, one sequence at a time, naive loops ----------
using dvec = std::vector<double>;

void ref_ln(dvec& x, std::size_t rows, std::size_t h, const std::vector<float>& g,
            const std::vector<float>& b, double eps) {
  for (std::size_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (std::size_t j = 0; j < h; ++j) mean += x[r * h + j];
    mean /= static_cast<double>(h);
    for (std::size_t j = 0; j < h; ++j) var += (x[r * h + j] - mean) * (x[r * h + j] - mean);
    const double rstd = 1.0 / std::sqrt(var / static_cast<double>(h) + eps);
    for (std::size_t j = 0; j < h; ++j) x[r * h + j] = (x[r * h + j] - mean) * rstd * g[j] + b[j];
  }
}

// y[rows, out] = x[rows, in] · Wᵀ + b (W is [out, in]).
dvec ref_linear(const dvec& x, std::size_t rows, std::size_t in, const std::vector<float>& w,
                const std::vector<float>& b, std::size_t out) {
  dvec y(rows * out);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t o = 0; o < out; ++o) {
      double s = b[o];
      for (std::size_t i = 0; i < in; ++i) s += x[r * in + i] * w[o * in + i];
      y[r * out + o] = s;
    }
  }
  return y;
}

std::vector<double> reference(const encoder_config& c, const encoder_weights& w,
                              const std::vector<std::int32_t>& ids) {
  const auto h = static_cast<std::size_t>(c.hidden);
  const std::size_t n = ids.size();
  const std::size_t d = h / static_cast<std::size_t>(c.heads);
  const double eps = c.layer_norm_eps;
  dvec x(n * h);
  for (std::size_t t = 0; t < n; ++t) {
    for (std::size_t j = 0; j < h; ++j) {
      x[t * h + j] = static_cast<double>(w.word_emb[static_cast<std::size_t>(ids[t]) * h + j]) +
                     w.pos_emb[t * h + j] + w.type_emb[j];
    }
  }
  ref_ln(x, n, h, w.emb_ln_g, w.emb_ln_b, eps);
  for (const encoder_layer_weights& L : w.layers) {
    const dvec qkv = ref_linear(x, n, h, L.qkv_w, L.qkv_b, 3 * h);
    dvec ctx(n * h, 0.0);
    for (std::size_t hd = 0; hd < static_cast<std::size_t>(c.heads); ++hd) {
      for (std::size_t i = 0; i < n; ++i) {
        dvec p(n);
        double mx = -1e300, sum = 0;
        for (std::size_t j = 0; j < n; ++j) {
          double s = 0;
          for (std::size_t e = 0; e < d; ++e) {
            s += qkv[i * 3 * h + hd * d + e] * qkv[j * 3 * h + h + hd * d + e];
          }
          p[j] = s / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, p[j]);
        }
        for (double& v : p) sum += (v = std::exp(v - mx));
        for (std::size_t j = 0; j < n; ++j) {
          for (std::size_t e = 0; e < d; ++e) {
            ctx[i * h + hd * d + e] += p[j] / sum * qkv[j * 3 * h + 2 * h + hd * d + e];
          }
        }
      }
    }
    dvec a = ref_linear(ctx, n, h, L.attn_out_w, L.attn_out_b, h);
    for (std::size_t k = 0; k < a.size(); ++k) a[k] += x[k];
    ref_ln(a, n, h, L.ln1_g, L.ln1_b, eps);
    x = a;
    dvec f = ref_linear(x, n, h, L.ffn_in_w, L.ffn_in_b, static_cast<std::size_t>(c.intermediate));
    for (double& v : f) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    dvec o = ref_linear(f, n, static_cast<std::size_t>(c.intermediate), L.ffn_out_w, L.ffn_out_b,
                        h);
    for (std::size_t k = 0; k < o.size(); ++k) o[k] += x[k];
    ref_ln(o, n, h, L.ln2_g, L.ln2_b, eps);
    x = o;
  }
  std::vector<double> pooled(h, 0.0);
  for (std::size_t t = 0; t < n; ++t) {
    for (std::size_t j = 0; j < h; ++j) pooled[j] += x[t * h + j] / static_cast<double>(n);
  }
  double norm = 0;
  for (double v : pooled) norm += v * v;
  for (double& v : pooled) v /= std::sqrt(norm);
  return pooled;
}

// Sequences of the given lengths with deterministic ids; packed ids and offsets.
struct packed {
  std::vector<std::vector<std::int32_t>> seqs;
  std::vector<std::int32_t> ids, offsets{0};
};

packed make_batch(const std::vector<int>& lengths, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> tok(0, vocab - 1);
  packed p;
  for (int len : lengths) {
    std::vector<std::int32_t> s(static_cast<std::size_t>(len));
    for (auto& t : s) t = tok(rng);
    p.ids.insert(p.ids.end(), s.begin(), s.end());
    p.offsets.push_back(static_cast<std::int32_t>(p.ids.size()));
    p.seqs.push_back(std::move(s));
  }
  return p;
}

// Lengths on both attention paths (short loops below 64 tokens, sgemm from 64), one token too.
const std::vector<int> mixed_lengths = {1, 5, 17, 70, 3, 100, 64, 33};

// Runs one packed batch of `lengths` and checks every vector against the float64 reference.
void expect_matches_reference(const encoder_config& c, const std::vector<int>& lengths,
                              unsigned seed, int blas_threads = 1) {
  const auto w = random_weights(c, seed);
  auto exec = make_cpu_encoder(w, c, blas_threads);
  const packed p = make_batch(lengths, c.vocab, seed + 4);
  const auto n = static_cast<int>(p.seqs.size());
  std::vector<float> out(static_cast<std::size_t>(n * c.hidden));
  exec->run(p.ids.data(), p.offsets.data(), n, out.data());
  for (int i = 0; i < n; ++i) {
    const std::vector<double> ref = reference(c, *w, p.seqs[static_cast<std::size_t>(i)]);
    double dot = 0, norm = 0, err = 0;
    for (int j = 0; j < c.hidden; ++j) {
      const double v = out[static_cast<std::size_t>(i * c.hidden + j)];
      dot += v * ref[static_cast<std::size_t>(j)];
      norm += v * v;
      err = std::max(err, std::abs(v - ref[static_cast<std::size_t>(j)]));
    }
    EXPECT_NEAR(norm, 1.0, 1e-5) << "sequence " << i;
    EXPECT_GE(dot, 0.99999) << "sequence " << i << " of length "
                            << lengths[static_cast<std::size_t>(i)];
    EXPECT_LT(err, 2e-4) << "sequence " << i;
  }
}

TEST(Encoder, BatchMatchesFloat64ReferenceWithUnitNorm) {
  expect_matches_reference(small_config(), mixed_lengths, 7);
}

// Each small-batch kernel this CPU has (over W packed into 64-column panels) against a float64
// product, over shapes that exercise every tail: rows not a multiple of the row block (2 or 6),
// W rows not a multiple of a register block (32 or 64 columns) in the first, second or third
// panel, odd k, and k = 1.
TEST(Encoder, SmallProductKernelsMatchFloat64) {
  std::mt19937 rng(21);
  int ran = 0;
  for (const std::string isa : {"avx2", "avx512"}) {
    for (const std::size_t m : {1U, 2U, 3U, 4U, 5U, 6U, 7U, 9U, 13U, 31U}) {
      for (const auto& [n, k] : {std::pair<std::size_t, std::size_t>{13, 37}, {24, 64}, {5, 3},
                                 {70, 1}, {150, 19}, {128, 8}}) {
        const std::vector<float> x = random_vec(rng, m * k, 1.0f), w = random_vec(rng, n * k, 1.0f);
        std::vector<float> y(m * n, -7.0f);
        if (!detail::small_product(isa, x.data(), w.data(), y.data(), m, n, k)) continue;
        ++ran;
        for (std::size_t r = 0; r < m; ++r) {
          for (std::size_t c = 0; c < n; ++c) {
            double ref = 0;
            for (std::size_t e = 0; e < k; ++e) ref += double{x[r * k + e]} * w[c * k + e];
            ASSERT_NEAR(y[r * n + c], ref, 1e-5 * static_cast<double>(k))
                << isa << " m " << m << " n " << n << " k " << k << " at " << r << "," << c;
          }
        }
      }
    }
  }
  if (ran == 0) GTEST_SKIP() << "no AVX2/FMA small-batch kernel in this build or CPU";
  EXPECT_FALSE(detail::small_product("sse", nullptr, nullptr, nullptr, 1, 1, 1));
}

// Fewer than 1280 tokens in all with 2 OpenBLAS threads: the projections take the packed-panel
// product (on CPUs with AVX2/FMA; with AVX-512 also with 1 thread) instead of OpenBLAS. Widths
// that are not multiples of the kernels' blocks cover their tails; 13 x 100 tokens go through
// OpenBLAS, as do all batches with 1 thread on AVX2-only CPUs.
TEST(Encoder, SmallBatchMatchesFloat64Reference) {
  expect_matches_reference(small_config(), {1, 5, 17, 3}, 7, 2);
  encoder_config odd = small_config();
  odd.hidden = 36;
  odd.heads = 4;
  odd.intermediate = 74;
  expect_matches_reference(odd, {1, 2, 7, 11, 4}, 9, 2);
  expect_matches_reference(odd, {31}, 13, 2);
  expect_matches_reference(odd, {40, 100, 64}, 13, 2);
  expect_matches_reference(odd, {1, 2, 7, 11, 4}, 9, 1);
  // One OpenBLAS thread: its threads are invisible to ThreadSanitizer, which would flag the
  // scratch rows they write as races.
  odd.max_batch_size = 13;
  expect_matches_reference(odd, std::vector<int>(13, 100), 15, 1);
}

// With 2 threads a small batch's products are split by 64-column weight panels over the
// executor's work_team; every output element is computed by the same operations either way, so
// the vectors equal the 1-thread executor's bit for bit: each length alone from 1 to 31 tokens,
// 64 and 100 alone, and batches of mixed lengths. Widths of 1-4 panels, some not a multiple of
// the kernels' blocks.
TEST(Encoder, SmallBatchSplitOverTwoThreadsEqualsOneThread) {
  if (!detail::small_product("avx2", nullptr, nullptr, nullptr, 0, 0, 0) &&
      !detail::small_product("avx512", nullptr, nullptr, nullptr, 0, 0, 0)) {
    GTEST_SKIP() << "no AVX2/FMA small-batch kernel in this build or CPU";
  }
  encoder_config odd = small_config();
  odd.hidden = 76;
  odd.heads = 4;
  odd.intermediate = 230;
  for (const encoder_config& c : {small_config(), odd}) {
    const auto w = random_weights(c, 17);
    auto one = make_cpu_encoder(w, c, 1);
    auto two = make_cpu_encoder(w, c, 2);
    const auto h = static_cast<std::size_t>(c.hidden);
    std::vector<std::vector<int>> batches;
    for (int len = 1; len <= 31; ++len) batches.push_back({len});
    batches.push_back({64});
    batches.push_back({100});
    batches.push_back({5, 1, 12, 9, 3});
    batches.push_back({70, 100, 33, 2});
    for (const std::vector<int>& lengths : batches) {
      const packed p = make_batch(lengths, c.vocab, static_cast<unsigned>(lengths[0]) + 31);
      const auto n = static_cast<int>(lengths.size());
      std::vector<float> a(static_cast<std::size_t>(n) * h), b(a.size(), -1.0f);
      one->run(p.ids.data(), p.offsets.data(), n, a.data());
      two->run(p.ids.data(), p.offsets.data(), n, b.data());
      for (std::size_t j = 0; j < a.size(); ++j) {
        ASSERT_EQ(a[j], b[j]) << "hidden " << h << ", " << n << " sequence(s) of "
                              << lengths[0] << "+ tokens, element " << j;
      }
    }
  }
}

TEST(Encoder, BatchGivesTheSameVectorsAsEachSequenceAlone) {
  const encoder_config c = small_config();
  auto exec = make_cpu_encoder(random_weights(c, 3), c, 1);
  const packed p = make_batch(mixed_lengths, c.vocab, 5);
  const auto n = static_cast<int>(p.seqs.size());
  const auto h = static_cast<std::size_t>(c.hidden);
  std::vector<float> batch(static_cast<std::size_t>(n) * h), alone(h);
  exec->run(p.ids.data(), p.offsets.data(), n, batch.data());
  for (int i = 0; i < n; ++i) {
    const auto& s = p.seqs[static_cast<std::size_t>(i)];
    const std::int32_t off[2] = {0, static_cast<std::int32_t>(s.size())};
    exec->run(s.data(), off, 1, alone.data());
    for (std::size_t j = 0; j < h; ++j) {
      ASSERT_NEAR(alone[j], batch[static_cast<std::size_t>(i) * h + j], 2e-6)
          << "sequence " << i << " element " << j;
    }
  }
}

TEST(Encoder, PackedBatchesAreChecked) {
  const encoder_config c = small_config();
  auto exec = make_cpu_encoder(random_weights(c, 1), c, 1);
  std::vector<float> out(static_cast<std::size_t>(c.hidden) * 10);
  const std::vector<std::int32_t> ids(200, 1);
  auto message = [&](const std::vector<std::int32_t>& offsets, int n,
                     const std::int32_t* data) -> std::string {
    try {
      exec->run(data, offsets.data(), n, out.data());
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message({0, 3, 3}, 2, ids.data()),
            "text encoder: sequence 1 has 0 tokens, expected 1..100");
  EXPECT_EQ(message({0, 101}, 1, ids.data()),
            "text encoder: sequence 0 has 101 tokens, expected 1..100");
  EXPECT_EQ(message({0}, 0, ids.data()), "text encoder: batch of 0 sequences, expected 1..8");
  const std::vector<std::int32_t> bad = {1, 2, 50};
  EXPECT_EQ(message({0, 3}, 1, bad.data()),
            "text encoder: sequence 0 has token id 50 outside 0..49");
}

TEST(Encoder, ConfigIsValidated) {
  encoder_config c = small_config();
  c.heads = 5;
  try {
    c.validate();
    FAIL() << "hidden 64 with 5 heads was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "text encoder config: hidden must be a positive multiple of heads");
  }
  c = small_config();
  c.max_seq_len = c.max_position + 1;
  EXPECT_THROW(c.validate(), std::invalid_argument);
#ifndef INFERLINE_HAVE_CUDA
  try {
    make_cuda_encoder(random_weights(small_config(), 1), small_config(), 0);
    FAIL() << "a CUDA encoder was made in a build without CUDA";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "text encoder: built without CUDA");
  }
#endif
}

// ---- the files: safetensors + config.json written here, loaded by the backend ---------------
void write_safetensors(const std::string& path, const encoder_config& c, const encoder_weights& w,
                       const std::string& prefix, bool drop_last = false) {
  using shaped = std::pair<std::vector<std::size_t>, const std::vector<float>*>;
  std::vector<std::pair<std::string, shaped>> t;
  const auto h = static_cast<std::size_t>(c.hidden);
  const auto in = static_cast<std::size_t>(c.intermediate);
  t.push_back({"embeddings.word_embeddings.weight",
               {{static_cast<std::size_t>(c.vocab), h}, &w.word_emb}});
  t.push_back({"embeddings.position_embeddings.weight",
               {{static_cast<std::size_t>(c.max_position), h}, &w.pos_emb}});
  t.push_back({"embeddings.token_type_embeddings.weight",
               {{static_cast<std::size_t>(c.type_vocab), h}, &w.type_emb}});
  t.push_back({"embeddings.LayerNorm.weight", {{h}, &w.emb_ln_g}});
  t.push_back({"embeddings.LayerNorm.bias", {{h}, &w.emb_ln_b}});
  std::vector<std::unique_ptr<std::vector<float>>> split;  // Q, K, V cut out of the fused matrix
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const encoder_layer_weights& L = w.layers[l];
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    const char* parts[3] = {"query", "key", "value"};
    for (std::size_t k = 0; k < 3; ++k) {
      split.push_back(std::make_unique<std::vector<float>>(
          L.qkv_w.begin() + static_cast<std::ptrdiff_t>(k * h * h),
          L.qkv_w.begin() + static_cast<std::ptrdiff_t>((k + 1) * h * h)));
      t.push_back({p + "attention.self." + parts[k] + ".weight", {{h, h}, split.back().get()}});
      split.push_back(std::make_unique<std::vector<float>>(
          L.qkv_b.begin() + static_cast<std::ptrdiff_t>(k * h),
          L.qkv_b.begin() + static_cast<std::ptrdiff_t>((k + 1) * h)));
      t.push_back({p + "attention.self." + parts[k] + ".bias", {{h}, split.back().get()}});
    }
    t.push_back({p + "attention.output.dense.weight", {{h, h}, &L.attn_out_w}});
    t.push_back({p + "attention.output.dense.bias", {{h}, &L.attn_out_b}});
    t.push_back({p + "attention.output.LayerNorm.weight", {{h}, &L.ln1_g}});
    t.push_back({p + "attention.output.LayerNorm.bias", {{h}, &L.ln1_b}});
    t.push_back({p + "intermediate.dense.weight", {{in, h}, &L.ffn_in_w}});
    t.push_back({p + "intermediate.dense.bias", {{in}, &L.ffn_in_b}});
    t.push_back({p + "output.dense.weight", {{h, in}, &L.ffn_out_w}});
    t.push_back({p + "output.dense.bias", {{h}, &L.ffn_out_b}});
    t.push_back({p + "output.LayerNorm.weight", {{h}, &L.ln2_g}});
    t.push_back({p + "output.LayerNorm.bias", {{h}, &L.ln2_b}});
  }
  if (drop_last) t.pop_back();
  std::string header = "{";
  std::size_t offset = 0;
  for (const auto& [name, spec] : t) {
    const std::size_t bytes = spec.second->size() * sizeof(float);
    if (header.size() > 1) header += ",";
    header += "\"" + prefix + name + "\":{\"dtype\":\"F32\",\"shape\":[";
    for (std::size_t i = 0; i < spec.first.size(); ++i) {
      if (i > 0) header += ",";
      header += std::to_string(spec.first[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  while (header.size() % 8 != 0) header += " ";
  std::ofstream f(path, std::ios::binary);
  const std::uint64_t len = header.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& [name, spec] : t) {
    f.write(reinterpret_cast<const char*>(spec.second->data()),
            static_cast<std::streamsize>(spec.second->size() * sizeof(float)));
  }
}

void write_config(const std::string& path, const encoder_config& c, const char* act = "gelu") {
  std::ofstream f(path);
  f << "{\n  \"hidden_act\": \"" << act << "\",\n  \"hidden_size\": " << c.hidden
    << ",\n  \"intermediate_size\": " << c.intermediate << ",\n  \"layer_norm_eps\": 1e-12"
    << ",\n  \"max_position_embeddings\": " << c.max_position
    << ",\n  \"num_attention_heads\": " << c.heads << ",\n  \"num_hidden_layers\": " << c.layers
    << ",\n  \"type_vocab_size\": " << c.type_vocab << ",\n  \"vocab_size\": " << c.vocab
    << "\n}\n";
}

class EncoderFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("inferline-encoder-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const char* name) const { return (dir_ / name).string(); }
  text_encoder_options options() const {
    text_encoder_options o;
    o.model_dir = dir_.string();
    o.max_seq_len = 100;
    o.max_batch_size = 4;
    o.blas_threads = 1;
    return o;
  }
  std::filesystem::path dir_;
};

TEST_F(EncoderFiles, BackendEncodesLikeTheExecutorAndIgnoresPadding) {
  const encoder_config c = small_config();
  const auto w = random_weights(c, 21);
  write_safetensors(path("model.safetensors"), c, *w, "bert.");  // BertModel-style names
  write_config(path("config.json"), c);
  text_encoder_backend be(options());
  EXPECT_EQ(be.config().hidden, 64);
  EXPECT_EQ(be.config().layers, 2);
  // Rows of 100 ids, padded with garbage past each length; more rows than max_batch_size.
  const packed p = make_batch(mixed_lengths, c.vocab, 9);
  const std::size_t n = p.seqs.size();
  std::vector<std::int32_t> rows(n * 100, 0), noisy(n * 100, 0), lengths(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::copy(p.seqs[i].begin(), p.seqs[i].end(),
              rows.begin() + static_cast<std::ptrdiff_t>(i * 100));
    for (std::size_t t = 0; t < 100; ++t) {
      noisy[i * 100 + t] = t < p.seqs[i].size() ? p.seqs[i][t] : static_cast<std::int32_t>(t % 50);
    }
    lengths[i] = static_cast<std::int32_t>(p.seqs[i].size());
  }
  const auto h = static_cast<std::size_t>(c.hidden);
  std::vector<float> a(n * h), b(n * h), direct(n * h);
  be.encode(rows.data(), 100, lengths.data(), n, a.data());
  be.encode(noisy.data(), 100, lengths.data(), n, b.data());
  auto exec = make_cpu_encoder(w, c, 1);
  exec->run(p.ids.data(), p.offsets.data(), static_cast<int>(n), direct.data());
  for (std::size_t k = 0; k < n * h; ++k) {
    ASSERT_EQ(a[k], b[k]) << "padding changed element " << k;
    ASSERT_NEAR(a[k], direct[k], 2e-6) << "element " << k;
  }
  EXPECT_EQ(be.token_stats().batches, 0u);  // encode() is not serving
  lengths[6] = 0;
  try {
    be.encode(rows.data(), 100, lengths.data(), n, a.data());
    FAIL() << "a row of length 0 was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "text encoder: row 6 has length 0, expected 1..100");
  }
}

TEST_F(EncoderFiles, MissingTensorsAndBadConfigsAreNamed) {
  const encoder_config c = small_config();
  const auto w = random_weights(c, 2);
  write_safetensors(path("model.safetensors"), c, *w, "", /*drop_last=*/true);
  write_config(path("config.json"), c);
  try {
    text_encoder_backend be(options());
    FAIL() << "a file without encoder.layer.1.output.LayerNorm.bias was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor encoder.layer.1.output.LayerNorm.bias is missing"),
              std::string::npos)
        << e.what();
  }
  write_config(path("config.json"), c, "relu");
  try {
    (void)read_bert_config(path("config.json"));
    FAIL() << "hidden_act relu was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("\"hidden_act\" must be \"gelu\""), std::string::npos)
        << e.what();
  }
  encoder_config bigger = c;
  bigger.hidden = 32;  // the file's tensors are 64 wide
  bigger.heads = 4;
  try {
    (void)encoder_weights::load(path("model.safetensors"), bigger);
    FAIL() << "tensors of the wrong shape were accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("has shape [50, 64], expected [50, 32]"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
