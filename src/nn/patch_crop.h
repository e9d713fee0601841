// AdaFocusV2's differentiable patch crop: a policy output a in (0, 1)^2 places a P x P patch with its top-left corner
// at a * (H - P, W - P), and bilinear sampling (affine_grid + grid_sample, align_corners=False, zero padding) makes
// the patch a differentiable function of a. Output pixel j samples input pixel x1 + j exactly, so an integral corner
// gives image[y1:y1+P, x1:x1+P] and the patch never leaves the frame.
#pragma once

#include <torch/torch.h>

namespace adafocus::nn {

/// images (N, C, H, W), actions (N, 2) as (row, column) fractions in [0, 1] -> patches (N, C, P, P).
torch::Tensor crop_patches(const torch::Tensor& images, const torch::Tensor& actions, int64_t patch);

/// The pixel boxes the patches cover: actions (N, 2) -> (N, 4) as (x, y, w, h) in input coordinates.
torch::Tensor patch_boxes(const torch::Tensor& actions, int64_t height, int64_t width, int64_t patch);

}  // namespace adafocus::nn
