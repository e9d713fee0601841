#include "io/image.h"

#include "io/ffmpeg_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace adafocus::io {

namespace {

// Pillow's resampling (Resample.c, Pillow 9): a separable convolution with the triangle filter, widened by the
// scale when shrinking; weights normalised per output pixel, then in 22-bit fixed point; the horizontal pass first,
// each pass rounded and clipped to 8 bits. Each step is Pillow's, so that the result is equal to the level.
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Weights {
  int taps = 0;                  // weights per output pixel (some trailing ones 0)
  std::vector<int> first, count;  // the input pixels each output pixel reads: [first, first + count)
  std::vector<int32_t> weight;   // out_size x taps, fixed point
};

Weights pil_weights(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size, filter_scale = std::max(scale, 1.0);
  const double support = filter_scale;  // the triangle's support is 1
  Weights w;
  w.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  w.first.resize(out_size);
  w.count.resize(out_size);
  w.weight.assign(static_cast<size_t>(out_size) * w.taps, 0);
  std::vector<double> k(w.taps);
  const double inverse = 1.0 / filter_scale;  // Pillow multiplies by the inverse (not the same bits as dividing)
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(0, static_cast<int>(center - support + 0.5));  // C truncation, as Pillow
    const int n = std::min(in_size, static_cast<int>(center + support + 0.5)) - lo;
    double total = 0.0;
    for (int i = 0; i < n; ++i) {
      const double t = std::abs((i + lo - center + 0.5) * inverse);
      k[i] = t < 1.0 ? 1.0 - t : 0.0;
      total += k[i];
    }
    for (int i = 0; i < n; ++i) {
      const double v = total != 0.0 ? k[i] / total : k[i];
      w.weight[static_cast<size_t>(o) * w.taps + i] = static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    w.first[o] = lo;
    w.count[o] = n;
  }
  return w;
}

uint8_t clip8(int64_t v) {
  if (v >= (int64_t{1} << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// One pass along x (horizontal) or y; `out` has the new size along that axis.
void pil_pass(const Image& in, Image& out, bool horizontal) {
  const Weights w = pil_weights(horizontal ? in.width : in.height, horizontal ? out.width : out.height);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const int o = horizontal ? x : y;
      const int32_t* k = &w.weight[static_cast<size_t>(o) * w.taps];
      int64_t sum[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
      for (int i = 0; i < w.count[o]; ++i) {
        const uint8_t* p = horizontal ? in.row(y) + (w.first[o] + i) * 3 : in.row(w.first[o] + i) + x * 3;
        for (int c = 0; c < 3; ++c) sum[c] += int64_t{p[c]} * k[i];
      }
      for (int c = 0; c < 3; ++c) out.row(y)[x * 3 + c] = clip8(sum[c]);
    }
}

Image resize_pil(const Image& image, int width, int height) {
  Image tmp;
  const Image* src = &image;
  if (width != image.width) {  // Pillow skips a pass whose size does not change
    tmp = Image(width, image.height);
    pil_pass(image, tmp, true);
    src = &tmp;
  }
  if (height == src->height) return tmp;
  Image out(width, height);
  pil_pass(*src, out, false);
  return out;
}

}  // namespace

Image resize(const Image& image, int width, int height, Resize kind) {
  if (width == image.width && height == image.height) return image;
  if (kind == Resize::kPil) return resize_pil(image, width, height);
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
