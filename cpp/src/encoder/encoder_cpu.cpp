// The text encoder on the CPU: packed variable-length batches, OpenBLAS sgemm with our fused
// epilogues for every projection, attention over each sequence's own tokens only.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define INFERLINE_SMALL_GEMM 1
#endif

#include "inferline/encoder/encoder.hpp"
#include "inferline/encoder/work_team.hpp"
#include "inferline/kernels/blas.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"

namespace inferline::encoder {
namespace {

using kernels::activation;
using kernels::weight_layout;

// Below this many tokens a head's attention is a few thousand multiply-adds: plain loops beat
// the per-call cost of two sgemm calls; above it sgemm's blocking (and its threads) win.
constexpr int small_attention = 64;

// Batches below this many tokens run every projection in small_product below, on the caller's
// thread and the executor's work_team helpers: a one-sentence batch is a few rows against 7 MB of
// weights per layer, where OpenBLAS's per-call packing and, with more than one thread, waking its
// workers cost more than the product (2-vCPU AMD EPYC VM shared with other jobs, all-MiniLM-L6-v2,
// one encode call: 8 tokens took ~200 ms with 2 OpenBLAS threads under load, ~8 ms here). One
// thread, quiet machine, OpenBLAS vs AVX-512 here: 8 tokens 8.3-8.7 vs 6.0-7.1 ms, 16: 10.6 vs 8.2,
// 32: 13.8 vs 13.3-15.0, 63: 24.7 vs 25.9-27.8; the AVX2 kernel only matched OpenBLAS's (AVX-512)
// with one thread, so on AVX2-only CPUs it is taken only when OpenBLAS has more than one.
constexpr std::size_t small_batch = 32;

#ifdef INFERLINE_SMALL_GEMM
// The small-batch product twice: AVX2/FMA (16 registers: 3 x 4 blocks) and AVX-512 (32: 4 x 6).
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SP_NS avx2
#define SP_VEC __m256
#define SP_LANES 8
#define SP_LOAD(p) _mm256_loadu_ps(p)
#define SP_ZERO() _mm256_setzero_ps()
#define SP_FMA(a, b, acc) _mm256_fmadd_ps(a, b, acc)
#define SP_HSUM(v) hsum256(v)
#define SP_ROWS 3
#define SP_COLS 4
inline float hsum256(__m256 v) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}
#include "small_product.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps() and warn about it (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define SP_NS avx512
#define SP_VEC __m512
#define SP_LANES 16
#define SP_LOAD(p) _mm512_loadu_ps(p)
#define SP_ZERO() _mm512_set1_ps(0.0f)
#define SP_FMA(a, b, acc) _mm512_fmadd_ps(a, b, acc)
#define SP_HSUM(v) hsum512(v)
inline float hsum512(__m512 v) {
  const __m512 hi = _mm512_shuffle_f32x4(v, v, 0xEE);
  return hsum256(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_castps512_ps256(hi)));
}
#define SP_ROWS 4
#define SP_COLS 6
#include "small_product.inc"
#pragma GCC diagnostic pop
#pragma GCC pop_options

using cols_fn = void (*)(const float*, const float*, float*, std::size_t, std::size_t,
                         std::size_t, std::size_t, std::size_t);
struct small_path {
  cols_fn product = nullptr;     // null: no AVX2/FMA, OpenBLAS only
  bool with_one_thread = false;  // also taken when OpenBLAS has one thread (AVX-512 only)
};

// The widest small_product this CPU runs and when to take it.
small_path small_path_for_cpu() {
  if (__builtin_cpu_supports("avx512f")) return {avx512::small_product_cols, true};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return {avx2::small_product_cols, false};
  }
  return {};
}
#endif

// Output columns per work_team index of a split small product: a multiple of both kernels'
// column blocks (4, 6), so the blocks fall where they fall unsplit, and large enough (48 rows
// of W, 72 KB at k = 384) that claiming an index costs nothing next to computing it.
constexpr std::size_t team_chunk = 48;

// Uninitialised float storage: the scratch buffers are written before they are read, and
// leaving them untouched keeps pages of a large max_batch_size·max_seq_len unmapped until used.
std::unique_ptr<float[]> scratch(std::size_t n) { return std::unique_ptr<float[]>(new float[n]); }

class cpu_encoder final : public encoder_exec {
 public:
  cpu_encoder(std::shared_ptr<const encoder_weights> w, const encoder_config& c, int threads)
      : w_(std::move(w)), c_(c), team_(threads) {
    c_.validate();
    if (!w_) throw std::invalid_argument("text encoder: no weights");
    const auto h = static_cast<std::size_t>(c_.hidden);
    const auto tokens = static_cast<std::size_t>(c_.max_batch_size) *
                        static_cast<std::size_t>(c_.max_seq_len);
    const auto wide = std::max<std::size_t>(3 * h, static_cast<std::size_t>(c_.intermediate));
    const auto s = static_cast<std::size_t>(c_.max_seq_len);
    if (w_->layers.size() != static_cast<std::size_t>(c_.layers) ||
        w_->word_emb.size() != static_cast<std::size_t>(c_.vocab) * h ||
        w_->pos_emb.size() < s * h) {
      throw std::invalid_argument("text encoder: weights do not match the config");
    }
    x_ = scratch(tokens * h);
    tmp_ = scratch(tokens * h);
    wide_ = scratch(tokens * wide);
    scores_ = scratch(s * s);
    kt_ = scratch(s * static_cast<std::size_t>(c_.head_size()));
  }

