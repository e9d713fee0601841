// Temporal shift module (TSM, Lin et al. 2019) as in the official code: frames of a clip exchange a fraction of
// their channels with their neighbours at zero cost in FLOPs.
#pragma once

#include <torch/torch.h>

namespace adafocus::nn {

/// x: (N*T, C, H, W), the T frames of each clip adjacent -> (N*T, C, H, W).
/// Channels [0, C/div) of frame t take frame t+1's, channels [C/div, 2C/div) take frame t-1's (zeros past the clip's
/// ends), the rest stay. With a gradient to carry, built from slices and cat (autograd's own backward); without one
/// (CPU, contiguous or channels-last), one pass of copies. The result keeps x's layout.
torch::Tensor temporal_shift(const torch::Tensor& x, int64_t segments, int64_t shift_div);

}  // namespace adafocus::nn
