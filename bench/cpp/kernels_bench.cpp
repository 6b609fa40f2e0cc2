// Kernel microbenchmarks: GFLOP/s of the fused linear layer against plain cblas_sgemm measured
// in the same run, GB/s of the bandwidth-bound kernels, and the CUDA kernels when a GPU exists.
//
//   build-kernels/kernels_bench --benchmark_counters_tabular=true
//
// Linear rows carry their own baseline: after timing linear() the benchmark times plain
// cblas_sgemm (no bias, no activation) for the same shape and iteration count and reports
// `sgemm_GFLOP/s` and `ratio` (fused / plain; 1.0 means the epilogue is free). The separate
// BM_sgemm_plain and BM_sgemm_then_libm_epilogue rows give the baseline and a naive unfused
// epilogue (std::erf per element after the product) as ordinary rows too.
// Args for the linear rows: {m, n, k, openblas_threads}.
#include <benchmark/benchmark.h>
#include "inferline/kernels/blas.hpp"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "inferline/build_info.hpp"
#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/cuda_api.hpp"
#include "inferline/kernels/linear.hpp"
#include "inferline/kernels/norm.hpp"
#include "inferline/kernels/pool.hpp"
#include "inferline/kernels/softmax.hpp"
#include "inferline/kernels/topk.hpp"

namespace {

namespace k = inferline::kernels;
using benchmark::Counter;

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct linear_case {
  std::size_t m, n, k;
  std::vector<float> x, w, b, y;
  explicit linear_case(const benchmark::State& state)
      : m(static_cast<std::size_t>(state.range(0))),
        n(static_cast<std::size_t>(state.range(1))),
        k(static_cast<std::size_t>(state.range(2))),
        x(random_floats(m * k, 1)),
        w(random_floats(n * k, 2)),
        b(random_floats(n, 3)),
        y(m * n) {
    k::set_blas_threads(static_cast<int>(state.range(3)));
  }
  double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * k; }
  void sgemm() {
    INFERLINE_BLAS(cblas_sgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
                static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, x.data(),
                static_cast<blasint>(k), w.data(), static_cast<blasint>(k), 0.0f, y.data(),
                static_cast<blasint>(n));
  }
};

void linear_args(benchmark::internal::Benchmark* b) {
  // Serving batch sizes through a BERT-base-sized layer, a wide MLP layer, and a square GEMM;
  // OpenBLAS with 1 thread (one worker per core) and 2 threads (this VM's cores).
  for (const int threads : {1, 2}) {
    for (const int m : {1, 32, 128, 512}) b->Args({m, 768, 768, threads});
    b->Args({128, 3072, 768, threads});
    b->Args({256, 1024, 1024, threads});
    b->Args({1024, 1024, 1024, threads});
  }
  b->ArgNames({"m", "n", "k", "thr"});
  // Wall time: OpenBLAS's own threads do work the benchmark thread's CPU clock does not see,
  // and the in-row sgemm baseline is timed with a wall clock too.
  b->UseRealTime();
}

void BM_linear_fused(benchmark::State& state, k::activation act) {
  linear_case c(state);
  const auto f0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    k::linear(c.x.data(), c.w.data(), c.b.data(), c.y.data(), c.m, c.n, c.k,
              k::weight_layout::out_in, act);
    benchmark::DoNotOptimize(c.y.data());
    benchmark::ClobberMemory();
  }
  const double fused_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
  // Same-run baseline: plain sgemm for as many iterations, timed outside the benchmark's clock.
  const auto iters = state.iterations();
  const auto t0 = std::chrono::steady_clock::now();
  for (benchmark::IterationCount i = 0; i < iters; ++i) {
    c.sgemm();
    benchmark::DoNotOptimize(c.y.data());
    benchmark::ClobberMemory();
  }
  const double base_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double base_gflops = c.flops() * static_cast<double>(iters) / base_s * 1e-9;
  state.counters["GFLOP"] = Counter(c.flops() * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["sgemm_GFLOP/s"] = base_gflops;
  state.counters["ratio"] = base_s / fused_s;  // fused GFLOP/s over plain sgemm GFLOP/s
}

