// Device memory, pinned host memory, copies and streams behind a cuda_runtime-free header.
#include "memory.cuh"

#include "cuda_check.cuh"

namespace inferline::cuda {

void* device_malloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  CUDA_CHECK(cudaMalloc(&ptr, bytes));
  return ptr;
}

void device_free(void* ptr) noexcept {
  if (ptr == nullptr) return;
  if (cudaFree(ptr) != cudaSuccess) (void)cudaGetLastError();
}

void* host_malloc_pinned(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  CUDA_CHECK(cudaMallocHost(&ptr, bytes));
  return ptr;
}

void host_free_pinned(void* ptr) noexcept {
  if (ptr == nullptr) return;
  if (cudaFreeHost(ptr) != cudaSuccess) (void)cudaGetLastError();
}

namespace {

void copy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind, void* stream) {
  if (bytes == 0) return;
  if (stream == nullptr) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
  } else {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, detail::as_stream(stream)));
  }
}

}  // namespace

void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream) {
  copy(dst, src, bytes, cudaMemcpyHostToDevice, stream);
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream) {
  copy(dst, src, bytes, cudaMemcpyDeviceToHost, stream);
}

void copy_on_device(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (bytes == 0) return;
  CUDA_CHECK(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, detail::as_stream(stream)));
}

void memset_device(void* dst, int value, std::size_t bytes, void* stream) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, detail::as_stream(stream)));
}

void* stream_create() {
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void stream_destroy(void* stream) noexcept {
  if (stream == nullptr) return;
  if (cudaStreamDestroy(detail::as_stream(stream)) != cudaSuccess) (void)cudaGetLastError();
}

void stream_synchronize(void* stream) {
  CUDA_CHECK(cudaStreamSynchronize(detail::as_stream(stream)));
}

void set_device(int device) { CUDA_CHECK(cudaSetDevice(device)); }

}  // namespace inferline::cuda
