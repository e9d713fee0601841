#include "io/video_writer.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/ffmpeg_util.h"

namespace adafocus::io {

namespace {

// A fixed 256-colour palette: a 6x6x6 colour cube and 40 greys, which keeps grey frames smooth and boxes coloured.
// The greys (6..248) avoid the cube's black and white: with white in the palette twice, FFmpeg's GIF encoder drew
// the pixels of one of the two entries as black.
uint32_t palette_colour(int i) {
  int r, g, b;
  if (i < 216) {
    r = (i / 36) * 51, g = (i / 6 % 6) * 51, b = (i % 6) * 51;
  } else {
    r = g = b = (i - 215) * 255 / 41;
  }
  return 0xFF000000u | (uint32_t(r) << 16) | (uint32_t(g) << 8) | uint32_t(b);
}

void to_palette(const Image& image, AVFrame* frame) {
  auto* palette = reinterpret_cast<uint32_t*>(frame->data[1]);
  for (int i = 0; i < 256; ++i) palette[i] = palette_colour(i);
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* src = image.row(y);
    uint8_t* dst = frame->data[0] + y * frame->linesize[0];
    for (int x = 0; x < image.width; ++x) {
      const int r = src[3 * x], g = src[3 * x + 1], b = src[3 * x + 2];
      const int cube = (r * 5 + 127) / 255 * 36 + (g * 5 + 127) / 255 * 6 + (b * 5 + 127) / 255;
      const int grey = 215 + std::clamp(((r + g + b) * 41 + 382) / 765, 1, 40);
      auto distance = [&](int i) {
        const uint32_t c = palette_colour(i);
        const int dr = r - int(c >> 16 & 255), dg = g - int(c >> 8 & 255), db = b - int(c & 255);
        return dr * dr + dg * dg + db * db;
      };
      dst[x] = static_cast<uint8_t>(distance(grey) <= distance(cube) ? grey : cube);
    }
  }
}

}  // namespace

struct VideoWriter::Impl {
  std::string path, tmp;
  AVFormatContext* format = nullptr;
  AVCodecContext* codec = nullptr;
  AVStream* stream = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* packet = nullptr;
  SwsContext* sws = nullptr;
  int64_t next_pts = 0;
  bool closed = false;
  bool gif = false;  // PAL8 frames with a fixed palette

  ~Impl() {
    sws_freeContext(sws);
    av_packet_free(&packet);
    av_frame_free(&frame);
    avcodec_free_context(&codec);
    if (format) {
      if (format->pb) avio_closep(&format->pb);
      avformat_free_context(format);
    }
    if (!closed && !tmp.empty()) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
    }
  }

  void check(int ret, const std::string& what) const {
    if (ret < 0) throw Error(what + " (" + av_error(ret) + ")", path);
  }

  // Sends `f` (nullptr: flush) and writes every packet the encoder has ready.
  void encode(AVFrame* f) {
    check(avcodec_send_frame(codec, f), "encoding failed");
    while (true) {
      const int ret = avcodec_receive_packet(codec, packet);
      if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return;
      check(ret, "encoding failed");
      // Without a duration on the last packet, the mp4 muxer's edit list would cut the last frame off.
      if (packet->duration == 0) packet->duration = 1;  // one frame, in the codec's time base
      av_packet_rescale_ts(packet, codec->time_base, stream->time_base);
      packet->stream_index = stream->index;
      check(av_interleaved_write_frame(format, packet), "writing failed");
    }
  }
};

