// Small helpers shared by the FFmpeg-based reader and writer (internal to src/io).
#pragma once

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
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

/// Opens the decoder of the best video stream of `format` (its stream information read) with `threads` decoding
/// threads, and allocates the packet and frame to decode with; returns the stream's index. fail(reason) must throw.
template <typename Fail>
int open_video_decoder(AVFormatContext* format, int threads, AVCodecContext*& codec, AVPacket*& packet,
                       AVFrame*& frame, const Fail& fail) {
  const AVCodec* decoder = nullptr;
  const int stream = av_find_best_stream(format, AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0);
  if (stream < 0 || !decoder) fail("no video stream FFmpeg can decode");
  codec = avcodec_alloc_context3(decoder);
  packet = av_packet_alloc();
  frame = av_frame_alloc();
  if (!codec || !packet || !frame) fail("out of memory");
  avcodec_parameters_to_context(codec, format->streams[stream]->codecpar);
  codec->thread_count = threads;
  const int ret = avcodec_open2(codec, decoder, nullptr);
  if (ret < 0) fail("cannot open the " + std::string(decoder->name) + " decoder (" + av_error(ret) + ")");
  return stream;
}

/// A decoded frame as RGB, scaled so that its short side is `short_side` (0: as decoded); `sws` is the cached
/// conversion context, kept between frames. fail(reason) must throw.
template <typename Fail>
Image frame_to_rgb(const AVFrame& frame, int short_side, SwsContext*& sws, const Fail& fail) {
  auto [w, h] = short_side > 0 ? short_side_size(frame.width, frame.height, short_side)
                               : std::pair<int, int>{frame.width, frame.height};
  sws = sws_getCachedContext(sws, frame.width, frame.height, static_cast<AVPixelFormat>(frame.format), w, h,
                             AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr);
  if (!sws) fail("cannot convert the frames to RGB");
  PaddedRgb out(w, h);
  sws_scale(sws, frame.data, frame.linesize, 0, frame.height, out.data, out.linesize);
  return out.to_image();
}

}  // namespace adafocus::io
