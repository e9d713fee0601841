#include "io/video_reader.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "core/error.h"
#include "io/ffmpeg_util.h"

namespace adafocus::io {

namespace {

constexpr const char* kVideoHint = "check the file with ffprobe; re-encode it with ffmpeg -i IN -c:v libx264 OUT.mp4";


}  // namespace

struct VideoReader::Impl {
  std::string path;  // the file, or the name of the video in memory
  std::shared_ptr<const std::string> bytes;  // the video in memory, or null
  int64_t offset = 0;                        // where the I/O context reads next in `bytes`
  AVIOContext* memory_io = nullptr;
  int decoder_threads = 1;
  AVFormatContext* format = nullptr;
  AVCodecContext* codec = nullptr;
  AVPacket* packet = nullptr;
  AVFrame* frame = nullptr;
  SwsContext* sws = nullptr;
  int stream = -1;

  // The index: frame i (presentation order) has timestamp pts[i]; keyframes and where to seek for them.
  std::vector<int64_t> pts;
  std::vector<int64_t> key_frames;    // frame indices of keyframes, ascending
  std::vector<int64_t> key_seek_ts;   // their decode timestamps, for av_seek_frame
  bool has_timestamps = true;         // false: frames are counted in decode order and reading restarts from 0
  int64_t start_ts = 0;               // earliest decode timestamp: where rewinding seeks to

  int64_t position = -1;  // index of the next frame the decoder will return; -1 = unknown (after a seek)
  bool draining = false;
  // The frames read() wants (sorted): the decoder may skip the others when no frame refers to them (B-frames), so
  // that a clip of 8 frames out of a long-GOP video does not decode every frame in full. Null: every frame decoded.
  const std::vector<int64_t>* wanted = nullptr;

  ~Impl() {
    sws_freeContext(sws);
    av_frame_free(&frame);
    av_packet_free(&packet);
    avcodec_free_context(&codec);
    close_input();
  }

  [[noreturn]] void fail(const std::string& what) const { throw Error(what, path, kVideoHint); }

  // FFmpeg's I/O callbacks over `bytes`.
  static int read_memory(void* opaque, uint8_t* buffer, int size) {
    Impl& v = *static_cast<Impl*>(opaque);
    const int64_t left = static_cast<int64_t>(v.bytes->size()) - v.offset;
    if (left <= 0) return AVERROR_EOF;
    const int n = static_cast<int>(std::min<int64_t>(left, size));
    std::memcpy(buffer, v.bytes->data() + v.offset, static_cast<size_t>(n));
    v.offset += n;
    return n;
  }
  static int64_t seek_memory(void* opaque, int64_t position, int whence) {
    Impl& v = *static_cast<Impl*>(opaque);
    const auto size = static_cast<int64_t>(v.bytes->size());
    if (whence & AVSEEK_SIZE) return size;
    const int64_t base = (whence & 3) == SEEK_CUR ? v.offset : (whence & 3) == SEEK_END ? size : 0;
    if (position < -base || position > size - base) return AVERROR(EINVAL);  // (base + position could overflow)
    return v.offset = base + position;
  }

  // Opens the container: the file, or the bytes through a custom I/O context (which FFmpeg does not free).
  int open_input() {
    if (!bytes) return avformat_open_input(&format, path.c_str(), nullptr, nullptr);
    constexpr int kBuffer = 1 << 16;
    auto* buffer = static_cast<uint8_t*>(av_malloc(kBuffer));
    offset = 0;
    memory_io = buffer ? avio_alloc_context(buffer, kBuffer, 0, this, &read_memory, nullptr, &seek_memory) : nullptr;
    format = avformat_alloc_context();
    if (!memory_io || !format) {
      av_free(buffer);
      fail("out of memory");
    }
    format->pb = memory_io;
    format->flags |= AVFMT_FLAG_CUSTOM_IO;
    return avformat_open_input(&format, path.c_str(), nullptr, nullptr);  // frees `format` on failure
  }
  void close_input() {
    avformat_close_input(&format);
    if (memory_io) {
      av_freep(&memory_io->buffer);
      avio_context_free(&memory_io);
    }
  }

