// The safetensors reader (valid files, every format error) and the native model backend: MLP,
// pooled sequence encoder, top-k head and image input against double references written here,
// run() through pooled batch blocks from several threads, and its load-time errors.
//
// Tolerance for model outputs: |y - ref| ≤ 1e-4 · (1 + |ref|) (float32 through several ops).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"
#include "inferline/build_info.hpp"
#include "inferline/kernels/convert.hpp"
#include "inferline/kernels/cuda_api.hpp"
#include "inferline/kernels/math.hpp"
#include "inferline/native/native_model.hpp"
#include "inferline/native/safetensors.hpp"
#include "inferline/request.hpp"

namespace {

namespace k = inferline::kernels;
namespace nat = inferline::native;
namespace fs = std::filesystem;

// ---- writing test files ---------------------------------------------------------------------

struct entry {
  std::string name;
  std::string dtype;
  std::vector<std::size_t> shape;
  std::vector<std::byte> bytes;
};

template <class T>
std::vector<std::byte> as_bytes(const std::vector<T>& v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

entry f32(std::string name, std::vector<std::size_t> shape, const std::vector<float>& v) {
  return {std::move(name), "F32", std::move(shape), as_bytes(v)};
}

class temp_dir {
 public:
  temp_dir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("inferline_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_raw(const std::string& path, const std::string& header,
               const std::vector<std::byte>& data, std::uint64_t header_len_override = ~0ull) {
  std::ofstream f(path, std::ios::binary);
  const std::uint64_t n = header_len_override == ~0ull ? header.size() : header_len_override;
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// Writes entries back to back in order (so a following F32 may be misaligned) with a header
// padded with spaces to a multiple of 8, as the reference implementation does.
void write_safetensors(const std::string& path, const std::vector<entry>& entries,
                       const std::string& metadata = R"({"format":"pt"})") {
  std::string h = "{";
  if (!metadata.empty()) h += R"("__metadata__":)" + metadata;
  std::vector<std::byte> data;
  for (const auto& e : entries) {
    if (h.size() > 1) h += ",";
    h += "\"" + e.name + "\":{\"dtype\":\"" + e.dtype + "\",\"shape\":[";
    for (std::size_t i = 0; i < e.shape.size(); ++i) {
      if (i != 0) h += ',';
      h += std::to_string(e.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
         std::to_string(data.size() + e.bytes.size()) + "]}";
    data.insert(data.end(), e.bytes.begin(), e.bytes.end());
  }
  h += "}";
  while ((h.size() + 8) % 8 != 0) h += ' ';
  write_raw(path, h, data);
}

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// ---- safetensors ------------------------------------------------------------------------

TEST(KernelSafetensors, ReadsTensorsMetadataAndDtypes) {
  temp_dir dir;
  const std::string path = dir.file("w.safetensors");
  const std::vector<float> a = {1.0f, -2.0f, 3.5f, 0.25f, 5.0f, 6.0f};
  std::vector<std::uint16_t> h(3), bf(3);
  const std::vector<float> hv = {0.5f, -1.0f, 65504.0f};
  k::convert_f32_to_f16(hv.data(), h.data(), 3);
  k::convert_f32_to_bf16(hv.data(), bf.data(), 3);
  write_safetensors(path,
                    {f32("a", {2, 3}, a),
                     {"odd", "U8", {3}, {std::byte{1}, std::byte{2}, std::byte{3}}},
                     f32("misaligned", {2}, {7.0f, 8.0f}),  // starts at an odd offset
                     {"h", "F16", {3}, as_bytes(h)},
                     {"b\\u00e9", "BF16", {3}, as_bytes(bf)},
                     f32("scalar", {}, {42.0f})},
                    R"({"format":"pt","note":"x\"y"})");
  const nat::safetensors_file f(path);
  ASSERT_EQ(f.tensors().size(), 6u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x\"y");
  const nat::st_tensor& ta = f.at("a");
  EXPECT_EQ(ta.dtype, nat::st_dtype::f32);
  EXPECT_EQ(ta.shape, (std::vector<std::size_t>{2, 3}));
  EXPECT_EQ(ta.elements(), 6u);
  std::vector<float> got;
  nat::tensor_to_f32(ta, got);
  EXPECT_EQ(got, a);
  nat::tensor_to_f32(f.at("misaligned"), got);
  EXPECT_EQ(got, (std::vector<float>{7.0f, 8.0f}));
  nat::tensor_to_f32(f.at("h"), got);
  EXPECT_EQ(got, hv);
  nat::tensor_to_f32(f.at("b\xc3\xa9"), got);  // \u00e9 decoded to UTF-8
  EXPECT_EQ(got[0], 0.5f);
  EXPECT_EQ(got[1], -1.0f);
  EXPECT_EQ(f.at("scalar").elements(), 1u);
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_THROW(nat::tensor_to_f32(f.at("odd"), got), std::runtime_error);
  try {
    (void)f.at("nope");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor \"nope\""), std::string::npos) << e.what();
  }
  nat::safetensors_file moved = nat::safetensors_file(path);
  EXPECT_EQ(moved.at("a").elements(), 6u);
}

void expect_load_error(const std::string& path, const std::string& needle) {
  try {
    nat::safetensors_file f(path);
    FAIL() << "expected an error containing \"" << needle << "\"";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(KernelSafetensors, EveryFormatErrorIsNamed) {
  temp_dir dir;
  const std::vector<std::byte> four(4);
  const std::string p = dir.file("bad.safetensors");
  expect_load_error(dir.file("missing.safetensors"), "cannot open");
  {
    std::ofstream f(p, std::ios::binary);
    f << "abc";
  }
  expect_load_error(p, "shorter than 8 bytes");
  write_raw(p, "{}", {}, 1000);
  expect_load_error(p, "runs past the end of the");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", four);
  expect_load_error(p, "outside the 4-byte data section");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four);
  expect_load_error(p, "4 bytes stored but 2 F32 elements declared");
  write_raw(p, R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", four);
  expect_load_error(p, "unsupported dtype \"Q4\"");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1]}})", four);
  expect_load_error(p, "needs dtype, shape and data_offsets");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four);
  expect_load_error(p, "non-negative integer");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)", four);
  expect_load_error(p, "bad safetensors header JSON");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x)", four);
  expect_load_error(p, "unexpected characters after");
  write_raw(p, R"([1,2])", four);
  expect_load_error(p, "not a JSON object");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
               R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four);
  expect_load_error(p, "listed twice");
  write_raw(p, std::string(100, '[') + std::string(100, ']'), four);
  expect_load_error(p, "nesting too deep");
}

