// The text encoder on the CPU: packed variable-length batches, OpenBLAS sgemm with our fused
// epilogues for every projection, attention over each sequence's own tokens only.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define INFERLINE_SMALL_GEMM 1
#endif

#include "inferline/encoder/encoder.hpp"
#include "inferline/encoder/work_team.hpp"
#include "inferline/kernels/blas.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/math.hpp"
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

// Batches below this many tokens run every projection in the packed-panel product below, on
// the caller's thread and the executor's work_team helpers, instead of OpenBLAS. For one sentence
// it is a few rows against 7 MB of weights per layer, where OpenBLAS's per-call packing of W and,
// with more than one thread, waking its workers cost more than the product (8 tokens once took
// ~200 ms with 2 OpenBLAS threads on this loaded VM). all-MiniLM-L6-v2, one encode call, 2-vCPU
// AMD EPYC (Zen 4) VM, load about 1.5, OpenBLAS vs packed (AVX-512), 1 thread: 32 tokens 15.1 vs
// 10.3 ms, 64: 21.7 vs 16.5, 256: 82.8 vs 67.4, 32 x 19 tokens 158 vs 143, 64 x 19 325-389 vs
// 330-349; 2 threads: 64 tokens 16.2 vs 9.5, 256: 72.3 vs 49.7, 32 x 19: 93 vs 90, 64 x 19: 233
// vs 191-207. The packed layout needs no per-call packing, so it is never slower up to the largest
// batches measured (1216 tokens); larger ones keep OpenBLAS, whose cache blocking over k and m
// the panel product lacks. (The earlier dot-product kernel over unpacked W took 9.7 ms for 16
// tokens on 1 thread against 4.8 here: horizontal sums and W rows re-read per row block.) On
// AVX2-only CPUs the kernel is taken only when OpenBLAS has more than one thread, as the earlier
// kernel was: its AVX2 build is tested but has not been timed (the CPU here has AVX-512).
constexpr std::size_t small_batch = 1280;

#ifdef INFERLINE_SMALL_GEMM
// Columns per packed weight panel (pack_panels): one AVX-512 register block (4 x 16 lanes), two
// AVX2 ones; a panel of a k = 384 product is 96 KB, so it stays in L2 while the rows pass.
constexpr std::size_t panel_cols = 64;


// The small-batch product twice: AVX2/FMA (16 registers: 2 rows x 4 vectors) and AVX-512 (32:
// 6 rows x 4 vectors).
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SP_NS avx2
#define SP_VEC __m256
#define SP_LANES 8
#define SP_LOAD(p) _mm256_loadu_ps(p)
#define SP_STORE(p, v) _mm256_storeu_ps(p, v)
#define SP_SET1(f) _mm256_set1_ps(f)
#define SP_ZERO() _mm256_setzero_ps()
#define SP_FMA(a, b, acc) _mm256_fmadd_ps(a, b, acc)
#define SP_ROWS 2
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
#define SP_STORE(p, v) _mm512_storeu_ps(p, v)
#define SP_SET1(f) _mm512_set1_ps(f)
#define SP_ZERO() _mm512_set1_ps(0.0f)
#define SP_FMA(a, b, acc) _mm512_fmadd_ps(a, b, acc)
#define SP_ROWS 6
#include "small_product.inc"
#pragma GCC diagnostic pop
#pragma GCC pop_options

using product_fn = void (*)(const float*, const float*, const float*, float*, std::size_t,
                            std::size_t, std::size_t, std::size_t, std::size_t, activation);
struct small_path {
  product_fn product = nullptr;  // null: no AVX2/FMA, OpenBLAS only
  bool with_one_thread = false;  // also taken when OpenBLAS has one thread (AVX-512 only)
};

// The widest small_product this CPU runs and when to take it.
small_path small_path_for_cpu() {
  if (__builtin_cpu_supports("avx512f")) return {avx512::packed_product, true};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return {avx2::packed_product, false};
  }
  return {};
}

