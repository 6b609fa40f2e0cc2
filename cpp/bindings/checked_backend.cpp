// A wrapper around a native backend that checks outputs declared `finite` after each batch.
#include "checked_backend.hpp"

#include <stdexcept>
#include <utility>

namespace inferline::bindings {

finite_checked_backend::finite_checked_backend(std::shared_ptr<backend> inner,
                                               const std::vector<tensor_spec>& outputs)
    : inner_(std::move(inner)) {
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    const tensor_spec& t = outputs[k];
    if (t.checks_finite()) checks_.push_back({k, t.item_bytes, t.count, t.kind, t.name});
  }
}

void finite_checked_backend::run(batch& b) {
  inner_->run(b);
  if (b.warmup() || b.requests.empty() || b.requests[0]->output == nullptr) return;
  for (const auto& c : checks_) {
    for (request* r : b.requests) {
      const std::byte* row = r->output->region(c.index) + r->row * c.item_bytes;
      if (!all_finite(row, c.count, c.kind)) {
        // The core fails the whole batch and releases the outputs its requests hold.
        throw std::runtime_error("output '" + c.name + "' contains NaN or Inf (finite check)");
      }
    }
  }
}

}  // namespace inferline::bindings