// ---- the native model: references ---------------------------------------------------------

double ref_act(double x, k::activation a) {
  switch (a) {
    case k::activation::none: return x;
    case k::activation::relu: return x < 0 ? 0 : x;
    case k::activation::gelu: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case k::activation::gelu_tanh:
      return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  }
  return x;
}

// x [rows, in] · W + b for W stored [out, in] (out_in) or [in, out].
std::vector<double> ref_linear(const std::vector<double>& x, std::size_t rows, std::size_t in,
                               const std::vector<float>& w, const std::vector<float>& b,
                               std::size_t out, bool out_in, k::activation a) {
  std::vector<double> y(rows * out);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t j = 0; j < out; ++j) {
      double acc = b.empty() ? 0.0 : b[j];
      for (std::size_t p = 0; p < in; ++p) {
        acc += x[r * in + p] * (out_in ? w[j * in + p] : w[p * out + j]);
      }
      y[r * out + j] = ref_act(acc, a);
    }
  }
  return y;
}

void ref_softmax(std::vector<double>& x, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    double mx = -INFINITY, sum = 0;
    for (std::size_t j = 0; j < cols; ++j) mx = std::max(mx, x[r * cols + j]);
    for (std::size_t j = 0; j < cols; ++j) sum += std::exp(x[r * cols + j] - mx);
    for (std::size_t j = 0; j < cols; ++j) x[r * cols + j] = std::exp(x[r * cols + j] - mx) / sum;
  }
}

