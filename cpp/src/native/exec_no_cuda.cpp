// The native model's CUDA entry points in a build without CUDA (CMake compiles this file
// instead of exec_cuda.cpp). The constructor never selects a CUDA device in such a build, so
// only the destructor's free_device_weights() and the workspace deleter are ever reached.
#include <stdexcept>

#include "plan.hpp"

namespace inferline::native {

struct native_model::device_workspace {};

void native_model::device_workspace_deleter::operator()(device_workspace* ws) const noexcept {
  delete ws;
}

namespace {

[[noreturn]] void no_cuda() {
  throw std::logic_error("native model: CUDA path called in a build without CUDA");
}

}  // namespace

void native_model::select_device() const { no_cuda(); }

void native_model::upload_to_device() { no_cuda(); }

void native_model::free_device_weights() noexcept {}

void native_model::compute_cuda(workspace& /*ws*/, const std::byte* /*in*/,
                                const std::byte* /*mask*/, std::size_t /*n*/, float* /*out*/,
                                std::int64_t* /*indices*/) {
  no_cuda();
}

}  // namespace inferline::native
