// Where a video's frames come from: a video file (FFmpeg) or a folder of JPEG frames (the official layout).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/image.h"

namespace adafocus::io {

class FrameSource {
 public:
  virtual ~FrameSource() = default;
  /// Exact number of frames.
  virtual int64_t num_frames() const = 0;
  /// Frames at 0-based `indices` (any order, repeats allowed), in the order asked, RGB; scaled so that the short side
  /// is `short_side` (0: native size). Throws adafocus::Error naming the file for frames that cannot be decoded.
  virtual std::vector<Image> read(const std::vector<int64_t>& indices, int short_side = 0) = 0;
  /// Decodes every frame and returns how many decode (check-data --full).
  virtual int64_t decode_all() = 0;
};

/// Frames already decoded (a live stream's window), read as a source.
class FrameList : public FrameSource {
 public:
  explicit FrameList(std::vector<Image> frames) : frames_(std::move(frames)) {}
  int64_t num_frames() const override { return static_cast<int64_t>(frames_.size()); }
  /// The frames as they are when `short_side` is 0 or theirs; else resized to it.
  std::vector<Image> read(const std::vector<int64_t>& indices, int short_side = 0) override;
  int64_t decode_all() override { return num_frames(); }

 private:
  std::vector<Image> frames_;
};

struct FrameFolderOptions {
  /// printf pattern of frame files, or "auto": the first of image_%05d.jpg, img_%05d.jpg, %05d.jpg, %06d.jpg found.
  std::string pattern = "auto";
  /// Number in the name of the first frame (the official layout starts at 1).
  int64_t start = 1;
  /// > 0: the frame count is known (from the list file) and the files are not counted.
  int64_t num_frames = 0;
};

/// A folder is read as JPEG frames, a file as a video. Throws adafocus::Error (missing, unreadable, not a video).
std::unique_ptr<FrameSource> open_frames(const std::string& path, const FrameFolderOptions& folder = {});

}  // namespace adafocus::io
