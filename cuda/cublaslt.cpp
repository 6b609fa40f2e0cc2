// cuBLASLt through dlopen: the few entry points a float32 GEMM needs, declared here with the
// ABI of cublasLt.h (stable from CUDA 11 to 13) so that building needs no cuBLAS header and the
// binary links no cuBLAS library.
#include "cublaslt.hpp"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace inferline::cuda::cublaslt {
namespace {

// ---- the slice of cublasLt.h we use ------------------------------------------------------
using status_t = int;                      // cublasStatus_t; 0 is CUBLAS_STATUS_SUCCESS
using handle_t = struct lt_context*;       // cublasLtHandle_t
using desc_t = struct lt_matmul_desc*;     // cublasLtMatmulDesc_t
using layout_t = struct lt_matrix_layout*;  // cublasLtMatrixLayout_t
using pref_t = struct lt_preference*;      // cublasLtMatmulPreference_t

struct algo_t {  // cublasLtMatmulAlgo_t
  std::uint64_t data[8];
};
struct heuristic_t {  // cublasLtMatmulHeuristicResult_t
  algo_t algo;
  std::size_t workspace_size;
  status_t state;
  float waves_count;
  int reserved[4];
};

constexpr int compute_32f = 68;           // CUBLAS_COMPUTE_32F
constexpr int r_32f = 0;                  // CUDA_R_32F
constexpr int op_n = 0;                   // CUBLAS_OP_N
constexpr int op_t = 1;                   // CUBLAS_OP_T
constexpr int desc_transa = 3;            // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int desc_transb = 4;            // CUBLASLT_MATMUL_DESC_TRANSB
constexpr int desc_epilogue = 7;          // CUBLASLT_MATMUL_DESC_EPILOGUE
constexpr int desc_bias_pointer = 8;      // CUBLASLT_MATMUL_DESC_BIAS_POINTER
constexpr std::uint32_t ep_default = 1;   // CUBLASLT_EPILOGUE_DEFAULT
constexpr std::uint32_t ep_relu = 2;      // CUBLASLT_EPILOGUE_RELU
constexpr std::uint32_t ep_bias = 4;      // CUBLASLT_EPILOGUE_BIAS
constexpr int pref_max_workspace = 1;     // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int pref_align_a = 5;           // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES; B-D +1..3

struct api {
  status_t (*create)(handle_t*);
  std::size_t (*get_version)();
  status_t (*desc_create)(desc_t*, int, int);
  status_t (*desc_destroy)(desc_t);
  status_t (*desc_set)(desc_t, int, const void*, std::size_t);
  status_t (*layout_create)(layout_t*, int, std::uint64_t, std::uint64_t, std::int64_t);
  status_t (*layout_destroy)(layout_t);
  status_t (*pref_create)(pref_t*);
  status_t (*pref_destroy)(pref_t);
  status_t (*pref_set)(pref_t, int, const void*, std::size_t);
  status_t (*heuristic)(handle_t, desc_t, layout_t, layout_t, layout_t, layout_t, pref_t, int,
                        heuristic_t*, int*);
  status_t (*matmul)(handle_t, desc_t, const void*, const void*, layout_t, const void*, layout_t,
                     const void*, const void*, layout_t, void*, layout_t, const algo_t*, void*,
                     std::size_t, cudaStream_t);
};

struct library {
  bool ok = false;
  api fn{};
  std::string status;
};

template <class F>
bool resolve(void* lib, const char* name, F& out, std::string& missing) {
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    missing += missing.empty() ? name : std::string(", ") + name;
    return false;
  }
  out = reinterpret_cast<F>(sym);
  return true;
}

// Where the nvidia-cublas wheel puts the library, relative to site-packages: this code lives in
// site-packages/inferline/_core*.so, so the wheel's folders are two levels up from it.
std::vector<std::string> candidates() {
  std::vector<std::string> out = {"libcublasLt.so.13", "libcublasLt.so.12"};
  Dl_info info{};
  if (dladdr(reinterpret_cast<const void*>(&candidates), &info) != 0 &&
      info.dli_fname != nullptr) {
    std::error_code ec;
    const auto self = std::filesystem::weakly_canonical(info.dli_fname, ec);
    if (!ec) {
      const auto site = self.parent_path().parent_path();
      out.push_back((site / "nvidia/cu13/lib/libcublasLt.so.13").string());
      out.push_back((site / "nvidia/cublas/lib/libcublasLt.so.12").string());
    }
  }
  return out;
}

