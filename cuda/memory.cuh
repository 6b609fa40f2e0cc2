// Host API for device memory and streams, so C++ code (tests, the native backend) can use the
// CUDA kernels without including cuda_runtime.h. Every function throws std::runtime_error naming
// the failed CUDA call, except the noexcept release functions.
#pragma once

#include <cstddef>
#include <utility>

namespace inferline::cuda {

/// Allocates `bytes` of device memory on the current device (nullptr for 0 bytes). Thread-safe.
void* device_malloc(std::size_t bytes);

/// Frees memory from device_malloc; null is ignored; errors are swallowed (it runs in
/// destructors). Thread-safe.
void device_free(void* ptr) noexcept;

/// Allocates `bytes` of page-locked host memory (fast and truly asynchronous copies).
/// Thread-safe.
void* host_malloc_pinned(std::size_t bytes);

/// Frees memory from host_malloc_pinned; null is ignored. Thread-safe.
void host_free_pinned(void* ptr) noexcept;

/// Copies host → device. With a null `stream` the copy completes before returning; with a
/// stream it is queued on it (asynchronous only for pinned host memory). Thread-safe.
void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream = nullptr);

/// Copies device → host, same stream rules as copy_to_device. Thread-safe.
void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream = nullptr);

/// Copies device → device, queued on `stream` (null: the default stream). Thread-safe.
void copy_on_device(void* dst, const void* src, std::size_t bytes, void* stream = nullptr);

/// Sets `bytes` of device memory to the byte `value`, queued on `stream`. Thread-safe.
void memset_device(void* dst, int value, std::size_t bytes, void* stream = nullptr);

/// Creates a non-blocking stream on the current device; the handle is a cudaStream_t.
/// Thread-safe.
void* stream_create();

/// Destroys a stream from stream_create; null is ignored. Thread-safe.
void stream_destroy(void* stream) noexcept;

/// Waits until all work queued on `stream` (null: the default stream) has finished, and throws
/// if any of it failed. Thread-safe.
void stream_synchronize(void* stream);

/// Makes `device` current for the calling thread. Thread-safe (per-thread state).
void set_device(int device);

/// Owning, move-only array of `T` in device memory. Not thread-safe to mutate concurrently;
/// distinct buffers are independent.
template <class T>
class device_buffer {
 public:
  /// Empty buffer (no allocation).
  device_buffer() noexcept = default;
  /// Uninitialised device array of `count` elements.
  explicit device_buffer(std::size_t count)
      : data_(static_cast<T*>(device_malloc(count * sizeof(T)))), size_(count) {}
  /// Device copy of `count` host elements at `host`.
  device_buffer(const T* host, std::size_t count) : device_buffer(count) { upload(host); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  /// Takes ownership of `other`'s memory, leaving it empty.
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  /// Frees the current memory and takes `other`'s.
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      device_free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~device_buffer() { device_free(data_); }

  /// Device pointer (null when empty).
  T* data() const noexcept { return data_; }
  /// Number of elements.
  std::size_t size() const noexcept { return size_; }
  /// Copies size() elements from host memory into the buffer (synchronous without a stream).
  void upload(const T* host, void* stream = nullptr) {
    copy_to_device(data_, host, size_ * sizeof(T), stream);
  }
  /// Copies size() elements from the buffer to host memory (synchronous without a stream).
  void download(T* host, void* stream = nullptr) const {
    copy_to_host(host, data_, size_ * sizeof(T), stream);
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace inferline::cuda