// 64-byte aligned float storage: every panel row then starts a cache line.
struct aligned_floats {
  struct release {
    void operator()(float* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<float[], release> data;
  explicit aligned_floats(std::size_t n) {
    const std::size_t bytes = std::max<std::size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
    data.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!data) throw std::bad_alloc();
  }
};

// W [n, k] (out_in) as ceil(n / panel_cols) panels of [k][panel_cols], zeros past row n - 1.
aligned_floats pack_panels(const float* w, std::size_t n, std::size_t k) {
  const std::size_t panels = (n + panel_cols - 1) / panel_cols;
  aligned_floats out(panels * panel_cols * k);
  float* o = out.data.get();
  for (std::size_t p = 0; p < panels; ++p) {
    for (std::size_t e = 0; e < k; ++e) {
      for (std::size_t j = 0; j < panel_cols; ++j) {
        const std::size_t row = p * panel_cols + j;
        *o++ = row < n ? w[row * k + e] : 0.0f;
      }
    }
  }
  return out;
}

// Every layer's four projections packed for the small-batch product, made once per weights
// object and shared by the executors that use it (a cache of weak references).
struct packed_layer {
  aligned_floats qkv, attn_out, ffn_in, ffn_out;
};
struct packed_weights {
  std::shared_ptr<const encoder_weights> source;  // keeps the key's address from being reused
  std::vector<packed_layer> layers;
};

std::shared_ptr<const packed_weights> packed_for(const std::shared_ptr<const encoder_weights>& w,
                                                 const encoder_config& c) {
  static std::mutex mutex;
  static std::vector<std::pair<const encoder_weights*, std::weak_ptr<const packed_weights>>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  std::erase_if(cache, [](const auto& e) { return e.second.expired(); });
  for (const auto& [key, ref] : cache) {
    if (key != w.get()) continue;
    if (auto p = ref.lock()) return p;
  }
  const auto h = static_cast<std::size_t>(c.hidden);
  const auto in = static_cast<std::size_t>(c.intermediate);
  auto p = std::make_shared<packed_weights>();
  p->source = w;
  for (const encoder_layer_weights& l : w->layers) {
    p->layers.push_back({pack_panels(l.qkv_w.data(), 3 * h, h),
                         pack_panels(l.attn_out_w.data(), h, h),
                         pack_panels(l.ffn_in_w.data(), in, h),
                         pack_panels(l.ffn_out_w.data(), h, in)});
  }
  cache.emplace_back(w.get(), p);
  return p;
}
#endif

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
#ifdef INFERLINE_SMALL_GEMM
    if (small_path_for_cpu().product != nullptr) packed_ = packed_for(w_, c_);
#endif
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
    for (std::size_t li = 0; li < w_->layers.size(); ++li) {
      const encoder_layer_weights& l = w_->layers[li];
      const packed_matrices p = packed_layer_at(li);
      // Fused Q, K, V projection: [T, H] x [H, 3H].
      project(x, l.qkv_w.data(), p.qkv, l.qkv_b.data(), wide, t, 3 * h, h, activation::none);
      for (int i = 0; i < n; ++i) {
        attend(wide, offsets[i], offsets[i + 1] - offsets[i], tmp);
      }
      // Output projection, residual, LayerNorm; the context in tmp is consumed into wide.
      project(tmp, l.attn_out_w.data(), p.attn_out, l.attn_out_b.data(), wide, t, h, h,
              activation::none);
      add_layer_norm(wide, x, l.ln1_g.data(), l.ln1_b.data(), t, h, eps);
      // Feed-forward with exact GELU fused into the first projection's epilogue.
      project(x, l.ffn_in_w.data(), p.ffn_in, l.ffn_in_b.data(), wide, t, inter, h,
              activation::gelu);
      project(wide, l.ffn_out_w.data(), p.ffn_out, l.ffn_out_b.data(), tmp, t, h, inter,
              activation::none);
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
  // Layer li's packed projections (all null without a small-batch kernel).
  struct packed_matrices {
    const float *qkv = nullptr, *attn_out = nullptr, *ffn_in = nullptr, *ffn_out = nullptr;
  };
  packed_matrices packed_layer_at(std::size_t li) const {
#ifdef INFERLINE_SMALL_GEMM
    if (packed_) {
      const packed_layer& p = packed_->layers[li];
      return {p.qkv.data.get(), p.attn_out.data.get(), p.ffn_in.data.get(),
              p.ffn_out.data.get()};
    }
#endif
    static_cast<void>(li);
    return {};
  }

  // y[m, n] = act(x[m, k] · Wᵀ + bias), W [n, k]: kernels::linear's contract. Batches of fewer
  // than small_batch rows run the packed-panel product above (no OpenBLAS call) on `packed`
  // (W in pack_panels' layout) when small_path_for_cpu says so, split by panels over the team
  // (each thread streams its own panels, bias and activation fused into the store); otherwise
  // OpenBLAS runs it on W.
  void project(const float* x, const float* w, const float* packed, const float* bias, float* y,
               std::size_t m, std::size_t n, std::size_t k, activation act) {
#ifdef INFERLINE_SMALL_GEMM
    static const small_path small = small_path_for_cpu();
    if (m < small_batch && k > 0 && packed != nullptr &&
        (small.with_one_thread || kernels::blas_threads() > 1)) {
      const std::size_t panels = (n + panel_cols - 1) / panel_cols;
      team_.for_each(panels, [&](std::size_t i) {
        small.product(x, packed, bias, y, m, n, k, i, i + 1, act);
      });
      return;
    }
#else
    static_cast<void>(packed);
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
#ifdef INFERLINE_SMALL_GEMM
  std::shared_ptr<const packed_weights> packed_;  // null without a small-batch kernel
#endif
  work_team team_;  // splits small-batch products; its helpers park when idle
};

}  // namespace

bool detail::small_product(const std::string& isa, const float* x, const float* w, float* y,
                           std::size_t m, std::size_t n, std::size_t k) {
#ifdef INFERLINE_SMALL_GEMM
  product_fn product = nullptr;
  if (isa == "avx512" && __builtin_cpu_supports("avx512f")) product = avx512::packed_product;
  if (isa == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    product = avx2::packed_product;
  }
  if (product == nullptr) return false;
  if (m == 0 || n == 0) return true;
  const aligned_floats packed = pack_panels(w, n, k);
  product(x, packed.data.get(), nullptr, y, m, n, k, 0, (n + panel_cols - 1) / panel_cols,
          activation::none);
  return true;
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
