#include "io/image.h"

#include "io/ffmpeg_util.h"


#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace adafocus::io {

Image resize(const Image& image, int width, int height) {
  if (width == image.width && height == image.height) return image;
  // One cached context per thread (loader workers resize concurrently), freed when the thread ends.
  struct Cached {
    SwsContext* context = nullptr;
    ~Cached() { sws_freeContext(context); }
  };
  thread_local Cached cached;
  cached.context = sws_getCachedContext(cached.context, image.width, image.height, AV_PIX_FMT_RGB24, width, height,
                                        AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr);
  SwsContext* context = cached.context;
  if (!context) throw std::runtime_error("swscale: cannot resize");
  const PaddedRgb src(image);
  PaddedRgb dst(width, height);
  sws_scale(context, src.data, src.linesize, 0, image.height, dst.data, dst.linesize);
  return dst.to_image();
}

std::pair<int, int> short_side_size(int width, int height, int short_side) {
  if (width <= height) return {short_side, static_cast<int>(static_cast<int64_t>(short_side) * height / width)};
  return {static_cast<int>(static_cast<int64_t>(short_side) * width / height), short_side};
}

Image crop(const Image& image, int x, int y, int w, int h) {
  if (x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > image.width || y + h > image.height)
    throw std::out_of_range("crop window outside the image");
  Image out(w, h);
  for (int r = 0; r < h; ++r) std::memcpy(out.row(r), image.row(y + r) + static_cast<size_t>(x) * 3, size_t(w) * 3);
  return out;
}

void flip_horizontal(Image& image) {
  for (int y = 0; y < image.height; ++y) {
    uint8_t* r = image.row(y);
    for (int a = 0, b = image.width - 1; a < b; ++a, --b) std::swap_ranges(r + a * 3, r + a * 3 + 3, r + b * 3);
  }
}

}  // namespace adafocus::io
