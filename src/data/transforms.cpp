#include "data/transforms.h"

#include <cmath>

#include "core/error.h"

namespace adafocus::data {

namespace {

// (w, h) pairs of GroupMultiScaleCrop._sample_crop_size: sides int(base * scale), snapped to the input size when
// within 3 px, pairs whose scale indices differ by at most max_distort.
std::vector<std::pair<int, int>> crop_sizes(int frame_width, int frame_height, const TransformOptions& o) {
  const int base = std::min(frame_width, frame_height);
  std::vector<int> sides;
  for (double s : o.scales) {
    const int side = static_cast<int>(base * s);
    sides.push_back(std::abs(side - o.input_size) < 3 ? o.input_size : side);
  }
  std::vector<std::pair<int, int>> pairs;
  for (size_t i = 0; i < sides.size(); ++i)      // i: height index
    for (size_t j = 0; j < sides.size(); ++j)    // j: width index
      if (std::abs(static_cast<int>(i) - static_cast<int>(j)) <= o.max_distort) pairs.emplace_back(sides[j], sides[i]);
  return pairs;
}

// fill_fix_offset(more_fix_crop=True): corners, centre, edge centres and quarter points on a 4x4 step grid.
std::vector<std::pair<int, int>> fixed_offsets(int frame_width, int frame_height, int crop_w, int crop_h) {
  const int w = (frame_width - crop_w) / 4, h = (frame_height - crop_h) / 4;
  return {{0, 0},         {4 * w, 0},     {0, 4 * h},     {4 * w, 4 * h}, {2 * w, 2 * h},
          {0, 2 * h},     {4 * w, 2 * h}, {2 * w, 4 * h}, {2 * w, 0},     {1 * w, 1 * h},
          {3 * w, 1 * h}, {1 * w, 3 * h}, {3 * w, 3 * h}};
}

// Writes normalised CHW floats of `image` (input_size square) into `out`.
void normalise_into(const io::Image& image, const TransformOptions& o, float* out) {
  const size_t plane = static_cast<size_t>(image.width) * image.height;
  for (int c = 0; c < 3; ++c) {
    const float scale = 1.0f / (255.0f * o.std[c]), shift = o.mean[c] / o.std[c];
    float* dst = out + c * plane;
    const uint8_t* src = image.rgb.data() + c;
    for (size_t i = 0; i < plane; ++i) dst[i] = static_cast<float>(src[3 * i]) * scale - shift;
  }
}

torch::Tensor stack(const std::vector<io::Image>& frames, const TransformOptions& o,
                    const std::function<io::Image(const io::Image&)>& transform) {
  const int64_t s = o.input_size;
  auto out = torch::empty({static_cast<int64_t>(frames.size()), 3, s, s});
  for (size_t t = 0; t < frames.size(); ++t) {
    const io::Image image = transform(frames[t]);
    normalise_into(image, o, out[static_cast<int64_t>(t)].data_ptr<float>());
  }
  return out;
}

}  // namespace

std::vector<CropBox> multiscale_crop_candidates(int frame_width, int frame_height, const TransformOptions& o) {
  std::vector<CropBox> boxes;
  for (const auto& [w, h] : crop_sizes(frame_width, frame_height, o))
    for (const auto& [x, y] : fixed_offsets(frame_width, frame_height, w, h)) boxes.push_back({x, y, w, h, false});
  return boxes;
}

CropBox sample_train_crop(int frame_width, int frame_height, const TransformOptions& o, Rng& rng) {
  const auto pairs = crop_sizes(frame_width, frame_height, o);
  const auto [w, h] = pairs[static_cast<size_t>(rng.below(static_cast<int64_t>(pairs.size())))];
  if (w > frame_width || h > frame_height)
    throw Error("frames of " + std::to_string(frame_width) + "x" + std::to_string(frame_height) +
                    " are smaller than the crop " + std::to_string(w) + "x" + std::to_string(h),
                "", "lower data.input_size or decode at a larger data.short_side");
  const auto offsets = fixed_offsets(frame_width, frame_height, w, h);
  const auto [x, y] = offsets[static_cast<size_t>(rng.below(static_cast<int64_t>(offsets.size())))];
  return {x, y, w, h, o.flip && rng.coin()};
}

torch::Tensor train_transform(const std::vector<io::Image>& frames, const CropBox& box, const TransformOptions& o) {
  return stack(frames, o, [&](const io::Image& frame) {
    io::Image image = io::resize(io::crop(frame, box.x, box.y, box.width, box.height), o.input_size, o.input_size, o.resize);
    if (box.flip) io::flip_horizontal(image);
    return image;
  });
}

CropBox test_crop(int resized_width, int resized_height, int size) {
  // torchvision CenterCrop: int(round((H - h) / 2)), Python's round-half-to-even
  const int x = static_cast<int>(std::nearbyint((resized_width - size) / 2.0));
  const int y = static_cast<int>(std::nearbyint((resized_height - size) / 2.0));
  return {x, y, size, size, false};
}

torch::Tensor test_transform(const std::vector<io::Image>& frames, const TransformOptions& o) {
  return stack(frames, o, [&](const io::Image& frame) {
    const auto [w, h] = io::short_side_size(frame.width, frame.height, o.test_resize);
    if (w < o.input_size || h < o.input_size)
      throw Error("test_resize " + std::to_string(o.test_resize) + " is smaller than input_size " +
                  std::to_string(o.input_size), "", "set data.test_resize >= data.input_size");
    const CropBox box = test_crop(w, h, o.input_size);
    return io::crop(io::resize(frame, w, h, o.resize), box.x, box.y, box.width, box.height);
  });
}

}  // namespace adafocus::data
