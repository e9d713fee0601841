#include "nn/temporal_shift.h"

#include "nn/kernels.h"

namespace adafocus::nn {

torch::Tensor temporal_shift(const torch::Tensor& x, int64_t segments, int64_t shift_div) {
  TORCH_CHECK(x.dim() == 4, "temporal_shift: expected (N*T, C, H, W), got ", x.sizes());
  TORCH_CHECK(segments > 0 && x.size(0) % segments == 0, "temporal_shift: batch ", x.size(0),
              " is not a multiple of the ", segments, " segments per clip");
  TORCH_CHECK(shift_div >= 2, "temporal_shift: shift_div must be >= 2, got ", shift_div);
  const int64_t n = x.size(0) / segments, c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t fold = c / shift_div;
  if (use_shift_copy(x)) return shift_copy(x, segments, fold);  // (no gradient to carry)
  // A channels-last x is shifted in its own layout, as (N, T, H, W, C), so that the result stays channels-last: a
  // convolution would otherwise convert it back, a copy of the whole map.
  const bool last = x.is_contiguous(torch::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  const int64_t dim = last ? 4 : 2;  // the channels
  const auto v = last ? x.permute({0, 2, 3, 1}).view({n, segments, h, w, c}) : x.view({n, segments, c, h, w});
  const auto pad = torch::zeros(last ? std::vector<int64_t>{n, 1, h, w, fold} : std::vector<int64_t>{n, 1, fold, h, w},
                                x.options());
  // frame t <- frame t+1 (the last frame gets zeros)
  const auto from_next = torch::cat({v.slice(1, 1).slice(dim, 0, fold), pad}, 1);
  // frame t <- frame t-1 (the first frame gets zeros)
  const auto from_prev = torch::cat({pad, v.slice(1, 0, segments - 1).slice(dim, fold, 2 * fold)}, 1);
  const auto out = torch::cat({from_next, from_prev, v.slice(dim, 2 * fold)}, dim);
  return last ? out.view({n * segments, h, w, c}).permute({0, 3, 1, 2}) : out.view({n * segments, c, h, w});
}

}  // namespace adafocus::nn