void expect_close(const float* got, const std::vector<double>& ref, const std::string& what) {
  for (std::size_t i = 0; i < ref.size(); ++i) {
    ASSERT_NEAR(got[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << what << " @" << i;
  }
}

nat::op_spec linear_op(std::string w, std::string b, k::activation a,
                     k::weight_layout layout = k::weight_layout::out_in) {
  nat::op_spec s;
  s.kind = nat::op_kind::linear;
  s.weight = std::move(w);
  s.bias = std::move(b);
  s.act = a;
  s.layout = layout;
  return s;
}

nat::op_spec simple_op(nat::op_kind kind) {
  nat::op_spec s;
  s.kind = kind;
  return s;
}

// The reference example: an MLP classifier linear+gelu, linear+gelu, linear, softmax.
struct mlp_fixture {
  static constexpr std::size_t in = 37, hidden = 64, hidden2 = 33, classes = 10;
  temp_dir dir;
  std::string path = dir.file("mlp.safetensors");
  std::vector<float> w1 = random_floats(hidden * in, 1, 0.3f), b1 = random_floats(hidden, 2);
  std::vector<float> w2 = random_floats(hidden * hidden2, 3, 0.3f), b2 = random_floats(hidden2, 4);
  std::vector<float> w3 = random_floats(hidden2 * classes, 5, 0.3f), b3 = random_floats(classes, 6);

  // w2 is stored [in, out] to exercise both layouts; w3 as F16 to exercise widening.
  explicit mlp_fixture(bool f16_last = false) {
    std::vector<entry> entries = {f32("fc1.weight", {hidden, in}, w1),
                                  f32("fc1.bias", {hidden}, b1),
                                  f32("fc2.weight", {hidden, hidden2}, w2),
                                  f32("fc2.bias", {hidden2}, b2), f32("fc3.bias", {classes}, b3)};
    if (f16_last) {
      std::vector<std::uint16_t> h(w3.size());
      k::convert_f32_to_f16(w3.data(), h.data(), w3.size());
      k::convert_f16_to_f32(h.data(), w3.data(), w3.size());  // the reference sees the rounding
      entries.push_back({"fc3.weight", "F16", {classes, hidden2}, as_bytes(h)});
    } else {
      entries.push_back(f32("fc3.weight", {classes, hidden2}, w3));
    }
    write_safetensors(path, entries);
  }

  nat::native_model_config config(std::size_t max_batch = 64) const {
    nat::native_model_config c;
    c.weights_path = path;
    c.ops = {linear_op("fc1.weight", "fc1.bias", k::activation::gelu),
             linear_op("fc2.weight", "fc2.bias", k::activation::gelu_tanh,
                       k::weight_layout::in_out),
             linear_op("fc3.weight", "fc3.bias", k::activation::none),
             simple_op(nat::op_kind::softmax)};
    c.inputs = {{"x", nat::tensor_type::f32, {in}}};
    c.outputs = {{"probs", nat::tensor_type::f32, {classes}}};
    c.max_batch_size = max_batch;
    return c;
  }

  std::vector<double> reference(const std::vector<float>& x, std::size_t n) const {
    std::vector<double> h(x.begin(), x.end());
    h = ref_linear(h, n, in, w1, b1, hidden, true, k::activation::gelu);
    h = ref_linear(h, n, hidden, w2, b2, hidden2, false, k::activation::gelu_tanh);
    h = ref_linear(h, n, hidden2, w3, b3, classes, true, k::activation::none);
    ref_softmax(h, n, classes);
    return h;
  }
};

TEST(KernelNativeModel, MlpClassifierMatchesReferenceForManyBatchSizes) {
  for (const bool f16_last : {false, true}) {
    mlp_fixture fx(f16_last);
    nat::native_model model(fx.config());
    EXPECT_EQ(model.device(), "cpu");
    EXPECT_EQ(model.platform(), "native");
    EXPECT_EQ(model.output_elements(0), mlp_fixture::classes);
    EXPECT_NE(model.describe().find("3: softmax [1, 10] -> [1, 10]"), std::string::npos)
        << model.describe();
    for (const std::size_t n : {1, 2, 7, 31, 64}) {
      const auto x = random_floats(n * mlp_fixture::in, 100 + static_cast<std::uint32_t>(n));
      std::vector<float> y(n * mlp_fixture::classes, NAN);
      model.forward(x.data(), nullptr, n, y.data());
      expect_close(y.data(), fx.reference(x, n), "batch " + std::to_string(n));
    }
  }
}

TEST(KernelNativeModel, HalfAndBfloatInputsAreWidenedOnEntry) {
  mlp_fixture fx;
  for (const auto type : {nat::tensor_type::f16, nat::tensor_type::bf16}) {
    auto cfg = fx.config();
    cfg.inputs[0].type = type;
    nat::native_model model(cfg);
    const std::size_t n = 5;
    auto x = random_floats(n * mlp_fixture::in, 7);
    std::vector<std::uint16_t> bits(x.size());
    if (type == nat::tensor_type::f16) {
      k::convert_f32_to_f16(x.data(), bits.data(), x.size());
      k::convert_f16_to_f32(bits.data(), x.data(), x.size());
    } else {
      k::convert_f32_to_bf16(x.data(), bits.data(), x.size());
      k::convert_bf16_to_f32(bits.data(), x.data(), x.size());
    }
    std::vector<float> y(n * mlp_fixture::classes);
    model.forward(bits.data(), nullptr, n, y.data());
    expect_close(y.data(), fx.reference(x, n), "16-bit input");
  }
}

// Runs `model` the way a worker does: inputs gathered in a pooled block, requests answered
// with rows of the model's output block.
std::vector<float> run_batch(nat::native_model& model, const std::vector<float>& x, std::size_t n,
                             std::size_t in, std::size_t out, int instance) {
  struct input_block {  // released even when run() throws
    inferline::block_pool* pool;
    inferline::block* blk = pool->acquire();
    ~input_block() {
      blk->release();
      pool->close();
    }
  } holder{inferline::block_pool::create({n * in * sizeof(float)})};
  inferline::block* blk = holder.blk;
  std::memcpy(blk->region(0), x.data(), n * in * sizeof(float));
  std::vector<inferline::request> reqs(n);
  std::vector<inferline::request*> ptrs;
  for (auto& r : reqs) ptrs.push_back(&r);
  inferline::batch b;
  b.size = n;
  b.requests = ptrs;
  b.inputs = blk;
  b.instance = instance;
  model.run(b);
  std::vector<float> y(n * out);
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_NE(reqs[i].output, nullptr);
    EXPECT_EQ(reqs[i].row, i);
    std::memcpy(y.data() + i * out, reqs[i].output->region(0) + i * out * sizeof(float),
                out * sizeof(float));
    reqs[i].output->release();  // what model_scheduler::finish does
  }
  return y;
}

TEST(KernelNativeModel, RunAnswersEveryRequestWithARowOfAPooledBlock) {
  mlp_fixture fx;
  nat::native_model model(fx.config(16));
  const std::size_t n = 13;
  const auto x = random_floats(n * mlp_fixture::in, 9);
  const auto y = run_batch(model, x, n, mlp_fixture::in, mlp_fixture::classes, 0);
  expect_close(y.data(), fx.reference(x, n), "run");

  // Warm-up batch: no requests, nothing handed out, no error.
  inferline::block_pool* pool = inferline::block_pool::create({n * mlp_fixture::in * 4});
  inferline::batch warm;
  warm.size = n;
  warm.inputs = pool->acquire();
  std::memset(warm.inputs->region(0), 0, n * mlp_fixture::in * 4);
  model.run(warm);
  warm.inputs->release();
  pool->close();

  // A batch above max_batch_size fails the batch with a clear message.
  std::vector<float> big(17 * mlp_fixture::in);
  try {
    (void)run_batch(model, big, 17, mlp_fixture::in, mlp_fixture::classes, 0);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds its max_batch_size 16"), std::string::npos);
  }
}

TEST(KernelNativeModel, ConcurrentInstancesGiveTheSameAnswers) {
  mlp_fixture fx;
  nat::native_model model(fx.config(32));
  const auto x = random_floats(32 * mlp_fixture::in, 11);
  const auto want = fx.reference(x, 32);
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int it = 0; it < 50; ++it) {
        const std::size_t n = 1 + static_cast<std::size_t>((it * 7 + t) % 32);
        const auto end = x.begin() + static_cast<std::ptrdiff_t>(n * mlp_fixture::in);
        const std::vector<float> xs(x.begin(), end);
        const auto y = run_batch(model, xs, n, mlp_fixture::in, mlp_fixture::classes, t);
        for (std::size_t i = 0; i < y.size(); ++i) {
          if (std::fabs(y[i] - want[i]) > 1e-4 * (1 + std::fabs(want[i]))) ++failures[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, (std::vector<int>{0, 0, 0, 0}));
}

TEST(KernelNativeModel, PooledSequenceEncoderWithMasks) {
  // Per-token linear+relu on [T, H], masked mean over tokens, layer norm, L2 normalise.
  constexpr std::size_t T = 7, H = 12, D = 9;
  temp_dir dir;
  const std::string path = dir.file("enc.safetensors");
  const auto w = random_floats(D * H, 21), b = random_floats(D, 22);
  const auto g = random_floats(D, 23), beta = random_floats(D, 24);
  write_safetensors(path, {f32("proj.weight", {D, H}, w), f32("proj.bias", {D}, b),
                           f32("ln.weight", {D}, g), f32("ln.bias", {D}, beta)});
  for (const auto mask_type : {nat::tensor_type::f32, nat::tensor_type::i64}) {
    nat::native_model_config c;
    c.weights_path = path;
    nat::op_spec ln = simple_op(nat::op_kind::layer_norm);
    ln.weight = "ln.weight";
    ln.bias = "ln.bias";
    c.ops = {linear_op("proj.weight", "proj.bias", k::activation::relu),
             simple_op(nat::op_kind::mean_pool), ln, simple_op(nat::op_kind::l2_normalize)};
    c.inputs = {{"tokens", nat::tensor_type::f32, {T, H}}, {"mask", mask_type, {T}}};
    c.outputs = {{"embedding", nat::tensor_type::f32, {D}}};
    nat::native_model model(c);
    const std::size_t n = 4;
    const auto x = random_floats(n * T * H, 25);
    std::vector<float> maskf(n * T);
    std::vector<std::int64_t> maski(n * T);
    for (std::size_t i = 0; i < n * T; ++i) {
      maski[i] = (i % T) < 2 + (i / T) ? 1 : 0;  // item b keeps its first b + 2 tokens
      maskf[i] = static_cast<float>(maski[i]);
    }
    std::vector<float> y(n * D);
    const void* mask = mask_type == nat::tensor_type::f32 ? static_cast<const void*>(maskf.data())
                                                         : maski.data();
    model.forward(x.data(), mask, n, y.data());
    std::vector<double> xs(x.begin(), x.end());
    const auto tok = ref_linear(xs, n * T, H, w, b, D, true, k::activation::relu);
    std::vector<double> ref(n * D);
    for (std::size_t bi = 0; bi < n; ++bi) {
      double cnt = 0;
      std::vector<double> pooled(D, 0.0);
      for (std::size_t t = 0; t < T; ++t) {
        if (maskf[bi * T + t] == 0) continue;
        cnt += 1;
        for (std::size_t d = 0; d < D; ++d) pooled[d] += tok[(bi * T + t) * D + d];
      }
      double mean = 0, var = 0;
      for (auto& v : pooled) mean += (v /= cnt);
      mean /= D;
      for (const auto v : pooled) var += (v - mean) * (v - mean);
      var /= D;
      double norm = 0;
      for (std::size_t d = 0; d < D; ++d) {
        pooled[d] = (pooled[d] - mean) / std::sqrt(var + 1e-5) * g[d] + beta[d];
        norm += pooled[d] * pooled[d];
      }
      for (std::size_t d = 0; d < D; ++d) ref[bi * D + d] = pooled[d] / std::sqrt(norm);
    }
    expect_close(y.data(), ref, "encoder");
  }
}

TEST(KernelNativeModel, TopKHeadHasValuesAndIndicesOutputs) {
  mlp_fixture fx;
  auto c = fx.config();
  nat::op_spec top = simple_op(nat::op_kind::topk);
  top.k = 3;
  c.ops.push_back(top);
  c.outputs = {{"scores", nat::tensor_type::f32, {3}}, {"labels", nat::tensor_type::i64, {3}}};
  nat::native_model model(c);
  const std::size_t n = 6;
  const auto x = random_floats(n * mlp_fixture::in, 31);
  std::vector<float> v(n * 3);
  std::vector<std::int64_t> ix(n * 3);
  model.forward(x.data(), nullptr, n, v.data(), ix.data());
  const auto probs = fx.reference(x, n);
  for (std::size_t r = 0; r < n; ++r) {
    std::vector<std::size_t> order(mlp_fixture::classes);
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return probs[r * 10 + a] > probs[r * 10 + b];
    });
    for (std::size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(ix[r * 3 + i], static_cast<std::int64_t>(order[i]));
      EXPECT_NEAR(v[r * 3 + i], probs[r * 10 + order[i]], 1e-5);
    }
  }
  EXPECT_THROW(model.forward(x.data(), nullptr, n, v.data()), std::invalid_argument);
}

