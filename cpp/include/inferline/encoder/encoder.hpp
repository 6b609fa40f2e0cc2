// The native text encoder (all-MiniLM-L6-v2 shaped BERT): configuration, weights loaded from
// safetensors, and the execution interface shared by the CPU and CUDA implementations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace inferline::encoder {

/// Shape of a BERT encoder followed by mean pooling and L2 normalisation. The defaults are
/// all-MiniLM-L6-v2's. Plain value; thread-safe to read.
struct encoder_config {
  int layers = 6;                 ///< transformer layers
  int hidden = 384;               ///< model width
  int heads = 12;                 ///< attention heads (hidden / heads = head size, 32 here)
  int intermediate = 1536;        ///< feed-forward width (exact erf GELU)
  int vocab = 30522;              ///< word-embedding rows
  int max_position = 512;         ///< position-embedding rows
  int type_vocab = 2;             ///< token-type rows (only type 0 is used)
  int max_seq_len = 256;          ///< longest sequence run() accepts (<= max_position)
  int max_batch_size = 64;        ///< most sequences per run() (sizes the scratch memory)
  float layer_norm_eps = 1e-12f;  ///< LayerNorm epsilon
  float l2_eps = 1e-12f;          ///< L2-normalisation floor (torch.nn.functional.normalize)

  /// hidden / heads.
  int head_size() const noexcept { return heads > 0 ? hidden / heads : 0; }
  /// Throws std::invalid_argument naming the field when the shape is inconsistent.
  void validate() const;
};

/// Reads a Hugging Face BERT config.json (num_hidden_layers, hidden_size, num_attention_heads,
/// intermediate_size, vocab_size, max_position_embeddings, type_vocab_size, layer_norm_eps,
/// hidden_act must be "gelu"). max_seq_len and max_batch_size keep `base`'s values. Throws
/// std::runtime_error naming the file and the field on a missing or bad entry. Thread-safe.
encoder_config read_bert_config(const std::string& path, encoder_config base = {});

/// One transformer layer's float32 weights, PyTorch layout ([out, in] for matrices), except
/// that the query, key and value projections are fused into `qkv_w` [3·hidden, hidden] and
/// `qkv_b` [3·hidden] (rows 0..H-1 query, H..2H-1 key, 2H..3H-1 value).
struct encoder_layer_weights {
  std::vector<float> qkv_w, qkv_b;          ///< fused Q, K, V projection
  std::vector<float> attn_out_w, attn_out_b;  ///< attention.output.dense [H, H], [H]
  std::vector<float> ln1_g, ln1_b;          ///< attention.output.LayerNorm
  std::vector<float> ffn_in_w, ffn_in_b;    ///< intermediate.dense [I, H], [I]
  std::vector<float> ffn_out_w, ffn_out_b;  ///< output.dense [H, I], [H]
  std::vector<float> ln2_g, ln2_b;          ///< output.LayerNorm
};

/// Host float32 copies of every tensor the encoder needs (loaded once; F16/BF16/F64 files are
/// widened). Immutable after loading; thread-safe to share between executors.
struct encoder_weights {
  std::vector<float> word_emb;      ///< embeddings.word_embeddings.weight [vocab, H]
  std::vector<float> pos_emb;       ///< embeddings.position_embeddings.weight [max_position, H]
  std::vector<float> type_emb;      ///< embeddings.token_type_embeddings.weight [type_vocab, H]
  std::vector<float> emb_ln_g, emb_ln_b;  ///< embeddings.LayerNorm
  std::vector<encoder_layer_weights> layers;  ///< encoder.layer.{i}

  /// Loads `path` (a .safetensors file with BERT names, with or without a "bert." prefix) and
  /// checks every tensor's shape against `config`. Throws std::runtime_error naming the file,
  /// the tensor and the expected shape.
  static std::shared_ptr<const encoder_weights> load(const std::string& path,
                                                     const encoder_config& config);
};

/// Runs the encoder on packed variable-length batches. Thread-compatible: one executor per
/// model instance (worker thread); distinct executors may run concurrently.
class encoder_exec {
 public:
  virtual ~encoder_exec();

  /// Packed variable-length batch: `ids` holds offsets[n] tokens, sequence i is
  /// ids[offsets[i] .. offsets[i+1]) (offsets[0] == 0, each length in 1..max_seq_len, n in
  /// 1..max_batch_size, ids in 0..vocab-1). Writes n x hidden float32 L2-normalised
  /// mean-pooled embeddings to `out`. Throws std::invalid_argument on a bad batch.
  virtual void run(const std::int32_t* ids, const std::int32_t* offsets, int n, float* out) = 0;

  /// The configuration the executor was built with.
  virtual const encoder_config& config() const noexcept = 0;
};

/// Checks a packed batch against `config` (see encoder_exec::run); throws
/// std::invalid_argument naming the sequence and the problem. Thread-safe.
void check_packed_batch(const encoder_config& config, const std::int32_t* ids,
                        const std::int32_t* offsets, int n);

/// The CPU executor: OpenBLAS sgemm with fused epilogues, attention over each sequence's own
/// tokens only, scratch memory preallocated for max_batch_size·max_seq_len tokens.
/// `blas_threads` > 0 sets OpenBLAS's (process-wide) thread count. Batches of fewer than 1280
/// tokens skip OpenBLAS on CPUs with AVX-512 (with AVX2/FMA: when OpenBLAS has more than one
/// thread): their projections run on weights packed once into 64-column panels (shared by the
/// executors of one weights object), on the executor's own work_team of `blas_threads` threads
/// (OpenBLAS's count when 0), split by panels, whose helpers spin briefly between products and
/// park when idle. Throws on a bad config.
std::unique_ptr<encoder_exec> make_cpu_encoder(std::shared_ptr<const encoder_weights> weights,
                                               const encoder_config& config, int blas_threads);

/// The CUDA executor on device `device` (encoder_cuda.cpp). In a build without CUDA it throws
/// std::runtime_error("text encoder: built without CUDA").
std::unique_ptr<encoder_exec> make_cuda_encoder(std::shared_ptr<const encoder_weights> weights,
                                                const encoder_config& config, int device);

namespace detail {
/// y[m, n] = x[m, k] · Wᵀ (W [n, k], row-major, packed into panels here) with the CPU encoder's
/// packed-panel kernel for `isa` ("avx2" or "avx512"), which make_cpu_encoder's executor picks
/// by itself for batches of fewer than 1280 tokens. Returns false, y untouched, where this build
/// or CPU lacks that kernel. For tests.
bool small_product(const std::string& isa, const float* x, const float* w, float* y,
                   std::size_t m, std::size_t n, std::size_t k);
}  // namespace detail

}  // namespace inferline::encoder
