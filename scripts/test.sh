#!/usr/bin/env bash
# The test suite: C++ unit tests (and the CUDA sources' compile), the core tests under
# ThreadSanitizer, every C++ test under ASan+UBSan, then the Python tests against the installed
# package.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${INFERLINE_TEST_JOBS:-2}"
py="${PYTHON:-python3}"
common=(-G Ninja -DINFERLINE_BUILD_PYTHON=OFF -DINFERLINE_BUILD_TESTS=ON)

# With nvcc on the machine the CUDA sources must compile (ON makes a failure fail the build);
# CUDA tests skip themselves without a device.
cuda=OFF
if command -v nvcc >/dev/null 2>&1; then cuda=ON; fi

echo "== C++ tests (Release; CUDA kernels: $cuda) =="
cmake -S . -B build/ctest "${common[@]}" -DINFERLINE_BUILD_BENCH=ON -DINFERLINE_CUDA="$cuda" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/ctest -j"$jobs"
ctest --test-dir build/ctest --output-on-failure -j"$jobs"

echo "== C++ core tests under ThreadSanitizer =="
cmake -S . -B build/tsan "${common[@]}" -DINFERLINE_CUDA=OFF -DINFERLINE_SANITIZE=thread \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/tsan -j"$jobs"
# OpenBLAS's own thread pool is not instrumented and reports false races: one thread here.
OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  ctest --test-dir build/tsan --output-on-failure -j"$jobs" -E 'Kernel|Cuda|Native'

echo "== C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer =="
cmake -S . -B build/asan "${common[@]}" -DINFERLINE_CUDA=OFF -DINFERLINE_SANITIZE=address,undefined \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/asan -j"$jobs"
OPENBLAS_NUM_THREADS=1 ASAN_OPTIONS="detect_leaks=1" UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1" \
  ctest --test-dir build/asan --output-on-failure -j"$jobs" -E 'Cuda'

echo "== Python tests =="
"$py" -m pytest -q "$@"