  void open() {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (bytes) {
      if (bytes->empty()) fail("the video is empty");
    } else {
      if (!fs::exists(path, ec)) throw Error("file not found", path, "check the list's path and --root");
      if (fs::is_regular_file(path, ec) && fs::file_size(path, ec) == 0) fail("file is empty");
    }
    int ret = open_input();
    if (ret < 0) fail("not a readable video (" + av_error(ret) + "); truncated, or not a video file?");
    ret = avformat_find_stream_info(format, nullptr);
    if (ret < 0) fail("cannot read stream information (" + av_error(ret) + ")");
    stream = open_video_decoder(format, decoder_threads, codec, packet, frame,
                                [this](const std::string& what) { fail(what); });
    build_index();
    rewind();
  }

  // One demuxing pass over the packets of the video stream: one packet per frame in every codec we read.
  void build_index() {
    struct Packet {
      int64_t pts, dts;
      bool key;
    };
    std::vector<Packet> packets;
    while (av_read_frame(format, packet) >= 0) {  // stops at the end, or where a truncated file breaks off
      // Packets the container's edit list cuts away are flagged DISCARD; the decoder drops their frames.
      if (packet->stream_index == stream && !(packet->flags & AV_PKT_FLAG_DISCARD)) {
        const int64_t pts = packet->pts != AV_NOPTS_VALUE ? packet->pts : packet->dts;
        packets.push_back({pts, packet->dts, (packet->flags & AV_PKT_FLAG_KEY) != 0});
      }
      av_packet_unref(packet);
    }
    if (packets.empty()) fail("the video has no frames (empty or truncated file)");
    start_ts = INT64_MAX;
    for (const auto& p : packets) start_ts = std::min(start_ts, p.dts != AV_NOPTS_VALUE ? p.dts : p.pts);
    if (start_ts == AV_NOPTS_VALUE || start_ts == INT64_MAX) start_ts = 0;

    has_timestamps = std::none_of(packets.begin(), packets.end(), [](const Packet& p) { return p.pts == AV_NOPTS_VALUE; });
    if (has_timestamps) {
      for (const auto& p : packets) pts.push_back(p.pts);
      std::sort(pts.begin(), pts.end());
      has_timestamps = std::adjacent_find(pts.begin(), pts.end()) == pts.end();  // duplicates: order unknown
    }
    if (!has_timestamps) {
      pts.resize(packets.size());
      for (size_t i = 0; i < pts.size(); ++i) pts[i] = static_cast<int64_t>(i);
      key_frames = {0};
      key_seek_ts = {AV_NOPTS_VALUE};
      return;
    }
    std::vector<std::pair<int64_t, int64_t>> keys;  // (frame index, seek timestamp)
    for (const auto& p : packets)
      if (p.key) keys.emplace_back(index_of(p.pts), p.dts != AV_NOPTS_VALUE ? p.dts : p.pts);
    std::sort(keys.begin(), keys.end());
    if (keys.empty() || keys[0].first != 0) keys.insert(keys.begin(), {0, AV_NOPTS_VALUE});  // 0: from the start
    for (const auto& [index, ts] : keys) {
      key_frames.push_back(index);
      key_seek_ts.push_back(ts);
    }
  }

  // Frame index of a timestamp, or -1.
  int64_t index_of(int64_t timestamp) const {
    auto it = std::lower_bound(pts.begin(), pts.end(), timestamp);
    return it != pts.end() && *it == timestamp ? it - pts.begin() : -1;
  }

  // Back to the first frame: seek to the earliest timestamp, or reopen the file when the container cannot seek.
  void rewind() {
    if (av_seek_frame(format, stream, start_ts, AVSEEK_FLAG_BACKWARD) < 0) {
      close_input();
      int ret = open_input();
      if (ret < 0) fail("cannot reopen the video (" + av_error(ret) + ")");
      ret = avformat_find_stream_info(format, nullptr);
      if (ret < 0) fail("cannot read stream information (" + av_error(ret) + ")");
    }
    avcodec_flush_buffers(codec);
    draining = false;
    position = 0;
  }

  // Positions the decoder at or before keyframe number `k`.
  void seek_to_key(size_t k) {
    if (k == 0 || key_seek_ts[k] == AV_NOPTS_VALUE) return rewind();
    if (av_seek_frame(format, stream, key_seek_ts[k], AVSEEK_FLAG_BACKWARD) < 0) return rewind();
    avcodec_flush_buffers(codec);
    draining = false;
    position = -1;  // known again from the first decoded frame's timestamp
  }

