// .safetensors reader: POSIX mmap of the file and a small recursive-descent JSON parser for
// its header (objects, arrays, strings with escapes, numbers, literals; depth-limited).
#include "inferline/native/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <utility>
#include <variant>

#include "inferline/kernels/convert.hpp"

namespace inferline::native {

std::size_t dtype_size(st_dtype t) noexcept {
  switch (t) {
    case st_dtype::f64:
    case st_dtype::i64: return 8;
    case st_dtype::f32:
    case st_dtype::i32: return 4;
    case st_dtype::f16:
    case st_dtype::bf16:
    case st_dtype::i16: return 2;
    case st_dtype::i8:
    case st_dtype::u8:
    case st_dtype::boolean: return 1;
  }
  return 1;
}

const char* dtype_name(st_dtype t) noexcept {
  switch (t) {
    case st_dtype::f64: return "F64";
    case st_dtype::f32: return "F32";
    case st_dtype::f16: return "F16";
    case st_dtype::bf16: return "BF16";
    case st_dtype::i64: return "I64";
    case st_dtype::i32: return "I32";
    case st_dtype::i16: return "I16";
    case st_dtype::i8: return "I8";
    case st_dtype::u8: return "U8";
    case st_dtype::boolean: return "BOOL";
  }
  return "?";
}

std::size_t st_tensor::elements() const noexcept {
  std::size_t n = 1;
  for (const std::size_t d : shape) n *= d;
  return n;
}

namespace {

// ---- a small JSON reader -----------------------------------------------------------------

struct json_value;
using json_object = std::vector<std::pair<std::string, json_value>>;
using json_array = std::vector<json_value>;

struct json_value {
  // null, bool, number (kept as text so integers stay exact), string, array, object
  std::variant<std::monostate, bool, std::string_view, std::string, json_array, json_object> v;
  bool is_number = false;
};

class json_parser {
 public:
  json_parser(std::string_view text, const std::string& file) : s_(text), file_(file) {}

  json_value parse_document() {
    json_value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected characters after the header object");
    return v;
  }

 private:
  static constexpr int max_depth = 64;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(file_ + ": bad safetensors header JSON at byte " +
                             std::to_string(pos_) + ": " + what);
  }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of header");
    return s_[pos_];
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  json_value parse_value(int depth) {
    if (depth > max_depth) fail("nesting too deep");
    const char c = peek();
    json_value out;
    if (c == '{') {
      ++pos_;
      json_object obj;
      if (peek() == '}') {
        ++pos_;
      } else {
        for (;;) {
          if (peek() != '"') fail("expected a string key");
          std::string key = parse_string();
          expect(':');
          obj.emplace_back(std::move(key), parse_value(depth + 1));
          const char d = peek();
          ++pos_;
          if (d == '}') break;
          if (d != ',') fail("expected ',' or '}'");
        }
      }
      out.v = std::move(obj);
    } else if (c == '[') {
      ++pos_;
      json_array arr;
      if (peek() == ']') {
        ++pos_;
      } else {
        for (;;) {
          arr.push_back(parse_value(depth + 1));
          const char d = peek();
          ++pos_;
          if (d == ']') break;
          if (d != ',') fail("expected ',' or ']'");
        }
      }
      out.v = std::move(arr);
    } else if (c == '"') {
      out.v = parse_string();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      const std::size_t start = pos_;
      while (pos_ < s_.size() && std::strchr("+-0123456789.eE", s_[pos_]) != nullptr) ++pos_;
      out.v = s_.substr(start, pos_ - start);
      out.is_number = true;
    } else if (s_.substr(pos_, 4) == "true") {
      pos_ += 4;
      out.v = true;
    } else if (s_.substr(pos_, 5) == "false") {
      pos_ += 5;
      out.v = false;
    } else if (s_.substr(pos_, 4) == "null") {
      pos_ += 4;
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return out;
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  std::uint32_t parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    std::uint32_t cp = 0;
    const auto [p, ec] = std::from_chars(s_.data() + pos_, s_.data() + pos_ + 4, cp, 16);
    if (ec != std::errc() || p != s_.data() + pos_ + 4) fail("bad \\u escape");
    pos_ += 4;
    return cp;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xd800 && cp < 0xdc00) {  // high surrogate: a low one must follow
            if (s_.substr(pos_, 2) != "\\u") fail("lone surrogate in \\u escape");
            pos_ += 2;
            const std::uint32_t lo = parse_hex4();
            if (lo < 0xdc00 || lo >= 0xe000) fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
  }

  std::string_view s_;
  const std::string& file_;
  std::size_t pos_ = 0;
};

st_dtype parse_dtype(const std::string& s, const std::string& where) {
  static const std::pair<const char*, st_dtype> names[] = {
      {"F64", st_dtype::f64}, {"F32", st_dtype::f32}, {"F16", st_dtype::f16},
      {"BF16", st_dtype::bf16}, {"I64", st_dtype::i64}, {"I32", st_dtype::i32},
      {"I16", st_dtype::i16}, {"I8", st_dtype::i8},   {"U8", st_dtype::u8},
      {"BOOL", st_dtype::boolean}};
  for (const auto& [n, t] : names) {
    if (s == n) return t;
  }
  throw std::runtime_error(where + ": unsupported dtype \"" + s + "\"");
}

std::size_t parse_size(const json_value& v, const std::string& where) {
  const auto* text = std::get_if<std::string_view>(&v.v);
  std::size_t out = 0;
  if (!v.is_number || text == nullptr) throw std::runtime_error(where + ": expected an integer");
  const auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), out);
  if (ec != std::errc() || p != text->data() + text->size()) {
    throw std::runtime_error(where + ": expected a non-negative integer, got " +
                             std::string(*text));
  }
  return out;
}

