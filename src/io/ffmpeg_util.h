// Small helpers shared by the FFmpeg-based reader and writer (internal to src/io).
#pragma once

extern "C" {
#include <libavutil/error.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>
}

#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "io/image.h"

namespace adafocus::io {

inline std::string av_error(int code) {
  char buffer[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(code, buffer, sizeof(buffer));
  return buffer;
}

/// FFmpeg prints warnings and encoder statistics for every stream; we report problems ourselves, as errors that
/// name the file.
inline void silence_ffmpeg() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_level(AV_LOG_QUIET); });
}

/// An RGB24 picture in a buffer swscale may overrun: its SIMD code reads and writes whole vectors past the end of
/// rows, so it must never see an Image's exact-size vector directly.
struct PaddedRgb {
  uint8_t* data[4] = {};
  int linesize[4] = {};
  int width, height;
  PaddedRgb(int w, int h) : width(w), height(h) {
    if (av_image_alloc(data, linesize, w, h, AV_PIX_FMT_RGB24, 64) < 0) throw std::bad_alloc();
  }
  explicit PaddedRgb(const Image& image) : PaddedRgb(image.width, image.height) {
    for (int y = 0; y < height; ++y) std::memcpy(data[0] + y * linesize[0], image.row(y), size_t(width) * 3);
  }
  ~PaddedRgb() { av_freep(&data[0]); }
  PaddedRgb(const PaddedRgb&) = delete;
  PaddedRgb& operator=(const PaddedRgb&) = delete;
  Image to_image() const {
    Image out(width, height);
    for (int y = 0; y < height; ++y) std::memcpy(out.row(y), data[0] + y * linesize[0], size_t(width) * 3);
    return out;
  }
};

}  // namespace adafocus::io
