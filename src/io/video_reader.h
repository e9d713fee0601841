// Video files through the FFmpeg libraries: any container and codec FFmpeg reads (mp4/H.264, MPEG-4, VP9/webm,
// MJPEG/avi, ...). Opening indexes the file in one demuxing pass (no decoding): the exact frame count and the
// keyframes. Reading a set of frames seeks to the keyframe before each run of wanted frames and decodes forward.
// A video held in memory (an upload) is read the same way, through an FFmpeg I/O context over its bytes.
#pragma once

#include <memory>
#include <string>

#include "io/frame_source.h"

namespace adafocus::io {

class VideoReader : public FrameSource {
 public:
  /// Throws adafocus::Error for a missing, unreadable or empty file, or one without a video stream.
  explicit VideoReader(const std::string& path, int decoder_threads = 1);
  /// A video in memory; `name` names it in errors. The bytes are shared, not copied.
  VideoReader(std::shared_ptr<const std::string> bytes, const std::string& name, int decoder_threads = 1);
  ~VideoReader() override;

  int64_t num_frames() const override;
  std::vector<Image> read(const std::vector<int64_t>& indices, int short_side = 0) override;
  int64_t decode_all() override;

  int width() const;
  int height() const;
  double fps() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace adafocus::io
