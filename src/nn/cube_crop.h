// AdaFocusV3's video cubes: L frames x P x P pixels cut out of a clip, and the two ways the paper gives the policy a
// gradient through the cut.
//
// A cube is placed by its corner: the top-left pixel (y, x) and the first frame t, extending V2's convention (a
// policy output a in [0, 1]^3 puts the corner at a * (H - P, W - P, T - L)). Positions may be fractional.
//   - Pixel estimator (Eq. 2-4): the cube is a trilinear interpolation of the clip at its position, so its pixels,
//     and through them the loss, are differentiable in the position. Between frames it mixes adjacent frames.
//   - Deep-feature estimator (Eq. 5-6): a cube one feature cell larger (P + s pixels, L + 1 frames, s = the local
//     network's stride) is cut around the real one without gradient; its feature map is one cell larger than the
//     cube's, and the cube's features are interpolated from it at the real cube's place. The forward value is the
//     features around the cube; the gradient with respect to the position is how the features change across a cell
//     - semantic, not a pixel difference.
//
// Legend: B videos, T frames of the clip, K cubes per video, L frames per cube, C channels, H x W frame, P cube side,
// h x w the cube's feature map.
#pragma once

#include <torch/torch.h>

namespace adafocus::nn {

/// Policy fractions (B, K, 3) as (row, column, time) in [0, 1] -> corners (B, K, 3) as (y, x, t) pixels/frames.
torch::Tensor cube_corners(const torch::Tensor& actions, int64_t height, int64_t width, int64_t frames, int64_t side,
                           int64_t length);

/// Cubes cut out of clips by trilinear sampling: clips (B, T, C, H, W), corners (B, K, 3) -> (B, K, L, C, P, P).
/// Output pixel (l, i, j) of a cube samples the clip at (t + l, y + i, x + j), so an integral corner copies the
/// pixels exactly; pixels outside the clip are zeros. Differentiable with respect to the corners (Eq. 2-4).
torch::Tensor sample_cubes(const torch::Tensor& clips, const torch::Tensor& corners, int64_t side, int64_t length);

/// Where the deep-feature estimator cuts its enlarged cubes, and where the real ones sit inside them.
struct EnlargedCubes {
  torch::Tensor corners;  ///< (B, K, 3) corners of the enlarged cubes (no gradient)
  torch::Tensor offsets;  ///< (B, K, 3) the real cubes' corners relative to them, in feature cells, in [0, 1]
                          ///< (their gradient is that of the real corners)
  int64_t side = 0, length = 0;  ///< P + stride, L + 1
};

/// Enlarged cubes around real cubes (corners (B, K, 3), with gradient). Space: as the paper, centred on the real cube
/// (half a cell more on each side, zeros beyond the frame), so that the real cube is at the fixed offset of half a
/// cell and the forward value does not depend on where it is. Time: whole frames (Choice: the paper's point is not to
/// mix frames in pixel space), from the frame at or before the real cube's start, so the offset is its fraction.
/// A cell is `stride` pixels and 1 frame (2D local networks do not subsample time).
EnlargedCubes enlarge_cubes(const torch::Tensor& corners, int64_t frames, int64_t side, int64_t length, int64_t stride);

/// Eq. 5-6: the real cubes' feature maps interpolated from the enlarged cubes' maps (N, L + 1, C, h + 1, w + 1) at
/// `offsets` (N, 3) -> (N, L, C, h, w): element (l, i, j) is the enlarged map at (l, i, j) + offsets.
torch::Tensor interpolate_cube_features(const torch::Tensor& maps, const torch::Tensor& offsets);

/// Frame-wise cubes at test time (the paper: "frames covered by earlier cubes are removed"): cube k takes the frame
/// nearest to its time position among those no earlier cube took (ties: the earlier frame), so no frame is processed
/// twice. times (B, K) continuous frame positions -> (B, K) int64 frames; needs K <= frames.
torch::Tensor assign_frames(const torch::Tensor& times, int64_t frames);

}  // namespace adafocus::nn
