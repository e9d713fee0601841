#include "io/live_reader.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libswscale/swscale.h>
}

#include <thread>

#include "core/error.h"
#include "io/ffmpeg_util.h"

namespace adafocus::io {

struct LiveReader::Impl {
  std::string source;
  bool realtime = false;
  std::chrono::milliseconds io_timeout{10000};
  std::atomic<bool> stopped{false};
  const std::atomic<bool>* external_stop = nullptr;
  bool halted() const { return stopped || (external_stop && *external_stop); }
  std::chrono::steady_clock::time_point deadline;  // of the read in progress
  AVFormatContext* format = nullptr;
  AVCodecContext* codec = nullptr;
  AVPacket* packet = nullptr;
  AVFrame* frame = nullptr;
  SwsContext* sws = nullptr;
  int stream = -1;
  double time_base = 0;
  int64_t first_pts = AV_NOPTS_VALUE;
  std::chrono::steady_clock::time_point started;  // wall time of the first frame, for real-time playback
  bool draining = false;

  ~Impl() {
    sws_freeContext(sws);
    av_frame_free(&frame);
    av_packet_free(&packet);
    avcodec_free_context(&codec);
    avformat_close_input(&format);
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(what, source, "check that the source plays with ffprobe, and that it is reachable from the server");
  }

  // FFmpeg asks this during blocking I/O: a stopped reader or an expired deadline ends the call.
  static int interrupted(void* opaque) {
    const Impl& v = *static_cast<const Impl*>(opaque);
    return v.halted() || std::chrono::steady_clock::now() > v.deadline;
  }

  void open() {
    format = avformat_alloc_context();
    if (!format) fail("out of memory");
    format->interrupt_callback = {&Impl::interrupted, this};
    deadline = std::chrono::steady_clock::now() + io_timeout;
    AVDictionary* options = nullptr;
    av_dict_set(&options, "rw_timeout", std::to_string(io_timeout.count() * 1000).c_str(), 0);  // microseconds
    int ret = avformat_open_input(&format, source.c_str(), nullptr, &options);
    av_dict_free(&options);
    if (ret < 0) fail("cannot open the source (" + av_error(ret) + ")");
    ret = avformat_find_stream_info(format, nullptr);
    if (ret < 0) fail("cannot read the source's stream information (" + av_error(ret) + ")");
    stream = open_video_decoder(format, /*threads=*/1, codec, packet, frame,  // 1: frames as they arrive
                                [this](const std::string& what) { fail(what); });
    time_base = av_q2d(format->streams[stream]->time_base);
  }

  // The next decoded frame into `frame`; false at the end.
  bool decode_next() {
    while (true) {
      if (halted()) return false;
      int ret = avcodec_receive_frame(codec, frame);
      if (ret == 0) return true;
      if (ret == AVERROR_EOF) return false;
      if (ret != AVERROR(EAGAIN)) fail("decoding failed (" + av_error(ret) + ")");
      if (draining) return false;
      deadline = std::chrono::steady_clock::now() + io_timeout;
      ret = av_read_frame(format, packet);
      if (ret == AVERROR_EOF) {
        avcodec_send_packet(codec, nullptr);
        draining = true;
        continue;
      }
      if (ret < 0) {
        if (halted()) return false;
        fail("the source broke off (" + av_error(ret) + ")");
      }
      if (packet->stream_index == stream) avcodec_send_packet(codec, packet);
      av_packet_unref(packet);
    }
  }
};

LiveReader::LiveReader(const std::string& source, bool realtime, std::chrono::milliseconds io_timeout,
                       const std::atomic<bool>* stop)
    : impl_(std::make_unique<Impl>()) {
  silence_ffmpeg();
  impl_->source = source;
  impl_->external_stop = stop;
  impl_->realtime = realtime;
  impl_->io_timeout = io_timeout;
  impl_->open();
}

LiveReader::~LiveReader() = default;

bool LiveReader::next(Image& image, double& seconds, int short_side) {
  Impl& v = *impl_;
  if (!v.decode_next()) return false;
  const int64_t pts = v.frame->best_effort_timestamp != AV_NOPTS_VALUE ? v.frame->best_effort_timestamp : v.frame->pts;
  if (v.first_pts == AV_NOPTS_VALUE) {
    v.first_pts = pts == AV_NOPTS_VALUE ? 0 : pts;
    v.started = std::chrono::steady_clock::now();
  }
  seconds = pts == AV_NOPTS_VALUE ? 0.0 : static_cast<double>(pts - v.first_pts) * v.time_base;
  if (v.realtime)  // a file plays at its own rate, as a camera would send it
    while (!v.halted() && std::chrono::steady_clock::now() < v.started + std::chrono::duration<double>(seconds))
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  image = frame_to_rgb(*v.frame, short_side, v.sws, [&v](const std::string& what) { v.fail(what); });
  return !v.halted();
}

void LiveReader::stop() { impl_->stopped = true; }
int LiveReader::width() const { return impl_->codec->width; }
int LiveReader::height() const { return impl_->codec->height; }

}  // namespace adafocus::io
