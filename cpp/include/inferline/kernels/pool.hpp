// CPU masked mean pooling over the token axis.
#pragma once

#include <cstddef>

namespace inferline::kernels {

/// y[b, :] = Σ_t mask[b, t]·x[b, t, :] / Σ_t mask[b, t] for x [batch, tokens, hidden] and mask
/// [batch, tokens] (float weights, usually 0/1 from an attention mask; null means all ones).
/// Tokens whose mask is 0 are skipped entirely (NaN in padding does not leak); a row whose mask
/// sums to 0 gives zeros (sentence-transformers clamps the count to 1e-9). `y` must not alias
/// `x`. Single-threaded on the caller's thread; thread-safe for distinct outputs.
void masked_mean_pool(const float* x, const float* mask, float* y, std::size_t batch,
                      std::size_t tokens, std::size_t hidden);

}  // namespace inferline::kernels
