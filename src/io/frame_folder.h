// Folders of JPEG frames, the layout the official code reads (frames/<video>/image_00001.jpg), through libjpeg-turbo.
#pragma once

#include "io/frame_source.h"

namespace adafocus::io {

class FrameFolder : public FrameSource {
 public:
  /// Throws adafocus::Error when the folder is missing or no frame file matches the pattern.
  explicit FrameFolder(const std::string& dir, const FrameFolderOptions& options = {});

  /// Consecutive frame files from the first one.
  int64_t num_frames() const override { return num_frames_; }
  std::vector<Image> read(const std::vector<int64_t>& indices, int short_side = 0) override;
  int64_t decode_all() override;

  /// File of 0-based frame `index`.
  std::string frame_path(int64_t index) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string dir_, pattern_;
  int64_t start_, num_frames_ = 0;
};

/// The frame-file patterns in use, tried in this order by pattern "auto".
const std::vector<std::string>& frame_patterns();

/// Decodes a JPEG file to RGB; throws adafocus::Error naming it.
Image read_jpeg(const std::string& path);
/// Encodes RGB as JPEG (quality 1-100) and writes it atomically.
void write_jpeg(const std::string& path, const Image& image, int quality = 95);

}  // namespace adafocus::io
