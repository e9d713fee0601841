// make-list: a list file and classInd.txt from a folder tree <root>/<class>/<video file or frame folder>.
#pragma once

#include <cstdint>
#include <string>

#include "io/frame_source.h"

namespace adafocus::data {

struct MakeListOptions {
  std::string root;             ///< the tree to scan
  std::string out;              ///< folder for the lists and classInd.txt
  double val_fraction = 0.0;    ///< > 0: split each class into train.txt and val.txt; else list.txt
  uint64_t seed = 0;            ///< fixes the split
  io::FrameFolderOptions frames;
};

struct MakeListSummary {
  int64_t classes = 0, train = 0, val = 0;
  std::string format;  ///< video or frames
};

/// Classes are the sorted sub-folder names (label = position); paths in the lists are relative to root. Throws
/// adafocus::Error for an empty tree, or one mixing video files and frame folders.
MakeListSummary make_list(const MakeListOptions& options);

}  // namespace adafocus::data