library load() {
  library l;
  std::vector<std::string> names;
  if (const char* env = std::getenv("INFERLINE_CUBLASLT"); env != nullptr && *env != '\0') {
    const std::string v = env;
    if (v == "0" || v == "off" || v == "OFF") {
      l.status = "disabled by INFERLINE_CUBLASLT=" + v;
      return l;
    }
    names.push_back(v);
  } else {
    names = candidates();
  }
  std::string tried;
  for (const std::string& name : names) {
    // RTLD_LOCAL: cuBLASLt's symbols stay out of the global namespace. Never closed: the
    // resolved pointers live as long as the process.
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      tried += (tried.empty() ? "" : "; ") + name;
      continue;
    }
    std::string missing;
    api& f = l.fn;
    bool all = resolve(lib, "cublasLtCreate", f.create, missing);
    all &= resolve(lib, "cublasLtGetVersion", f.get_version, missing);
    all &= resolve(lib, "cublasLtMatmulDescCreate", f.desc_create, missing);
    all &= resolve(lib, "cublasLtMatmulDescDestroy", f.desc_destroy, missing);
    all &= resolve(lib, "cublasLtMatmulDescSetAttribute", f.desc_set, missing);
    all &= resolve(lib, "cublasLtMatrixLayoutCreate", f.layout_create, missing);
    all &= resolve(lib, "cublasLtMatrixLayoutDestroy", f.layout_destroy, missing);
    all &= resolve(lib, "cublasLtMatmulPreferenceCreate", f.pref_create, missing);
    all &= resolve(lib, "cublasLtMatmulPreferenceDestroy", f.pref_destroy, missing);
    all &= resolve(lib, "cublasLtMatmulPreferenceSetAttribute", f.pref_set, missing);
    all &= resolve(lib, "cublasLtMatmulAlgoGetHeuristic", f.heuristic, missing);
    all &= resolve(lib, "cublasLtMatmul", f.matmul, missing);
    if (!all) {
      tried += (tried.empty() ? "" : "; ") + name + " (missing " + missing + ")";
      continue;
    }
    l.ok = true;
    l.status = "loaded " + name + " (cuBLASLt " + std::to_string(f.get_version()) + ")";
    return l;
  }
  l.status = "no cuBLASLt found (tried " + tried + ")";
  return l;
}

const library& lib() {
  static const library l = load();  // thread-safe initialisation (magic statics)
  return l;
}

void check(status_t s, const char* call) {
  if (s != 0) {
    throw std::runtime_error(std::string("inferline::cuda::cublaslt: ") + call +
                             " failed with cublasStatus " + std::to_string(s));
  }
}

/// Owns the descriptors of one call; destroyed on every path out.
struct call_descriptors {
  const api& f;
  desc_t desc = nullptr;
  layout_t a = nullptr, b = nullptr, d = nullptr;
  pref_t pref = nullptr;
  explicit call_descriptors(const api& fn) : f(fn) {}
  call_descriptors(const call_descriptors&) = delete;
  call_descriptors& operator=(const call_descriptors&) = delete;
  ~call_descriptors() {
    if (pref != nullptr) f.pref_destroy(pref);
    if (d != nullptr) f.layout_destroy(d);
    if (b != nullptr) f.layout_destroy(b);
    if (a != nullptr) f.layout_destroy(a);
    if (desc != nullptr) f.desc_destroy(desc);
  }
};

using shape_key = std::tuple<int, std::size_t, std::size_t, std::size_t, int, std::uint32_t,
                             std::size_t, std::uint32_t>;
struct cached_algo {
  bool found = false;
  algo_t algo{};
};
constexpr std::size_t max_cached_shapes = 8192;  // packed batches make many m; bound the map

// Largest power of two ≤ 256 dividing the address. cuBLASLt's heuristic assumes 256-byte
// aligned matrices unless told otherwise, and may pick a kernel a less aligned one breaks.
std::uint32_t alignment(const void* p) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t align = 256;
  while (align > 4 && a % align != 0) align >>= 1;
  return align;
}

std::mutex cache_mutex;  // guards handles and algos
std::map<int, handle_t> handles;  // per device (null: creation failed); never destroyed
std::map<shape_key, cached_algo> algos;

}  // namespace

bool available() noexcept {
  try {
    return lib().ok;
  } catch (...) {
    return false;
  }
}

std::string status() { return lib().status; }