  const encoder_config& config() const noexcept override { return c_; }

  void run(const std::int32_t* ids, const std::int32_t* offsets, int n, float* out) override {
    check_packed_batch(c_, ids, offsets, n);
    const auto h = static_cast<std::size_t>(c_.hidden);
    const auto inter = static_cast<std::size_t>(c_.intermediate);
    const auto t = static_cast<std::size_t>(offsets[n]);
    const float eps = c_.layer_norm_eps;
    float* x = x_.get();
    float* tmp = tmp_.get();
    float* wide = wide_.get();

    embed(ids, offsets, n);
    for (const encoder_layer_weights& l : w_->layers) {
      // Fused Q, K, V projection: [T, H] x [H, 3H].
      project(x, l.qkv_w.data(), l.qkv_b.data(), wide, t, 3 * h, h, activation::none);
      for (int i = 0; i < n; ++i) {
        attend(wide, offsets[i], offsets[i + 1] - offsets[i], tmp);
      }
      // Output projection, residual, LayerNorm; the context in tmp is consumed into wide.
      project(tmp, l.attn_out_w.data(), l.attn_out_b.data(), wide, t, h, h, activation::none);
      add_layer_norm(wide, x, l.ln1_g.data(), l.ln1_b.data(), t, h, eps);
      // Feed-forward with exact GELU fused into the first projection's epilogue.
      project(x, l.ffn_in_w.data(), l.ffn_in_b.data(), wide, t, inter, h, activation::gelu);
      project(wide, l.ffn_out_w.data(), l.ffn_out_b.data(), tmp, t, h, inter, activation::none);
      add_layer_norm(tmp, x, l.ln2_g.data(), l.ln2_b.data(), t, h, eps);
    }
    for (int i = 0; i < n; ++i) {
      const auto s0 = static_cast<std::size_t>(offsets[i]);
      const auto len = static_cast<std::size_t>(offsets[i + 1] - offsets[i]);
      kernels::masked_mean_pool(x + s0 * h, nullptr, out + static_cast<std::size_t>(i) * h, 1,
                                len, h);
    }
    kernels::l2_normalize(out, out, static_cast<std::size_t>(n), h, c_.l2_eps);
  }

 private:
  // y[m, n] = act(x[m, k] · Wᵀ + bias), W [n, k]: kernels::linear's contract. Batches of fewer
  // than small_batch rows run the dot products above (no OpenBLAS call) when small_path_for_cpu
  // says so, split by output columns over the team (each thread streams its own rows of W, the
  // bias and activation fused per chunk while it is in cache); otherwise OpenBLAS runs it.
  void project(const float* x, const float* w, const float* bias, float* y, std::size_t m,
               std::size_t n, std::size_t k, activation act) {
#ifdef INFERLINE_SMALL_GEMM
    static const small_path small = small_path_for_cpu();
    if (m < small_batch && k > 0 && small.product != nullptr &&
        (small.with_one_thread || kernels::blas_threads() > 1)) {
      if (team_.threads() == 1) {
        small.product(x, w, y, m, n, k, 0, n);
        kernels::bias_activation(y, m, n, bias, act);
        return;
      }
      team_.for_each((n + team_chunk - 1) / team_chunk, [&](std::size_t i) {
        const std::size_t c0 = i * team_chunk;
        const std::size_t c1 = std::min(n, c0 + team_chunk);
        small.product(x, w, y, m, n, k, c0, c1);
        const float* b = bias == nullptr ? nullptr : bias + c0;
        for (std::size_t r = 0; r < m; ++r) {
          kernels::bias_activation(y + r * n + c0, 1, c1 - c0, b, act);
        }
      });
      return;
    }
#endif
    kernels::linear(x, w, bias, y, m, n, k, weight_layout::out_in, act);
  }

  // x[t] = LayerNorm(word[id] + position[t - start] + type[0]).
  void embed(const std::int32_t* ids, const std::int32_t* offsets, int n) {
    const auto h = static_cast<std::size_t>(c_.hidden);
    const float* type0 = w_->type_emb.data();
    float* x = x_.get();
    for (int i = 0; i < n; ++i) {
      for (std::int32_t tok = offsets[i]; tok < offsets[i + 1]; ++tok) {
        const float* word = w_->word_emb.data() + static_cast<std::size_t>(ids[tok]) * h;
        const float* pos = w_->pos_emb.data() + static_cast<std::size_t>(tok - offsets[i]) * h;
        float* row = x + static_cast<std::size_t>(tok) * h;
#pragma omp simd
        for (std::size_t j = 0; j < h; ++j) row[j] = word[j] + pos[j] + type0[j];
      }
    }
    const auto t = static_cast<std::size_t>(offsets[n]);
    kernels::layer_norm(x, w_->emb_ln_g.data(), w_->emb_ln_b.data(), x, t, h, c_.layer_norm_eps);
  }

