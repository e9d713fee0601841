// Clip transforms as the official TSN/TSM/AdaFocus code applies them, one random draw per clip so that every frame
// gets the same crop and flip: GroupMultiScaleCrop + horizontal flip in training, resize + centre crop in testing,
// then ImageNet normalisation into a float (T, 3, S, S) tensor.
#pragma once

#include <torch/torch.h>

#include <array>
#include <vector>

#include "core/rng.h"
#include "io/image.h"

namespace adafocus::data {

struct TransformOptions {
  int input_size = 224;                              ///< side of the square network input
  std::vector<double> scales{1.0, 0.875, 0.75, 0.66};  ///< crop sides as fractions of the short side
  int max_distort = 1;                               ///< |scale index of w - scale index of h| allowed
  bool flip = true;                                  ///< random horizontal flip (off for Sth-Sth and Jester)
  int test_resize = 256;                             ///< test: short side resized to this, then centre crop
  io::Resize resize = io::Resize::kPil;              ///< Pillow's bilinear as the official transforms, or swscale's
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
};

/// Where a clip is cut from, in the coordinates of the decoded frames.
struct CropBox {
  int x = 0, y = 0, width = 0, height = 0;
  bool flip = false;
  bool operator==(const CropBox& o) const {
    return x == o.x && y == o.y && width == o.width && height == o.height && flip == o.flip;
  }
};

/// Every box GroupMultiScaleCrop (fix_crop, more_fix_crop) can choose for a frame of this size: the (w, h) pairs
/// from the scales, and for each the 13 fixed offsets.
std::vector<CropBox> multiscale_crop_candidates(int frame_width, int frame_height, const TransformOptions& options);

/// A training crop: a (w, h) pair uniformly, then one of its offsets uniformly (as random.choice twice), and a flip.
CropBox sample_train_crop(int frame_width, int frame_height, const TransformOptions& options, Rng& rng);

/// Crops `box` from every frame, resizes to input_size, flips if asked, normalises: (T, 3, S, S) float.
torch::Tensor train_transform(const std::vector<io::Image>& frames, const CropBox& box, const TransformOptions& options);

/// Short side to test_resize (torchvision Resize(int)), centre crop input_size (CenterCrop), normalise.
torch::Tensor test_transform(const std::vector<io::Image>& frames, const TransformOptions& options);

/// The centre crop test_transform takes, in the coordinates of the resized frame.
CropBox test_crop(int resized_width, int resized_height, int size);

}  // namespace adafocus::data