bool matmul(const float* x, const float* w, const float* bias, float* y, std::size_t m,
            std::size_t n, std::size_t k, kernels::weight_layout layout, epilogue ep,
            void* workspace, std::size_t workspace_bytes, void* stream) {
  const library& l = lib();
  if (!l.ok || m == 0 || n == 0 || k == 0) return false;
  const api& f = l.fn;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  // Row-major y[m, n] is column-major yᵀ [n, m]; yᵀ = op(W)ᵀ · xᵀ, so A is W and B is x, both
  // read as the column-major transposes of their row-major storage.
  const bool out_in = layout == kernels::weight_layout::out_in;
  const int transa = out_in ? op_t : op_n;  // out_in: W [n, k] is col-major [k, n]; op T → n×k
  const int transb = op_n;                  // x [m, k] is col-major [k, m]
  std::uint32_t epi = ep == epilogue::relu ? ep_relu : ep_default;
  if (bias != nullptr) epi = ep == epilogue::relu ? (ep_relu | ep_bias) : ep_bias;

  call_descriptors c(f);
  check(f.desc_create(&c.desc, compute_32f, r_32f), "cublasLtMatmulDescCreate");
  check(f.desc_set(c.desc, desc_transa, &transa, sizeof(transa)), "set TRANSA");
  check(f.desc_set(c.desc, desc_transb, &transb, sizeof(transb)), "set TRANSB");
  check(f.desc_set(c.desc, desc_epilogue, &epi, sizeof(epi)), "set EPILOGUE");
  if (bias != nullptr) {
    check(f.desc_set(c.desc, desc_bias_pointer, &bias, sizeof(bias)), "set BIAS_POINTER");
  }
  const auto mi = static_cast<std::uint64_t>(m);
  const auto ni = static_cast<std::uint64_t>(n);
  const auto ki = static_cast<std::uint64_t>(k);
  if (out_in) {
    check(f.layout_create(&c.a, r_32f, ki, ni, static_cast<std::int64_t>(k)), "layout A");
  } else {
    check(f.layout_create(&c.a, r_32f, ni, ki, static_cast<std::int64_t>(n)), "layout A");
  }
  check(f.layout_create(&c.b, r_32f, ki, mi, static_cast<std::int64_t>(k)), "layout B");
  check(f.layout_create(&c.d, r_32f, ni, mi, static_cast<std::int64_t>(n)), "layout D");

  const std::uint32_t align = std::min({alignment(x), alignment(w), alignment(y)});
  const shape_key key{device, m, n, k, static_cast<int>(layout), epi, workspace_bytes, align};
  handle_t handle = nullptr;
  cached_algo chosen;
  {
    const std::lock_guard<std::mutex> lock(cache_mutex);
    auto h = handles.find(device);
    if (h == handles.end()) {
      // A library this driver cannot run (say cuBLASLt 13 on an older driver) fails here: the
      // device is remembered without a handle and callers fall back to their own kernel.
      handle_t created = nullptr;
      if (f.create(&created) != 0) created = nullptr;
      h = handles.emplace(device, created).first;
    }
    handle = h->second;
    if (handle == nullptr) return false;
    if (auto it = algos.find(key); it != algos.end()) {
      chosen = it->second;
    } else {
      check(f.pref_create(&c.pref), "cublasLtMatmulPreferenceCreate");
      const std::uint64_t ws = workspace_bytes;
      check(f.pref_set(c.pref, pref_max_workspace, &ws, sizeof(ws)), "set MAX_WORKSPACE_BYTES");
      for (int which = 0; which < 4; ++which) {
        check(f.pref_set(c.pref, pref_align_a + which, &align, sizeof(align)),
              "set MIN_ALIGNMENT");
      }
      heuristic_t result{};
      int returned = 0;
      const status_t s =
          f.heuristic(handle, c.desc, c.a, c.b, c.d, c.d, c.pref, 1, &result, &returned);
      chosen.found = s == 0 && returned > 0 && result.state == 0;
      chosen.algo = result.algo;
      if (algos.size() >= max_cached_shapes) algos.clear();
      algos.emplace(key, chosen);
    }
  }
  if (!chosen.found) return false;
  const float alpha = 1.0f;
  const float beta = 0.0f;
  check(f.matmul(handle, c.desc, &alpha, w, c.a, x, c.b, &beta, y, c.d, y, c.d, &chosen.algo,
                 workspace, workspace_bytes, static_cast<cudaStream_t>(stream)),
        "cublasLtMatmul");
  return true;
}

}  // namespace inferline::cuda::cublaslt