  // x = LayerNorm(y + x): the residual add folded into the row pass before the norm.
  static void add_layer_norm(float* y, float* x, const float* g, const float* b, std::size_t t,
                             std::size_t h, float eps) {
    for (std::size_t r = 0; r < t; ++r) {
      float* yr = y + r * h;
      const float* xr = x + r * h;
#pragma omp simd
      for (std::size_t j = 0; j < h; ++j) yr[j] += xr[j];
    }
    kernels::layer_norm(y, g, b, x, t, h, eps);
  }

  // Self-attention of one sequence (rows start..start+len of qkv [T, 3H]) into ctx [T, H].
  void attend(const float* qkv, std::int32_t start, std::int32_t len, float* ctx) {
    const auto h = static_cast<std::size_t>(c_.hidden);
    const auto d = static_cast<std::size_t>(c_.head_size());
    const auto l = static_cast<std::size_t>(len);
    const std::size_t ld = 3 * h;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    float* sc = scores_.get();
    for (std::size_t head = 0; head < static_cast<std::size_t>(c_.heads); ++head) {
      const float* q = qkv + static_cast<std::size_t>(start) * ld + head * d;
      const float* k = q + h;
      const float* v = q + 2 * h;
      float* o = ctx + static_cast<std::size_t>(start) * h + head * d;
      if (len >= small_attention) {
        const auto bl = static_cast<blasint>(l);
        const auto bd = static_cast<blasint>(d);
        INFERLINE_BLAS(cblas_sgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, bl, bl, bd, scale, q,
                                    static_cast<blasint>(ld), k, static_cast<blasint>(ld), 0.0f,
                                    sc, bl);
        kernels::softmax(sc, sc, l, l);
        INFERLINE_BLAS(cblas_sgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, bl, bd, bl, 1.0f,
                                    sc, bl, v, static_cast<blasint>(ld), 0.0f, o,
                                    static_cast<blasint>(h));
        continue;
      }
      // Kᵀ [d, len] so the score row vectorises over keys.
      float* kt = kt_.get();
      for (std::size_t j = 0; j < l; ++j) {
        for (std::size_t e = 0; e < d; ++e) kt[e * l + j] = k[j * ld + e];
      }
      for (std::size_t i = 0; i < l; ++i) {
        float* row = sc + i * l;
        const float* qi = q + i * ld;
        std::fill(row, row + l, 0.0f);
        for (std::size_t e = 0; e < d; ++e) {
          const float qe = qi[e] * scale;
          const float* kr = kt + e * l;
#pragma omp simd
          for (std::size_t j = 0; j < l; ++j) row[j] += qe * kr[j];
        }
      }
      kernels::softmax(sc, sc, l, l);
      for (std::size_t i = 0; i < l; ++i) {
        float* oi = o + i * h;
        const float* row = sc + i * l;
        std::fill(oi, oi + d, 0.0f);
        for (std::size_t j = 0; j < l; ++j) {
          const float p = row[j];
          const float* vj = v + j * ld;
#pragma omp simd
          for (std::size_t e = 0; e < d; ++e) oi[e] += p * vj[e];
        }
      }
    }
  }

  std::shared_ptr<const encoder_weights> w_;
  encoder_config c_;
  std::unique_ptr<float[]> x_, tmp_, wide_, scores_, kt_;
  work_team team_;  // splits small-batch products; its helpers park when idle
};

}  // namespace

bool detail::small_product(const std::string& isa, const float* x, const float* w, float* y,
                           std::size_t m, std::size_t n, std::size_t k) {
#ifdef INFERLINE_SMALL_GEMM
  if (isa == "avx512" && __builtin_cpu_supports("avx512f")) {
    avx512::small_product_cols(x, w, y, m, n, k, 0, n);
    return true;
  }
  if (isa == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    avx2::small_product_cols(x, w, y, m, n, k, 0, n);
    return true;
  }
#else
  static_cast<void>(isa);
  static_cast<void>(x);
  static_cast<void>(w);
  static_cast<void>(y);
  static_cast<void>(m);
  static_cast<void>(n);
  static_cast<void>(k);
#endif
  return false;
}

std::unique_ptr<encoder_exec> make_cpu_encoder(std::shared_ptr<const encoder_weights> weights,
                                               const encoder_config& config, int blas_threads) {
  if (blas_threads > 0) kernels::set_blas_threads(blas_threads);
  const int threads = blas_threads > 0 ? blas_threads : kernels::blas_threads();
  return std::make_unique<cpu_encoder>(std::move(weights), config, threads);
}

}  // namespace inferline::encoder