void BM_sgemm_plain(benchmark::State& state) {
  linear_case c(state);
  for (auto _ : state) {
    c.sgemm();
    benchmark::DoNotOptimize(c.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP"] = Counter(c.flops() * 1e-9, Counter::kIsIterationInvariantRate);
}

void BM_sgemm_then_libm_epilogue(benchmark::State& state) {
  linear_case c(state);
  for (auto _ : state) {
    c.sgemm();
    for (std::size_t i = 0; i < c.m; ++i) {
      for (std::size_t j = 0; j < c.n; ++j) {
        const float v = c.y[i * c.n + j] + c.b[j];
        c.y[i * c.n + j] = 0.5f * v * (1.0f + std::erf(v * 0.70710678f));
      }
    }
    benchmark::DoNotOptimize(c.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP"] = Counter(c.flops() * 1e-9, Counter::kIsIterationInvariantRate);
}

BENCHMARK_CAPTURE(BM_linear_fused, gelu, k::activation::gelu)->Apply(linear_args);
BENCHMARK_CAPTURE(BM_linear_fused, relu, k::activation::relu)
    ->Args({128, 768, 768, 1})
    ->Args({128, 768, 768, 2})
    ->ArgNames({"m", "n", "k", "thr"})
    ->UseRealTime();
BENCHMARK(BM_sgemm_plain)->Apply(linear_args);
BENCHMARK(BM_sgemm_then_libm_epilogue)
    ->Args({128, 768, 768, 1})
    ->Args({128, 3072, 768, 1})
    ->ArgNames({"m", "n", "k", "thr"})
    ->UseRealTime();

void BM_bias_gelu_epilogue(benchmark::State& state) {
  const auto m = static_cast<std::size_t>(state.range(0));
  const auto n = static_cast<std::size_t>(state.range(1));
  auto y = random_floats(m * n, 4);
  const auto b = random_floats(n, 5);
  for (auto _ : state) {
    k::bias_activation(y.data(), m, n, b.data(), k::activation::gelu);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GB"] = Counter(2.0 * 4.0 * static_cast<double>(m * n) * 1e-9,
                                   Counter::kIsIterationInvariantRate);
  state.counters["Gelem"] =
      Counter(static_cast<double>(m * n) * 1e-9, Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_bias_gelu_epilogue)->Args({128, 768})->Args({128, 3072})->Args({1024, 4096});

// ---- bandwidth kernels: GB/s counts bytes read + written once each --------------------------

void set_bytes(benchmark::State& state, double bytes) {
  state.counters["GB"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
}

void BM_softmax(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const auto x = random_floats(rows * cols, 6);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    k::softmax(x.data(), y.data(), rows, cols);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 8.0 * static_cast<double>(x.size()));
}
BENCHMARK(BM_softmax)
    ->Args({32, 1000})
    ->Args({256, 1000})
    ->Args({64, 32000})
    ->ArgNames({"rows", "cols"});

void BM_layer_norm(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const auto x = random_floats(rows * cols, 7);
  const auto g = random_floats(cols, 8);
  const auto b = random_floats(cols, 9);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    k::layer_norm(x.data(), g.data(), b.data(), y.data(), rows, cols, 1e-5f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 8.0 * static_cast<double>(x.size()));
}
BENCHMARK(BM_layer_norm)
    ->Args({128, 768})
    ->Args({4096, 768})
    ->Args({128, 4096})
    ->ArgNames({"rows", "cols"});

void BM_l2_normalize(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const auto x = random_floats(rows * cols, 10);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    k::l2_normalize(x.data(), y.data(), rows, cols);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 8.0 * static_cast<double>(x.size()));
}
BENCHMARK(BM_l2_normalize)->Args({128, 384})->Args({4096, 768})->ArgNames({"rows", "cols"});

void BM_masked_mean_pool(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  const auto tokens = static_cast<std::size_t>(state.range(1));
  const std::size_t hidden = 768;
  const auto x = random_floats(batch * tokens * hidden, 11);
  std::vector<float> mask(batch * tokens, 1.0f);
  std::vector<float> y(batch * hidden);
  for (auto _ : state) {
    k::masked_mean_pool(x.data(), mask.data(), y.data(), batch, tokens, hidden);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 4.0 * static_cast<double>(x.size() + mask.size() + y.size()));
}
BENCHMARK(BM_masked_mean_pool)->Args({32, 128})->Args({64, 512})->ArgNames({"batch", "tokens"});

void BM_topk(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const auto kk = static_cast<std::size_t>(state.range(2));
  const auto x = random_floats(rows * cols, 12);
  std::vector<float> v(rows * kk);
  std::vector<std::int64_t> ix(rows * kk);
  for (auto _ : state) {
    k::topk(x.data(), rows, cols, kk, v.data(), ix.data());
    benchmark::DoNotOptimize(v.data());
    benchmark::DoNotOptimize(ix.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 4.0 * static_cast<double>(x.size()));
}
BENCHMARK(BM_topk)
    ->Args({64, 1000, 5})
    ->Args({64, 32000, 10})
    ->Args({64, 32000, 100})
    ->ArgNames({"rows", "cols", "k"});

void BM_image_u8_to_f32(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto layout = static_cast<k::image_layout>(state.range(1));
  const std::size_t h = 224, w = 224, c = 3;
  std::vector<std::uint8_t> img(n * h * w * c);
  std::mt19937 rng(13);
  for (auto& p : img) p = static_cast<std::uint8_t>(rng());
  const float mean[] = {0.485f, 0.456f, 0.406f};
  const float sd[] = {0.229f, 0.224f, 0.225f};
  std::vector<float> out(img.size());
  for (auto _ : state) {
    k::image_u8_to_f32(img.data(), n, h, w, c, mean, sd, out.data(), layout);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 5.0 * static_cast<double>(img.size()));
}
BENCHMARK(BM_image_u8_to_f32)->Args({8, 0})->Args({8, 1})->ArgNames({"n", "nchw"});

template <class In, class Out, void (*fn)(const In*, Out*, std::size_t)>
void BM_convert(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  std::vector<In> in(count);
  if constexpr (sizeof(In) == 4) {
    in = random_floats(count, 14);
  } else {
    std::mt19937 rng(15);
    for (auto& v : in) v = static_cast<In>(rng() & 0x7bffu);  // finite halves
  }
  std::vector<Out> out(count);
  for (auto _ : state) {
    fn(in.data(), out.data(), count);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, static_cast<double>(count * (sizeof(In) + sizeof(Out))));
}
BENCHMARK(BM_convert<float, std::uint16_t, k::convert_f32_to_f16>)->Arg(1 << 16)->Arg(1 << 22);
BENCHMARK(BM_convert<std::uint16_t, float, k::convert_f16_to_f32>)->Arg(1 << 16)->Arg(1 << 22);
BENCHMARK(BM_convert<float, std::uint16_t, k::convert_f32_to_bf16>)->Arg(1 << 16)->Arg(1 << 22);
BENCHMARK(BM_convert<std::uint16_t, float, k::convert_bf16_to_f32>)->Arg(1 << 16)->Arg(1 << 22);

// ---- CUDA: registered only when the build has CUDA and a device is visible ------------------

#ifdef INFERLINE_HAVE_CUDA
namespace cu = inferline::cuda;

// Each iteration launches and waits for the stream, so times include launch latency: the
// figure a serving batch sees. Real time, since the CPU mostly waits.
void BM_cuda_linear(benchmark::State& state) {
  const auto m = static_cast<std::size_t>(state.range(0));
  const auto n = static_cast<std::size_t>(state.range(1));
  const auto kk = static_cast<std::size_t>(state.range(2));
  const auto hx = random_floats(m * kk, 1);
  const auto hw = random_floats(n * kk, 2);
  const auto hb = random_floats(n, 3);
  cu::device_buffer<float> x(hx.data(), hx.size()), w(hw.data(), hw.size()), b(hb.data(), n);
  cu::device_buffer<float> y(m * n);
  void* stream = cu::stream_create();
  for (auto _ : state) {
    cu::linear(x.data(), w.data(), b.data(), y.data(), m, n, kk, k::weight_layout::out_in,
               k::activation::gelu, stream);
    cu::stream_synchronize(stream);
  }
  cu::stream_destroy(stream);
  state.counters["GFLOP"] =
      Counter(2.0 * static_cast<double>(m * n * kk) * 1e-9, Counter::kIsIterationInvariantRate);
}

void BM_cuda_softmax(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const auto hx = random_floats(rows * cols, 6);
  cu::device_buffer<float> x(hx.data(), hx.size()), y(hx.size());
  void* stream = cu::stream_create();
  for (auto _ : state) {
    cu::softmax(x.data(), y.data(), rows, cols, stream);
    cu::stream_synchronize(stream);
  }
  cu::stream_destroy(stream);
  set_bytes(state, 8.0 * static_cast<double>(hx.size()));
}

void BM_cuda_layer_norm(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const auto hx = random_floats(rows * cols, 7);
  cu::device_buffer<float> x(hx.data(), hx.size()), y(hx.size());
  void* stream = cu::stream_create();
  for (auto _ : state) {
    cu::layer_norm(x.data(), nullptr, nullptr, y.data(), rows, cols, 1e-5f, stream);
    cu::stream_synchronize(stream);
  }
  cu::stream_destroy(stream);
  set_bytes(state, 8.0 * static_cast<double>(hx.size()));
}

void BM_cuda_f32_to_f16(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  const auto hx = random_floats(count, 14);
  cu::device_buffer<float> x(hx.data(), count);
  cu::device_buffer<std::uint16_t> y(count);
  void* stream = cu::stream_create();
  for (auto _ : state) {
    cu::convert_f32_to_f16(x.data(), y.data(), count, stream);
    cu::stream_synchronize(stream);
  }
  cu::stream_destroy(stream);
  set_bytes(state, 6.0 * static_cast<double>(count));
}

const bool cuda_registered = [] {
  if (inferline::cuda_device_count() == 0) return false;
  benchmark::RegisterBenchmark("BM_cuda_linear_gelu", BM_cuda_linear)
      ->Args({32, 768, 768})
      ->Args({512, 768, 768})
      ->Args({1024, 1024, 1024})
      ->Args({4096, 4096, 4096})
      ->ArgNames({"m", "n", "k"})
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_cuda_softmax", BM_cuda_softmax)
      ->Args({256, 1000})
      ->Args({4096, 32000})
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_cuda_layer_norm", BM_cuda_layer_norm)
      ->Args({4096, 768})
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_cuda_f32_to_f16", BM_cuda_f32_to_f16)
      ->Arg(1 << 24)
      ->UseRealTime();
  return true;
}();
#endif

}  // namespace
