// check-data: every line of a list checked the way training would use it, every problem reported with its line.
#pragma once

#include <string>
#include <vector>

#include "io/frame_source.h"
#include "io/list_file.h"

namespace adafocus::data {

struct CheckOptions {
  std::string list, root;
  io::ListFormat format = io::ListFormat::Auto;
  io::FrameFolderOptions frames;
  int64_t num_classes = 0;  ///< labels must be < this (0: only >= 0 is checked)
  int64_t min_frames = 1;   ///< fewer frames is a problem
  bool full = false;        ///< decode every frame, not only the first, middle and last
  int threads = 2;
};

struct CheckReport {
  size_t lines = 0;  ///< list lines checked (not counting blank and comment lines)
  std::vector<io::ListProblem> problems;  ///< sorted by line
};

/// Checks format, existence, decoding, frame count and labels of every line. Never throws for what the files
/// contain: each problem becomes a report line.
CheckReport check_data(const CheckOptions& options);

}  // namespace adafocus::data
