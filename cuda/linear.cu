// CUDA linear layer: cuBLASLt (dlopen'd, cublaslt.cpp) when it loaded, else the own SGEMM:
// register-blocked tiles staged through shared memory, float4 global and shared loads where the
// shape allows, split-K with a reduction pass for serving-size batches; bias + activation are
// applied before the only store of y.
#include "linear.cuh"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "cublaslt.hpp"
#include "cuda_check.cuh"
#include "detail/gemm_plan.hpp"
#include "launch_limits.cuh"
#include "memory.cuh"

namespace inferline::cuda {
namespace {

using kernels::activation;
using kernels::weight_layout;

constexpr std::size_t cublaslt_workspace_bytes = std::size_t{4} << 20;

// Stages the k0 .. k0 + BK slice of a row-major matrix into tile[BK][EXT + 4], zeros outside
// the matrix or past the slice end `ke`. ALONG_K: the matrix is [limit, ld = k] (x, or W [n, k])
// and its rows origin .. origin + EXT are transposed on the way in (consecutive threads read
// consecutive k of a row); else it is [k, ld = limit] (W [k, n]) and its columns origin ..
// origin + EXT are copied as they are. `vec`: float4 loads, for a 16-byte aligned matrix whose
// contiguous extent is a multiple of 4 (every bound is then a multiple of 4 too, so a float4
// starting inside lies wholly inside).
template <int EXT, int BK, int NT, bool ALONG_K>
__device__ __forceinline__ void stage_tile(const float* __restrict__ src, int ld, int limit,
                                           int origin, int k0, int ke, bool vec,
                                           float (*tile)[EXT + 4], int tid) {
  constexpr int run = ALONG_K ? BK : EXT;  // contiguous floats per line in memory
  constexpr int lines = ALONG_K ? EXT : BK;
  static_assert((lines * run) % (4 * NT) == 0, "every thread loads the same number of float4s");
  const auto inside = [&](int line, int at) {
    return ALONG_K ? (origin + line < limit && k0 + at < ke)
                   : (k0 + line < ke && origin + at < limit);
  };
  const auto offset = [&](int line, int at) {
    return ALONG_K ? static_cast<long long>(origin + line) * ld + k0 + at
                   : static_cast<long long>(k0 + line) * ld + origin + at;
  };
  const auto put = [&](int line, int at, float v) {
    if constexpr (ALONG_K) {
      tile[at][line] = v;
    } else {
      tile[line][at] = v;
    }
  };
  if (vec) {
#pragma unroll
    for (int i = 0; i < lines * run / 4 / NT; ++i) {
      const auto [line, at] = detail::stage_element(tid + i * NT, run, 4);
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (inside(line, at)) v = *reinterpret_cast<const float4*>(src + offset(line, at));
      put(line, at, v.x);
      put(line, at + 1, v.y);
      put(line, at + 2, v.z);
      put(line, at + 3, v.w);
    }
  } else {
#pragma unroll
    for (int i = 0; i < lines * run / NT; ++i) {
      const auto [line, at] = detail::stage_element(tid + i * NT, run, 1);
      put(line, at, inside(line, at) ? src[offset(line, at)] : 0.0f);
    }
  }
}

// A thread's N values of one shared-memory tile row, at detail::fragment_index(0 .. N - 1):
// N / 4 float4 runs.
template <int N, int LANES>
__device__ __forceinline__ void read_fragment(const float* row, int lane, float (&out)[N]) {
#pragma unroll
  for (int g = 0; g < N / 4; ++g) {
    const float4 v =
        *reinterpret_cast<const float4*>(row + detail::fragment_index(4 * g, lane, LANES));
    out[4 * g] = v.x;
    out[4 * g + 1] = v.y;
    out[4 * g + 2] = v.z;
    out[4 * g + 3] = v.w;
  }
}

// Thread (ty, tx) owns tile rows fragment_index(i, ty, TY) and columns fragment_index(j, tx, TX):
// float4-aligned runs in shared memory, a quarter-warp's reads touching 8 consecutive float4s
// (no bank conflict). `partial` null: write act(acc + bias) to y; else
// write the raw sum of this block's k slice to partial[blockIdx.z].
template <int BM, int BN, int BK, int TM, int TN, activation act, weight_layout layout>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    gemm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, float* __restrict__ y,
                float* __restrict__ partial, int m, int n, int k, int k_chunk, bool vec_x,
                bool vec_w) {
  constexpr int TX = BN / TN;
  constexpr int TY = BM / TM;
  constexpr int NT = TX * TY;
  static_assert(TM % 4 == 0 && TN % 4 == 0, "fragments are float4 runs");
  static_assert(BK % 4 == 0, "k slices start on float4 boundaries");
  // +4: the transposed stores xs[c][r] spread over banks, and rows stay 16-byte aligned.
  __shared__ __align__(16) float xs[BK][BM + 4];
  __shared__ __align__(16) float ws[BK][BN + 4];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % TX;
  const int ty = tid / TX;
  const int row0 = static_cast<int>(blockIdx.y) * BM;
  const int col0 = static_cast<int>(blockIdx.x) * BN;
  const int kb = static_cast<int>(blockIdx.z) * k_chunk;
  const int ke = min(k, kb + k_chunk);  // fits: launch_limits checked k rounded up to BK
  float acc[TM][TN] = {};

  for (int k0 = kb; k0 < ke; k0 += BK) {
    constexpr bool w_along_k = layout == weight_layout::out_in;  // W [n, k], else [k, n]
    stage_tile<BM, BK, NT, true>(x, k, m, row0, k0, ke, vec_x, xs, tid);
    stage_tile<BN, BK, NT, w_along_k>(w, w_along_k ? k : n, n, col0, k0, ke, vec_w, ws, tid);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM];
      float b[TN];
      read_fragment<TM, TY>(xs[kk], ty, a);
      read_fragment<TN, TX>(ws[kk], tx, b);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }

  const std::size_t plane = static_cast<std::size_t>(m) * static_cast<std::size_t>(n);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int row = row0 + detail::fragment_index(i, ty, TY);
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int col = col0 + detail::fragment_index(j, tx, TX);
      if (col >= n) continue;
      const std::size_t at = static_cast<std::size_t>(row) * static_cast<std::size_t>(n) +
                             static_cast<std::size_t>(col);
      if (partial != nullptr) {
        partial[static_cast<std::size_t>(blockIdx.z) * plane + at] = acc[i][j];
      } else {
        const float b = bias != nullptr ? bias[col] : 0.0f;
        y[at] = kernels::math::apply_activation<act>(acc[i][j] + b);
      }
    }
  }
}

// Sums the k slices in slice order (deterministic), then bias + activation.
template <activation act>
__global__ void splitk_reduce_kernel(const float* __restrict__ partial,
                                     const float* __restrict__ bias, float* __restrict__ y,
                                     std::size_t count, std::size_t n, int splits) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += partial[static_cast<std::size_t>(z) * count + i];
    const float b = bias != nullptr ? bias[i % n] : 0.0f;
    y[i] = kernels::math::apply_activation<act>(s + b);
  }
}

template <activation act>
__global__ void bias_activation_kernel(float* __restrict__ y, std::size_t count, std::size_t n,
                                       const float* __restrict__ bias) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float b = bias != nullptr ? bias[i % n] : 0.0f;
    y[i] = kernels::math::apply_activation<act>(y[i] + b);
  }
}

constexpr unsigned epilogue_threads = 256;
constexpr std::size_t epilogue_max_blocks = 4096;  // grid-stride beyond this

unsigned epilogue_blocks(std::size_t count) {
  return static_cast<unsigned>(
      std::min(epilogue_max_blocks, limits::blocks_for(count, epilogue_threads)));
}

template <activation act>
void launch_epilogue(float* y, std::size_t count, std::size_t n, const float* bias,
                     cudaStream_t stream) {
  bias_activation_kernel<act>
      <<<epilogue_blocks(count), epilogue_threads, 0, stream>>>(y, count, n, bias);
  CUDA_CHECK_LAUNCH();
}