  // Decodes the next frame into `frame`; returns its index, or -1 at the end of the stream.
  int64_t decode_next() {
    while (true) {
      int ret = avcodec_receive_frame(codec, frame);
      if (ret == 0) {
        int64_t index = has_timestamps ? index_of(frame->best_effort_timestamp) : position;
        if (has_timestamps && index < 0) index = index_of(frame->pts);
        if (index < 0) continue;  // a frame the index does not know (broken timestamps): skip it
        position = index + 1;
        return index;
      }
      if (ret == AVERROR_EOF) return -1;
      if (ret != AVERROR(EAGAIN)) fail("decoding failed (" + av_error(ret) + ")");
      if (draining) return -1;
      ret = av_read_frame(format, packet);
      if (ret < 0) {  // end of file: let the decoder output what it still holds
        avcodec_send_packet(codec, nullptr);
        draining = true;
        continue;
      }
      if (packet->stream_index == stream) {
        // Choice: frames nobody refers to are skipped unless wanted - exact, as no decoded frame depends on them.
        // Only with timestamps (a frame is known by its pts) and one decoder thread (the setting then applies to this
        // very packet).
        if (wanted && has_timestamps && codec->thread_count == 1)
          codec->skip_frame = std::binary_search(wanted->begin(), wanted->end(), index_of(packet->pts))
                                  ? AVDISCARD_DEFAULT
                                  : AVDISCARD_NONREF;
        avcodec_send_packet(codec, packet);  // a broken packet just yields no frame
      }
      av_packet_unref(packet);
    }
  }

  Image convert(int short_side) {
    return frame_to_rgb(*frame, short_side, sws, [this](const std::string& what) { fail(what); });
  }
};

VideoReader::VideoReader(const std::string& path, int decoder_threads) : impl_(std::make_unique<Impl>()) {
  silence_ffmpeg();
  impl_->path = path;
  impl_->decoder_threads = decoder_threads;
  impl_->open();
}

VideoReader::VideoReader(std::shared_ptr<const std::string> bytes, const std::string& name, int decoder_threads)
    : impl_(std::make_unique<Impl>()) {
  silence_ffmpeg();
  impl_->path = name;
  impl_->bytes = std::move(bytes);
  impl_->decoder_threads = decoder_threads;
  impl_->open();
}

VideoReader::~VideoReader() = default;

int64_t VideoReader::num_frames() const { return static_cast<int64_t>(impl_->pts.size()); }
int VideoReader::width() const { return impl_->codec->width; }
int VideoReader::height() const { return impl_->codec->height; }
double VideoReader::fps() const {
  const AVRational rate = impl_->format->streams[impl_->stream]->avg_frame_rate;
  return rate.den > 0 ? av_q2d(rate) : 0.0;
}

std::vector<Image> VideoReader::read(const std::vector<int64_t>& indices, int short_side) {
  Impl& v = *impl_;
  const int64_t n = num_frames();
  for (int64_t i : indices)
    if (i < 0 || i >= n)
      throw Error("frame " + std::to_string(i) + " out of range: the video has " + std::to_string(n) + " frames",
                  v.path);
  std::vector<int64_t> wanted(indices);
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());

  std::map<int64_t, Image> decoded;
  v.wanted = &wanted;
  struct Unset {
    Impl& v;
    ~Unset() { v.wanted = nullptr, v.codec->skip_frame = AVDISCARD_DEFAULT; }
  } unset{v};
  for (int64_t target : wanted) {
    if (decoded.count(target)) continue;
    // Seek when the target is behind the decoder or a keyframe lies between them; otherwise decode forward.
    const size_t k = std::upper_bound(v.key_frames.begin(), v.key_frames.end(), target) - v.key_frames.begin() - 1;
    if (v.position < 0 || target < v.position || v.key_frames[k] > v.position) v.seek_to_key(k);
    bool from_start = v.position == 0;
    while (true) {
      const int64_t index = v.decode_next();
      if (index > target && !from_start) {  // the seek overshot (inexact container index): decode from the start
        v.rewind();
        from_start = true;
        continue;
      }
      if (index < 0 || index > target)
        v.fail("frame " + std::to_string(target) + " of " + std::to_string(n) +
               " cannot be decoded (truncated or corrupt file?)");
      if (std::binary_search(wanted.begin(), wanted.end(), index) && !decoded.count(index))
        decoded.emplace(index, v.convert(short_side));
      if (index == target) break;
    }
  }
  std::vector<Image> out;
  out.reserve(indices.size());
  for (int64_t i : indices) out.push_back(decoded.at(i));
  return out;
}

int64_t VideoReader::decode_all() {
  impl_->rewind();
  int64_t count = 0;
  while (impl_->decode_next() >= 0) ++count;
  impl_->rewind();
  return count;
}

}  // namespace adafocus::io
