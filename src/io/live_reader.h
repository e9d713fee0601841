// A live source read frame after frame through FFmpeg: a stream (http, https, rtsp, rtmp) or a file played at its own
// rate (real time), for classifying what arrives. No index, no seeking: frames come in order, each with its time.
// Reads give up after an I/O timeout, and stop() ends a blocked read at once (FFmpeg's interrupt callback).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "io/image.h"

namespace adafocus::io {

class LiveReader {
 public:
  /// Opens `source` (a URL, or a file path: then played in real time when `realtime`). Throws adafocus::Error naming
  /// the source when it cannot be opened or has no video stream. `stop`, when given, ends reads as stop() does.
  LiveReader(const std::string& source, bool realtime, std::chrono::milliseconds io_timeout,
             const std::atomic<bool>* stop = nullptr);
  ~LiveReader();
  LiveReader(const LiveReader&) = delete;
  LiveReader& operator=(const LiveReader&) = delete;

  /// The next frame (RGB, scaled so that its short side is `short_side`, 0: as decoded) and its time in seconds from
  /// the source's start; false at the end. Throws adafocus::Error when the source breaks (a stream dropped).
  bool next(Image& frame, double& seconds, int short_side = 0);
  /// Ends a read in progress (from any thread); next() then returns false.
  void stop();
  int width() const;
  int height() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace adafocus::io