TEST(KernelNativeModel, ImageInputNormalisedThenLinear) {
  constexpr std::size_t H = 5, W = 4, C = 3, F = H * W * C, OUT = 6;
  temp_dir dir;
  const std::string path = dir.file("img.safetensors");
  const auto w = random_floats(OUT * F, 41, 0.2f);
  write_safetensors(path, {f32("head.weight", {OUT, F}, w)});
  nat::native_model_config c;
  c.weights_path = path;
  nat::op_spec img = simple_op(nat::op_kind::image_to_float);
  img.mean = {0.485f, 0.456f, 0.406f};
  img.std_dev = {0.229f, 0.224f, 0.225f};
  img.image_out = k::image_layout::nchw;
  c.ops = {img, linear_op("head.weight", "", k::activation::none)};
  c.inputs = {{"image", nat::tensor_type::u8, {H, W, C}}};
  c.outputs = {{"logits", nat::tensor_type::f32, {OUT}}};
  nat::native_model model(c);
  const std::size_t n = 3;
  std::vector<std::uint8_t> px(n * F);
  std::mt19937 rng(42);
  for (auto& p : px) p = static_cast<std::uint8_t>(rng());
  std::vector<float> y(n * OUT);
  model.forward(px.data(), nullptr, n, y.data());
  std::vector<double> planar(n * F);
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t p = 0; p < H * W; ++p) {
      for (std::size_t ch = 0; ch < C; ++ch) {
        planar[b * F + ch * H * W + p] =
            (px[b * F + p * C + ch] / 255.0 - img.mean[ch]) / img.std_dev[ch];
      }
    }
  }
  expect_close(y.data(), ref_linear(planar, n, F, w, {}, OUT, true, k::activation::none), "image");
}

