// The text encoder's CUDA entry point in a build without CUDA (CMake compiles this file instead
// of encoder_cuda.cpp).
#include <stdexcept>

#include "inferline/encoder/encoder.hpp"

namespace inferline::encoder {

std::unique_ptr<encoder_exec> make_cuda_encoder(std::shared_ptr<const encoder_weights> /*weights*/,
                                                const encoder_config& /*config*/,
                                                int /*device*/) {
  throw std::runtime_error("text encoder: built without CUDA");
}

}  // namespace inferline::encoder
