// The text encoder on the CPU: packed variable-length batches, OpenBLAS sgemm with our fused
// epilogues for every projection, attention over each sequence's own tokens only.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "inferline/encoder/encoder.hpp"
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

// Uninitialised float storage: the scratch buffers are written before they are read, and
// leaving them untouched keeps pages of a large max_batch_size·max_seq_len unmapped until used.
std::unique_ptr<float[]> scratch(std::size_t n) { return std::unique_ptr<float[]>(new float[n]); }

class cpu_encoder final : public encoder_exec {
 public:
  cpu_encoder(std::shared_ptr<const encoder_weights> w, const encoder_config& c)
      : w_(std::move(w)), c_(c) {
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
      kernels::linear(x, l.qkv_w.data(), l.qkv_b.data(), wide, t, 3 * h, h, weight_layout::out_in,
                      activation::none);
      for (int i = 0; i < n; ++i) {
        attend(wide, offsets[i], offsets[i + 1] - offsets[i], tmp);
      }
      // Output projection, residual, LayerNorm; the context in tmp is consumed into wide.
      kernels::linear(tmp, l.attn_out_w.data(), l.attn_out_b.data(), wide, t, h, h,
                      weight_layout::out_in, activation::none);
      add_layer_norm(wide, x, l.ln1_g.data(), l.ln1_b.data(), t, h, eps);
      // Feed-forward with exact GELU fused into the first projection's epilogue.
      kernels::linear(x, l.ffn_in_w.data(), l.ffn_in_b.data(), wide, t, inter, h,
                      weight_layout::out_in, activation::gelu);
      kernels::linear(wide, l.ffn_out_w.data(), l.ffn_out_b.data(), tmp, t, h, inter,
                      weight_layout::out_in, activation::none);
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
};

}  // namespace

std::unique_ptr<encoder_exec> make_cpu_encoder(std::shared_ptr<const encoder_weights> weights,
                                               const encoder_config& config, int blas_threads) {
  if (blas_threads > 0) kernels::set_blas_threads(blas_threads);
  return std::make_unique<cpu_encoder>(std::move(weights), config);
}

}  // namespace inferline::encoder