VideoWriter::VideoWriter(const std::string& path, int width, int height, double fps, int crf)
    : impl_(std::make_unique<Impl>()) {
  silence_ffmpeg();
  Impl& w = *impl_;
  w.path = path;
  if (width <= 0 || height <= 0 || width % 2 || height % 2)
    throw Error("video frames must have even, positive width and height", path);
  const std::string ext = std::filesystem::path(path).extension().string();
  const bool mjpeg = ext == ".avi";
  w.gif = ext == ".gif";
  if (ext != ".mp4" && ext != ".mkv" && !mjpeg && !w.gif)
    throw Error("cannot write '" + ext + "' videos", path, "use .mp4 (H.264), .mkv, .avi (MJPEG) or .gif");

  w.check(avformat_alloc_output_context2(&w.format, nullptr, nullptr, path.c_str()), "cannot create the container");
  w.format->flags |= AVFMT_FLAG_BITEXACT;
  const AVCodec* encoder = w.gif    ? avcodec_find_encoder(AV_CODEC_ID_GIF)
                           : mjpeg ? avcodec_find_encoder(AV_CODEC_ID_MJPEG)
                                   : avcodec_find_encoder_by_name("libx264");
  if (!encoder) throw Error("this FFmpeg has no encoder for " + ext + " files", path);
  w.stream = avformat_new_stream(w.format, nullptr);
  w.codec = avcodec_alloc_context3(encoder);
  w.frame = av_frame_alloc();
  w.packet = av_packet_alloc();
  if (!w.stream || !w.codec || !w.frame || !w.packet) throw Error("out of memory", path);

  const AVRational rate = av_d2q(fps, 1000);
  w.codec->width = width;
  w.codec->height = height;
  w.codec->time_base = av_inv_q(rate);
  w.codec->framerate = rate;
  w.codec->pix_fmt = w.gif ? AV_PIX_FMT_PAL8 : mjpeg ? AV_PIX_FMT_YUVJ420P : AV_PIX_FMT_YUV420P;
  w.codec->thread_count = 1;  // deterministic output; callers write several videos in parallel instead
  w.codec->flags |= AV_CODEC_FLAG_BITEXACT;
  if (w.format->oformat->flags & AVFMT_GLOBALHEADER) w.codec->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  AVDictionary* options = nullptr;
  if (!mjpeg && !w.gif) {
    av_dict_set(&options, "preset", "veryfast", 0);
    // Without macroblock-tree rate control: with it, libx264's output here depended on what the process had encoded
    // before (same frames, other bytes and pixels when videos were written in another order or thread count).
    av_dict_set(&options, "x264-params", "mbtree=0", 0);
    av_dict_set(&options, "crf", std::to_string(crf).c_str(), 0);
  } else if (mjpeg) {
    w.codec->flags |= AV_CODEC_FLAG_QSCALE;
    w.codec->global_quality = FF_QP2LAMBDA * 3;
  }
  const int ret = avcodec_open2(w.codec, encoder, &options);
  av_dict_free(&options);
  w.check(ret, "cannot open the encoder");
  w.check(avcodec_parameters_from_context(w.stream->codecpar, w.codec), "cannot set stream parameters");
  w.stream->time_base = w.codec->time_base;

  w.frame->format = w.codec->pix_fmt;
  w.frame->width = width;
  w.frame->height = height;
  w.check(av_frame_get_buffer(w.frame, 0), "out of memory");

  std::error_code ec;
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  w.tmp = path + ".tmp." + std::to_string(::getpid()) + ext;
  w.check(avio_open(&w.format->pb, w.tmp.c_str(), AVIO_FLAG_WRITE), "cannot create the file");
  w.check(avformat_write_header(w.format, nullptr), "cannot write the header");
}

VideoWriter::~VideoWriter() = default;

void VideoWriter::write(const Image& image) {
  Impl& w = *impl_;
  if (image.width != w.codec->width || image.height != w.codec->height)
    throw Error("frame size differs from the video's", w.path);
  w.check(av_frame_make_writable(w.frame), "out of memory");
  if (w.gif) {
    to_palette(image, w.frame);
    w.frame->pts = w.next_pts++;
    w.encode(w.frame);
    return;
  }
  w.sws = sws_getCachedContext(w.sws, image.width, image.height, AV_PIX_FMT_RGB24, image.width, image.height,
                               w.codec->pix_fmt, SWS_BILINEAR | SWS_ACCURATE_RND | SWS_BITEXACT, nullptr, nullptr,
                               nullptr);
  const PaddedRgb src(image);
  sws_scale(w.sws, src.data, src.linesize, 0, image.height, w.frame->data, w.frame->linesize);
  w.frame->pts = w.next_pts++;
  w.encode(w.frame);
}

void VideoWriter::close() {
  Impl& w = *impl_;
  if (w.closed) return;
  w.encode(nullptr);
  w.check(av_write_trailer(w.format), "cannot finish the file");
  avio_closep(&w.format->pb);
  std::error_code ec;
  std::filesystem::rename(w.tmp, w.path, ec);
  if (ec) throw Error("cannot rename " + w.tmp + ": " + ec.message(), w.path);
  w.closed = true;
}

}  // namespace adafocus::io
