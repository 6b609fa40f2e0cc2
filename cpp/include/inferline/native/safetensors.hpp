// Read-only, memory-mapped .safetensors files: the header parsed once, tensors as pointers into
// the mapping (no copy).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace inferline::native {

/// Element type of a stored tensor (the safetensors dtype names). Plain value; thread-safe.
enum class st_dtype : std::uint8_t { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

/// Bytes per element of `t`. Pure; thread-safe.
std::size_t dtype_size(st_dtype t) noexcept;

/// The safetensors name of `t` ("F32", ...). Pure; thread-safe.
const char* dtype_name(st_dtype t) noexcept;

/// One tensor inside a mapped file. `data` points into the mapping and is valid while the file
/// object lives; it is NOT necessarily aligned to the element size. Immutable; thread-safe.
struct st_tensor {
  st_dtype dtype = st_dtype::f32;      ///< element type
  std::vector<std::size_t> shape;      ///< dimensions (empty for a scalar)
  const std::byte* data = nullptr;     ///< first byte, inside the mapping
  std::size_t bytes = 0;               ///< size in bytes (= elements · dtype_size)

  /// Number of elements (1 for a scalar).
  std::size_t elements() const noexcept;
};

/// A .safetensors file mapped read-only: 8-byte little-endian header length N, N bytes of JSON
/// header, then the tensor bytes. The header is parsed by a small JSON reader that accepts the
/// full JSON grammar but keeps only what the format uses (tensor entries and the string map
/// "__metadata__"). Every offset and size is validated against the file; errors are
/// std::runtime_error naming the file and the problem. Move-only; const access is thread-safe.
class safetensors_file {
 public:
  /// Maps and parses `path`. Throws std::runtime_error on I/O or format errors.
  explicit safetensors_file(const std::string& path);
  ~safetensors_file();
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;
  /// Takes over `other`'s mapping.
  safetensors_file(safetensors_file&& other) noexcept;
  /// Unmaps the current file and takes over `other`'s mapping.
  safetensors_file& operator=(safetensors_file&& other) noexcept;

  /// The tensor called `name`; throws std::runtime_error (listing a few names) if absent.
  const st_tensor& at(const std::string& name) const;
  /// The tensor called `name`, or nullptr.
  const st_tensor* find(const std::string& name) const noexcept;
  /// All tensors by name.
  const std::map<std::string, st_tensor>& tensors() const noexcept { return tensors_; }
  /// The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Path the file was opened from.
  const std::string& path() const noexcept { return path_; }

 private:
  void unmap() noexcept;

  std::string path_;
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  std::map<std::string, st_tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Copies (and widens or narrows) `t` to float32 into `out` (resized to t.elements()).
/// Accepts F32, F16, BF16 and F64; throws std::runtime_error for other dtypes. Thread-safe.
void tensor_to_f32(const st_tensor& t, std::vector<float>& out);

}  // namespace inferline::native
