// Private helpers for the CPU kernels: OpenMP-SIMD reduction pragmas and ISA multiversioning.
#pragma once

// `#pragma omp simd reduction(...)` lets the compiler reassociate exactly that reduction (the
// build passes -fopenmp-simd: no OpenMP runtime, no threads), so sums and maxima vectorise
// without -ffast-math, which would break the NaN handling the kernels document.
#define INFERLINE_PRAGMA(x) _Pragma(#x)
#define INFERLINE_SIMD INFERLINE_PRAGMA(omp simd)
#define INFERLINE_SIMD_SUM(var) INFERLINE_PRAGMA(omp simd reduction(+ : var))
#define INFERLINE_SIMD_MAX(var) INFERLINE_PRAGMA(omp simd reduction(max : var))
#define INFERLINE_SIMD_OR(var) INFERLINE_PRAGMA(omp simd reduction(| : var))

// The wheel targets baseline x86-64 (SSE2); hot loops are cloned for AVX2 and AVX-512 and picked
// once at load time through an ifunc, so one binary is fast on new CPUs and runs on old ones.
// Off under sanitizers: the instrumented ifunc resolver runs during relocation, before the
// sanitizer runtime is initialised, and crashes (seen with ThreadSanitizer).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(INFERLINE_NO_CLONES) && !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
#define INFERLINE_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define INFERLINE_CPU_CLONES
#endif