// ---- load-time errors ---------------------------------------------------------------------

void expect_config_error(const nat::native_model_config& c, const std::string& needle) {
  try {
    nat::native_model m(c);
    FAIL() << "expected an error containing \"" << needle << "\"";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(KernelNativeModel, LoadErrorsNameTheOpTensorAndShape) {
  mlp_fixture fx;
  auto c = fx.config();
  c.inputs[0].shape = {36};
  expect_config_error(c, "op 0 (linear): weight \"fc1.weight\" has shape [64, 37]; expected "
                         "[out, 36] (out_in layout)");
  c = fx.config();
  c.ops[1].weight = "fc9.weight";
  expect_config_error(c, "no tensor \"fc9.weight\"");
  c = fx.config();
  c.ops[2].bias = "fc1.bias";
  expect_config_error(c, "op 2 (linear): bias \"fc1.bias\" has shape [64] (64 elements); "
                         "expected 10 elements");
  c = fx.config();
  c.outputs[0].shape = {11};
  expect_config_error(c, "output \"probs\" is declared FP32 [11] but the ops produce FP32 [10]");
  c = fx.config();
  c.outputs.push_back({"extra", nat::tensor_type::f32, {1}});
  expect_config_error(c, "the ops produce 1 output(s)");
  c = fx.config();
  nat::op_spec top = simple_op(nat::op_kind::topk);
  top.k = 2;
  c.ops.insert(c.ops.begin() + 1, top);
  expect_config_error(c, "op 1 (topk): topk must be the last op");
  c = fx.config();
  c.ops.back() = top;
  c.ops.back().k = 11;
  expect_config_error(c, "k must be between 1 and 10, got 11");
  c = fx.config();
  c.inputs.push_back({"mask", nat::tensor_type::f32, {1}});
  expect_config_error(c, "the model has no mean_pool op");
  c = fx.config();
  c.inputs[0].type = nat::tensor_type::u8;
  expect_config_error(c, "must be FP32, FP16 or BF16");
  c = fx.config();
  c.weights_path = fx.dir.file("absent.safetensors");
  expect_config_error(c, "cannot open weights file");
  c = fx.config();
  c.device = "tpu";
  expect_config_error(c, "unknown device \"tpu\"");
  c = fx.config();
  c.device = "cuda:x";
  expect_config_error(c, "bad device \"cuda:x\"");
}

TEST(KernelNativeModel, SizesWhoseByteCountsOverflowAreRefusedAtLoad) {
  auto expect_invalid = [](const nat::native_model_config& c, const std::string& message) {
    try {
      nat::native_model m(c);
      FAIL() << "expected std::invalid_argument: " << message;
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), message);
    }
  };
  mlp_fixture fx;
  auto c = fx.config();
  c.max_batch_size = std::numeric_limits<std::size_t>::max() / 8;  // × 64 activations × 8 B
  expect_invalid(c, "native model: max_batch_size times one item's largest buffer is too large "
                    "(its size in elements or bytes overflows)");
  nat::native_model_config huge;
  huge.inputs = {{"x", nat::tensor_type::f32, {std::size_t{1} << 33, std::size_t{1} << 33}}};
  huge.outputs = {{"y", nat::tensor_type::f32, {1}}};
  expect_invalid(huge, "native model: the input shape is too large (its size in elements or "
                       "bytes overflows)");
}