bool aligned16(const void* p) noexcept { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

int sm_count() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  int sms = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

// The own kernel's plan on the current device; one k slice when there is no workspace to hold
// split-K sums (linear() then allocates nothing).
detail::gemm_plan plan(std::size_t m, std::size_t n, std::size_t k, bool force_narrow,
                       const gemm_workspace* workspace) {
  const detail::gemm_plan p = detail::plan_gemm(m, n, k, sm_count(), force_narrow);
  return workspace != nullptr ? p : detail::single_slice(p, k);
}

template <const detail::gemm_tile& T, activation act>
void launch_tiles(const float* x, const float* w, const float* bias, float* y, float* partial,
                  int m, int n, int k, int k_chunk, int splits, weight_layout layout,
                  cudaStream_t stream) {
  const bool vec_x = k % 4 == 0 && aligned16(x);
  const bool vec_w = (layout == weight_layout::out_in ? k % 4 == 0 : n % 4 == 0) && aligned16(w);
  const dim3 grid(static_cast<unsigned>(limits::blocks_for(static_cast<std::size_t>(n),
                                                           static_cast<std::size_t>(T.tile_n))),
                  static_cast<unsigned>(limits::blocks_for(static_cast<std::size_t>(m),
                                                           static_cast<std::size_t>(T.tile_m))),
                  static_cast<unsigned>(splits));
  const auto threads = static_cast<unsigned>(T.threads());
  if (layout == weight_layout::out_in) {
    gemm_kernel<T.tile_m, T.tile_n, T.tile_k, T.micro_m, T.micro_n, act, weight_layout::out_in>
        <<<grid, threads, 0, stream>>>(x, w, bias, y, partial, m, n, k, k_chunk, vec_x, vec_w);
  } else {
    gemm_kernel<T.tile_m, T.tile_n, T.tile_k, T.micro_m, T.micro_n, act, weight_layout::in_out>
        <<<grid, threads, 0, stream>>>(x, w, bias, y, partial, m, n, k, k_chunk, vec_x, vec_w);
  }
  CUDA_CHECK_LAUNCH();
}

template <activation act>
void own_gemm(const detail::gemm_plan& plan, const float* x, const float* w, const float* bias,
              float* y, std::size_t m, std::size_t n, std::size_t k, weight_layout layout,
              cudaStream_t stream, gemm_workspace* workspace) {
  // linear_with() checked that both tilings' int indices fit.
  const auto mi = static_cast<int>(m);
  const auto ni = static_cast<int>(n);
  const auto ki = static_cast<int>(k);
  const auto chunk = static_cast<int>(plan.k_chunk);  // ≤ k rounded up to tile_k: fits int
  if (plan.splits <= 1) {
    if (plan.wide) {
      launch_tiles<detail::wide_tile, act>(x, w, bias, y, nullptr, mi, ni, ki, chunk, 1, layout,
                                           stream);
    } else {
      launch_tiles<detail::narrow_tile, act>(x, w, bias, y, nullptr, mi, ni, ki, chunk, 1,
                                             layout, stream);
    }
    return;
  }
  const std::size_t count = limits::checked_product(m, n, "linear");
  const std::size_t bytes = limits::checked_product(
      limits::checked_product(count, static_cast<std::size_t>(plan.splits), "linear"),
      sizeof(float), "linear");
  limits::require_fits(
      limits::strided_fits(count, epilogue_max_blocks * epilogue_threads, SIZE_MAX), "linear");
  // linear_with() plans a single slice when the caller gave no workspace.
  auto* partial = static_cast<float*>(workspace->reserve(bytes));
  // Split-K only ever runs narrow tiles (wide tiles are chosen when they fill the device).
  launch_tiles<detail::narrow_tile, act>(x, w, nullptr, y, partial, mi, ni, ki, chunk,
                                         plan.splits, layout, stream);
  splitk_reduce_kernel<act><<<epilogue_blocks(count), epilogue_threads, 0, stream>>>(
      partial, bias, y, count, n, plan.splits);
  CUDA_CHECK_LAUNCH();
}

void own_linear(const detail::gemm_plan& plan, const float* x, const float* w, const float* bias,
                float* y, std::size_t m, std::size_t n, std::size_t k, weight_layout layout,
                activation act, cudaStream_t s, gemm_workspace* ws) {
  switch (act) {
    case activation::none:
      return own_gemm<activation::none>(plan, x, w, bias, y, m, n, k, layout, s, ws);
    case activation::relu:
      return own_gemm<activation::relu>(plan, x, w, bias, y, m, n, k, layout, s, ws);
    case activation::gelu:
      return own_gemm<activation::gelu>(plan, x, w, bias, y, m, n, k, layout, s, ws);
    case activation::gelu_tanh:
      return own_gemm<activation::gelu_tanh>(plan, x, w, bias, y, m, n, k, layout, s, ws);
  }
  throw std::invalid_argument("inferline::cuda::linear: unknown activation");
}

// cuBLASLt with its bias (and ReLU) epilogue; GELU, which cuBLASLt offers only in the tanh
// form, follows as our own pass. False when cuBLASLt cannot run the shape (nothing queued).
bool cublaslt_linear(const float* x, const float* w, const float* bias, float* y, std::size_t m,
                     std::size_t n, std::size_t k, weight_layout layout, activation act,
                     cudaStream_t s, gemm_workspace* ws) {
  if (!cublaslt::available() || k == 0) return false;
  // Without a workspace cuBLASLt picks among the algorithms that need none.
  const std::size_t bytes = ws != nullptr ? cublaslt_workspace_bytes : 0;
  void* space = ws != nullptr ? ws->reserve(bytes) : nullptr;
  const auto ep = act == activation::relu ? cublaslt::epilogue::relu : cublaslt::epilogue::none;
  if (!cublaslt::matmul(x, w, bias, y, m, n, k, layout, ep, space, bytes, s)) {
    return false;
  }
  if (act == activation::gelu || act == activation::gelu_tanh) {
    bias_activation(y, m, n, nullptr, act, s);
  }
  return true;
}

}  // namespace

