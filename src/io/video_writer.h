// Writing videos through the FFmpeg libraries: H.264 in .mp4/.mkv (yuv420p), MJPEG in .avi, animated .gif (a fixed
// 256-colour palette). Output is bit-exact for the same frames (no version strings or dates), and appears under its
// name only once complete.
#pragma once

#include <memory>
#include <string>

#include "io/image.h"

namespace adafocus::io {

class VideoWriter {
 public:
  /// `crf`: H.264 constant rate factor (lower = better; 18 is visually lossless). Even width and height.
  VideoWriter(const std::string& path, int width, int height, double fps, int crf = 18);
  ~VideoWriter();  // an unclosed writer leaves no file behind
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;

  void write(const Image& frame);
  /// Flushes the encoder, writes the container trailer and renames the file into place.
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace adafocus::io
