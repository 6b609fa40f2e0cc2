// CUDA GEMM microbenchmark: the own SGEMM paths against cuBLASLt at the text encoder's serving
// shapes (MiniLM: hidden 384, QKV 1152, FFN 1536; m = packed tokens of a batch), measured in the
// same run.
//
//   build/<dir>/cuda_gemm_bench --benchmark_counters_tabular=true
//
// Each row times one path of cuda::linear_with (bias + exact GELU on the FFN-in shape, bias
// only otherwise) for m x n x k, waiting for the stream every iteration (the latency a batch
// sees), then times cuBLASLt on the same shape for the same number of iterations: counters
// `GFLOP/s`, `cublaslt_GFLOP/s` and `ratio` (this path / cuBLASLt; 1.0 means as fast). Without
// cuBLASLt the baseline columns are 0. Without a CUDA device every row is skipped with a line
// saying so.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "inferline/build_info.hpp"
#include "inferline/kernels/cuda_api.hpp"

namespace {

#ifdef INFERLINE_HAVE_CUDA
namespace cu = inferline::cuda;
namespace k = inferline::kernels;

// Timing does not depend on the values; a fixed pattern in [-0.5, 0.5) keeps them normal.
std::vector<float> pattern(std::size_t n, std::size_t salt) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = static_cast<float>((i * 7919 + salt) % 1000) / 1000.0f - 0.5f;
  }
  return v;
}

constexpr cu::gemm_path paths[] = {cu::gemm_path::own, cu::gemm_path::own_wide,
                                   cu::gemm_path::own_narrow, cu::gemm_path::cublaslt};

// Args: {m, n, k, path index into `paths`}.
void BM_cuda_gemm(benchmark::State& state) {
  if (inferline::cuda_device_count() == 0) {
    state.SkipWithError("no CUDA device: nothing to measure");
    for (auto _ : state) {
    }
    return;
  }
  const auto m = static_cast<std::size_t>(state.range(0));
  const auto n = static_cast<std::size_t>(state.range(1));
  const auto kk = static_cast<std::size_t>(state.range(2));
  const cu::gemm_path path = paths[state.range(3)];
  if (path == cu::gemm_path::cublaslt && !cu::cublaslt_available()) {
    state.SkipWithError("cuBLASLt not available");
    for (auto _ : state) {
    }
    return;
  }
  const auto act = n == 1536 ? k::activation::gelu : k::activation::none;
  const auto hx = pattern(m * kk, 1);
  const auto hw = pattern(n * kk, 2);
  const auto hb = pattern(n, 3);
  cu::device_buffer<float> x(hx.data(), hx.size()), w(hw.data(), hw.size()), b(hb.data(), n);
  cu::device_buffer<float> y(m * n);
  cu::gemm_workspace ws;
  void* stream = cu::stream_create();
  auto run = [&](cu::gemm_path p) {
    cu::linear_with(p, x.data(), w.data(), b.data(), y.data(), m, n, kk,
                    k::weight_layout::out_in, act, stream, &ws);
    cu::stream_synchronize(stream);
  };
  run(path);  // warm: plans, heuristics, workspace
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) run(path);
  const double own_secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double flop = 2.0 * static_cast<double>(m) * static_cast<double>(n) * kk;
  const auto iters = static_cast<double>(state.iterations());
  double base = 0.0;
  if (cu::cublaslt_available()) {
    run(cu::gemm_path::cublaslt);
    const auto t0 = std::chrono::steady_clock::now();
    for (benchmark::IterationCount i = 0; i < state.iterations(); ++i) {
      run(cu::gemm_path::cublaslt);
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    base = flop * iters / secs * 1e-9;
  }
  cu::stream_destroy(stream);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["cublaslt_GFLOP/s"] = base;
  state.counters["ratio"] = base > 0.0 ? (flop * iters / own_secs * 1e-9) / base : 0.0;
}

void register_all() {
  // Packed tokens of 1, 8, 32 and 64 sentences of ~16 tokens; the four MiniLM GEMMs.
  for (int path = 0; path < 4; ++path) {
    auto* b = benchmark::RegisterBenchmark("BM_cuda_gemm", BM_cuda_gemm);
    for (const std::int64_t m : {16, 128, 512, 1024}) {
      b->Args({m, 1152, 384, path});
      b->Args({m, 384, 384, path});
      b->Args({m, 1536, 384, path});
      b->Args({m, 384, 1536, path});
    }
    b->ArgNames({"m", "n", "k", "path"})->UseRealTime();
  }
}

const bool registered = (register_all(), true);
#else
void BM_cuda_gemm(benchmark::State& state) {
  state.SkipWithError("built without CUDA: nothing to measure");
  for (auto _ : state) {
  }
}
BENCHMARK(BM_cuda_gemm);
#endif

}  // namespace