std::size_t checked_mul(std::size_t a, std::size_t b, const std::string& where) {
  if (b != 0 && a > std::numeric_limits<std::size_t>::max() / b) {
    throw std::runtime_error(where + ": size overflows");
  }
  return a * b;
}

}  // namespace

safetensors_file::safetensors_file(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw std::runtime_error(path + ": cannot open weights file: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(path + ": cannot stat weights file: " + std::strerror(err));
  }
  map_bytes_ = static_cast<std::size_t>(st.st_size);
  if (map_bytes_ < 8) {
    ::close(fd);
    throw std::runtime_error(path + ": not a safetensors file (shorter than 8 bytes)");
  }
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file referenced
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw std::runtime_error(path + ": mmap failed: " + std::strerror(errno));
  }
  try {
    const auto* base = static_cast<const std::byte*>(map_);
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) {
      header_len = (header_len << 8) | std::to_integer<std::uint64_t>(base[i]);
    }
    if (header_len > map_bytes_ - 8) {
      throw std::runtime_error(path + ": header length " + std::to_string(header_len) +
                               " runs past the end of the " + std::to_string(map_bytes_) +
                               "-byte file");
    }
    const std::string_view header(reinterpret_cast<const char*>(base + 8), header_len);
    const std::byte* data = base + 8 + header_len;
    const std::size_t data_bytes = map_bytes_ - 8 - header_len;
    json_value doc = json_parser(header, path).parse_document();
    auto* top = std::get_if<json_object>(&doc.v);
    if (top == nullptr) throw std::runtime_error(path + ": header is not a JSON object");
    for (auto& [name, value] : *top) {
      const std::string where = path + ": tensor \"" + name + "\"";
      auto* obj = std::get_if<json_object>(&value.v);
      if (name == "__metadata__") {
        if (obj == nullptr) throw std::runtime_error(path + ": __metadata__ is not an object");
        for (auto& [k, mv] : *obj) {
          if (auto* sv = std::get_if<std::string>(&mv.v)) metadata_[k] = *sv;
        }
        continue;
      }
      if (obj == nullptr) throw std::runtime_error(where + ": entry is not an object");
      const json_value* dtype = nullptr;
      const json_value* shape = nullptr;
      const json_value* offsets = nullptr;
      for (auto& [k, v] : *obj) {
        if (k == "dtype") dtype = &v;
        else if (k == "shape") shape = &v;
        else if (k == "data_offsets") offsets = &v;
      }
      if (dtype == nullptr || shape == nullptr || offsets == nullptr) {
        throw std::runtime_error(where + ": needs dtype, shape and data_offsets");
      }
      const auto* dtype_s = std::get_if<std::string>(&dtype->v);
      const auto* shape_a = std::get_if<json_array>(&shape->v);
      const auto* off_a = std::get_if<json_array>(&offsets->v);
      if (dtype_s == nullptr || shape_a == nullptr || off_a == nullptr || off_a->size() != 2) {
        throw std::runtime_error(where + ": dtype must be a string, shape an array and "
                                         "data_offsets an array of two integers");
      }
      st_tensor t;
      t.dtype = parse_dtype(*dtype_s, where);
      std::size_t elements = 1;
      for (const auto& d : *shape_a) {
        t.shape.push_back(parse_size(d, where + " shape"));
        elements = checked_mul(elements, t.shape.back(), where);
      }
      const std::size_t begin = parse_size((*off_a)[0], where + " data_offsets");
      const std::size_t end = parse_size((*off_a)[1], where + " data_offsets");
      if (begin > end || end > data_bytes) {
        throw std::runtime_error(where + ": data_offsets [" + std::to_string(begin) + ", " +
                                 std::to_string(end) + ") outside the " +
                                 std::to_string(data_bytes) + "-byte data section");
      }
      t.bytes = end - begin;
      if (t.bytes != checked_mul(elements, dtype_size(t.dtype), where)) {
        throw std::runtime_error(where + ": " + std::to_string(t.bytes) + " bytes stored but " +
                                 std::to_string(elements) + " " + dtype_name(t.dtype) +
                                 " elements declared");
      }
      t.data = data + begin;
      if (!tensors_.emplace(name, std::move(t)).second) {
        throw std::runtime_error(where + ": listed twice");
      }
    }
  } catch (...) {
    unmap();
    throw;
  }
}