gemm_workspace::~gemm_workspace() { device_free(data_); }

void* gemm_workspace::reserve(std::size_t bytes) {
  if (bytes > bytes_) {
    // Work queued on the stream may still read the old block: wait before freeing it.
    CUDA_CHECK(cudaDeviceSynchronize());
    device_free(data_);
    data_ = nullptr;
    bytes_ = 0;
    data_ = device_malloc(bytes);
    bytes_ = bytes;
  }
  return data_;
}

bool cublaslt_available() noexcept { return cublaslt::available(); }

std::string cublaslt_status() { return cublaslt::status(); }

void bias_activation(float* y, std::size_t m, std::size_t n, const float* bias, activation act,
                     void* stream) {
  if (m == 0 || n == 0) return;
  const std::size_t count = limits::checked_product(m, n, "bias_activation");
  // The grid-stride index below `count` must not wrap when it advances by the whole grid.
  limits::require_fits(
      limits::strided_fits(count, epilogue_max_blocks * epilogue_threads, SIZE_MAX),
      "bias_activation");
  const cudaStream_t s = detail::as_stream(stream);
  switch (act) {
    case activation::none:
      if (bias != nullptr) launch_epilogue<activation::none>(y, count, n, bias, s);
      return;
    case activation::relu: return launch_epilogue<activation::relu>(y, count, n, bias, s);
    case activation::gelu: return launch_epilogue<activation::gelu>(y, count, n, bias, s);
    case activation::gelu_tanh:
      return launch_epilogue<activation::gelu_tanh>(y, count, n, bias, s);
  }
  throw std::invalid_argument("inferline::cuda::bias_activation: unknown activation");
}

void linear_with(gemm_path path, const float* x, const float* w, const float* bias, float* y,
                 std::size_t m, std::size_t n, std::size_t k, weight_layout layout,
                 activation act, void* stream, gemm_workspace* workspace) {
  if (m == 0 || n == 0) return;
  // Before any CUDA call: sizes either tiling of the own kernel cannot index are refused on
  // every path (the automatic one may fall back to it).
  auto fits = [&](const detail::gemm_tile& t) {
    return limits::linear_fits(m, n, k, static_cast<std::size_t>(t.tile_m),
                               static_cast<std::size_t>(t.tile_n),
                               static_cast<std::size_t>(t.tile_k));
  };
  limits::require_fits(fits(detail::wide_tile) && fits(detail::narrow_tile), "linear");
  const cudaStream_t s = detail::as_stream(stream);
  switch (path) {
    case gemm_path::automatic:
      if (cublaslt_linear(x, w, bias, y, m, n, k, layout, act, s, workspace)) return;
      return own_linear(plan(m, n, k, false, workspace), x, w, bias, y, m, n, k, layout, act, s,
                        workspace);
    case gemm_path::cublaslt:
      if (cublaslt_linear(x, w, bias, y, m, n, k, layout, act, s, workspace)) return;
      throw std::runtime_error("inferline::cuda::linear: cuBLASLt unavailable (" +
                               cublaslt::status() +
                               "; when loaded: no handle on this device or no algorithm for "
                               "this shape)");
    case gemm_path::own:
      return own_linear(plan(m, n, k, false, workspace), x, w, bias, y, m, n, k, layout, act, s,
                        workspace);
    case gemm_path::own_wide: {
      detail::gemm_plan plan;
      plan.k_chunk = k;
      return own_linear(plan, x, w, bias, y, m, n, k, layout, act, s, workspace);
    }
    case gemm_path::own_narrow:
      return own_linear(plan(m, n, k, true, workspace), x, w, bias, y, m, n, k, layout, act, s,
                        workspace);
  }
  throw std::invalid_argument("inferline::cuda::linear: unknown gemm_path");
}

void linear(const float* x, const float* w, const float* bias, float* y, std::size_t m,
            std::size_t n, std::size_t k, weight_layout layout, activation act, void* stream,
            gemm_workspace* workspace) {
  linear_with(gemm_path::automatic, x, w, bias, y, m, n, k, layout, act, stream, workspace);
}

}  // namespace inferline::cuda