TEST(KernelNativeModel, CudaRequestWithoutGpuIsAClearErrorOrAFallback) {
  if (inferline::cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  mlp_fixture fx;
  auto c = fx.config();
  c.device = "cuda";
  expect_config_error(c, "device = \"cuda\" requested but");
  expect_config_error(c, "set allow_cpu_fallback = true");
  c.allow_cpu_fallback = true;
  nat::native_model model(c);
  EXPECT_EQ(model.device(), "cpu");
  EXPECT_FALSE(model.fallback_reason().empty());
  const auto x = random_floats(2 * mlp_fixture::in, 51);
  std::vector<float> y(2 * mlp_fixture::classes);
  model.forward(x.data(), nullptr, 2, y.data());
  expect_close(y.data(), fx.reference(x, 2), "fallback");
}

TEST(KernelNativeModel, CudaDeviceMatchesCpu) {
  if (!k::have_cuda) GTEST_SKIP() << "built without CUDA";
  if (inferline::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  mlp_fixture fx(true);
  auto c = fx.config();
  c.device = "cuda";
  nat::op_spec top = simple_op(nat::op_kind::topk);
  top.k = 4;
  c.ops.push_back(top);
  c.outputs = {{"scores", nat::tensor_type::f32, {4}}, {"labels", nat::tensor_type::i64, {4}}};
  nat::native_model gpu(c);
  c.device = "cpu";
  nat::native_model cpu(c);
  EXPECT_EQ(gpu.device(), "cuda:0");
  for (const std::size_t n : {1, 9, 64}) {
    const auto x = random_floats(n * mlp_fixture::in, 61);
    std::vector<float> vg(n * 4), vc(n * 4);
    std::vector<std::int64_t> ig(n * 4), ic(n * 4);
    gpu.forward(x.data(), nullptr, n, vg.data(), ig.data());
    cpu.forward(x.data(), nullptr, n, vc.data(), ic.data());
    for (std::size_t i = 0; i < vc.size(); ++i) EXPECT_NEAR(vg[i], vc[i], 1e-5);
    EXPECT_EQ(ig, ic);
  }
}

}  // namespace
