#!/usr/bin/env bash
# The Python tests that drive the bindings (GIL hand-offs, capsules, futures, drain), run against
# an inferline._core built with AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Usage: scripts/sanitized_python_tests.sh [BUILD_DIR]   (default build/asan)
# BUILD_DIR defaults to the one scripts/test.sh builds the sanitized C++ tests in: the core,
# kernels and native libraries there have the same flags, so only the bindings compile here.
# CPython is not instrumented, so the sanitizer runtimes are preloaded; the module links them
# dynamically (gcc's default for a shared object). The test process imports the sanitized module
# from an overlay of this checkout's python/ folder, never an installed or in-tree _core.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
jobs="${INFERLINE_TEST_JOBS:-2}"
build="${1:-build/asan}"

# pybind11 is a build requirement only (pip's isolated build has it): fetch it when missing.
if ! "$py" -c "import pybind11" 2>/dev/null; then
  "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$("$py" - <<'PY'
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is a dependency of inferline there
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print(next(r for r in tomllib.load(f)["build-system"]["requires"] if r.startswith("pybind11")))
PY
)"
fi
cmake -S . -B "$build" -G Ninja -DINFERLINE_BUILD_PYTHON=ON -DINFERLINE_CUDA=OFF \
  -DINFERLINE_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build" -j"$jobs" --target _core

# The overlay: links to every file of python/inferline except the module, which is this build's.
overlay="$PWD/$build/python-overlay"
rm -rf "$overlay" && mkdir -p "$overlay"
cp -rs "$PWD/python/inferline" "$overlay/"
rm -f "$overlay"/inferline/_core*.so
cp "$build"/_core*.so "$overlay/inferline/"

# The binding-heavy tests: engine, registry, lifecycle and hung models in process, the server
# over HTTP (and `inferline serve` children, which inherit the preload and the overlay).
tests=(test_engine.py test_registry.py test_lifecycle.py test_hung_model.py test_server.py
  test_admission.py test_shutdown.py test_infer_awaitable.py test_loop_isolation.py)
cc="${CC:-gcc}"
export LD_PRELOAD="$("$cc" -print-file-name=libasan.so):$("$cc" -print-file-name=libubsan.so)"
# CPython leaks by design at exit; PYTHONMALLOC=malloc lets ASan see Python objects' memory too.
export ASAN_OPTIONS="detect_leaks=0" UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1"
export PYTHONMALLOC=malloc OPENBLAS_NUM_THREADS=1 PYTHONPATH="$overlay"
"$py" -c "import inferline._core as c, sys; sys.exit(not c.__file__.startswith('$overlay'))" || {
  echo "sanitized_python_tests.sh: inferline._core does not come from $overlay" >&2
  exit 1
}
"$py" -m pytest -q -p no:cacheprovider "${tests[@]/#/tests/python/}" "$@"
