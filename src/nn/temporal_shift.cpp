#include "nn/temporal_shift.h"

namespace adafocus::nn {

torch::Tensor temporal_shift(const torch::Tensor& x, int64_t segments, int64_t shift_div) {
  TORCH_CHECK(x.dim() == 4, "temporal_shift: expected (N*T, C, H, W), got ", x.sizes());
  TORCH_CHECK(segments > 0 && x.size(0) % segments == 0, "temporal_shift: batch ", x.size(0),
              " is not a multiple of the ", segments, " segments per clip");
  TORCH_CHECK(shift_div >= 2, "temporal_shift: shift_div must be >= 2, got ", shift_div);
  const int64_t n = x.size(0) / segments, c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t fold = c / shift_div;
  auto v = x.view({n, segments, c, h, w});  // (N, T, C, H, W)
  using torch::indexing::Slice;
  auto pad = [&](int64_t channels) { return torch::zeros({n, 1, channels, h, w}, x.options()); };
  // frame t <- frame t+1 (the last frame gets zeros)
  auto from_next = torch::cat({v.index({Slice(), Slice(1), Slice(0, fold)}), pad(fold)}, 1);
  // frame t <- frame t-1 (the first frame gets zeros)
  auto from_prev = torch::cat({pad(fold), v.index({Slice(), Slice(0, -1), Slice(fold, 2 * fold)})}, 1);
  auto rest = v.index({Slice(), Slice(), Slice(2 * fold)});
  return torch::cat({from_next, from_prev, rest}, 2).view({n * segments, c, h, w});
}

}  // namespace adafocus::nn
