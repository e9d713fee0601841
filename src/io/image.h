// 8-bit RGB images, the unit the readers produce and the transforms consume. No tensors here: the data pipeline
// turns clips into tensors once, at the end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace adafocus::io {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height rows of width x 3 bytes

  Image() = default;
  Image(int w, int h) : width(w), height(h), rgb(static_cast<size_t>(w) * h * 3) {}
  uint8_t* row(int y) { return rgb.data() + static_cast<size_t>(y) * width * 3; }
  const uint8_t* row(int y) const { return rgb.data() + static_cast<size_t>(y) * width * 3; }
};

/// Bilinear resampling: Pillow's (`Image.resize(..., BILINEAR)`, what the official PIL-based transforms use,
/// antialiased when shrinking; reproduced to the level) or swscale's (same idea, +-1 level from Pillow's on 13-17% of
/// the values of 640x360 frames).
enum class Resize { kPil, kSwscale };
Image resize(const Image& image, int width, int height, Resize kind = Resize::kPil);
/// (width, height) with the short side scaled to `short_side`, the long side truncated as torchvision's Resize(int).
std::pair<int, int> short_side_size(int width, int height, int short_side);
/// The w x h window at (x, y); it must lie inside the image.
Image crop(const Image& image, int x, int y, int w, int h);
/// Mirror left-right, in place.
void flip_horizontal(Image& image);

}  // namespace adafocus::io