safetensors_file::~safetensors_file() { unmap(); }

safetensors_file::safetensors_file(safetensors_file&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      tensors_(std::move(other.tensors_)),
      metadata_(std::move(other.metadata_)) {}

safetensors_file& safetensors_file::operator=(safetensors_file&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    tensors_ = std::move(other.tensors_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

void safetensors_file::unmap() noexcept {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
}

const st_tensor* safetensors_file::find(const std::string& name) const noexcept {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const st_tensor& safetensors_file::at(const std::string& name) const {
  if (const st_tensor* t = find(name)) return *t;
  std::string known;
  int listed = 0;
  for (const auto& [n, t] : tensors_) {
    if (listed++ == 8) {
      known += ", ...";
      break;
    }
    known += (known.empty() ? "" : ", ") + ("\"" + n + "\"");
  }
  throw std::runtime_error(path_ + ": no tensor \"" + name + "\" (the file has " +
                           std::to_string(tensors_.size()) + ": " + known + ")");
}

void tensor_to_f32(const st_tensor& t, std::vector<float>& out) {
  const std::size_t n = t.elements();
  out.resize(n);
  switch (t.dtype) {
    case st_dtype::f32:
      std::memcpy(out.data(), t.data, n * sizeof(float));
      return;
    case st_dtype::f16:
    case st_dtype::bf16: {
      std::vector<std::uint16_t> bits(n);  // copy first: the mapping may be unaligned
      std::memcpy(bits.data(), t.data, n * sizeof(std::uint16_t));
      if (t.dtype == st_dtype::f16) {
        kernels::convert_f16_to_f32(bits.data(), out.data(), n);
      } else {
        kernels::convert_bf16_to_f32(bits.data(), out.data(), n);
      }
      return;
    }
    case st_dtype::f64:
      for (std::size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, t.data + i * sizeof(double), sizeof(double));
        out[i] = static_cast<float>(d);
      }
      return;
    default:
      throw std::runtime_error(std::string("tensor of dtype ") + dtype_name(t.dtype) +
                               " cannot be used as float32 weights");
  }
}

}  // namespace inferline::native
