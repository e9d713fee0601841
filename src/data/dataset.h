// A labelled video dataset from a list file: each item is one clip (frames sampled, decoded, transformed) and its
// labels. Deterministic: an item depends only on its index and the random stream it is given.
#pragma once

#include <torch/torch.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/rng.h"
#include "data/transforms.h"
#include "io/frame_cache.h"
#include "io/frame_source.h"
#include "io/list_file.h"

namespace adafocus::data {

struct DatasetOptions {
  std::string list;                       ///< list file
  std::string root;                       ///< folder the list's paths are relative to
  io::ListFormat format = io::ListFormat::Auto;
  io::FrameFolderOptions frames;          ///< frame file naming, for frame folders
  bool train = false;                     ///< random sampling and augmentation, or the deterministic test view
  int64_t segments = 16;                  ///< frames per clip (T)
  std::string sampling = "tsn";           ///< tsn | dense
  int64_t dense_stride = 0;               ///< frame step of dense sampling (0: 64 / segments)
  bool input_order = false;               ///< feed frames in the official coarse-to-fine order
  int64_t focus_segments = 0;             ///< > 0: a second, independently sampled and cropped clip (V2-TSM: 12)
  int64_t glance_every = 0;               ///< > 0: the clip is a candidate set; glance = one of every this many
  int short_side = 0;                     ///< decode frames with this short side (0: native size)
  int64_t limit = 0;                      ///< > 0: only this many entries, evenly spread over the list
  std::shared_ptr<io::FrameCache> cache;  ///< decoded frames kept across epochs (data.cache_mb), or null
  TransformOptions transform;

  /// From the data.* keys; `list_key` is data.train_list or data.val_list (relative to data.root).
  static DatasetOptions from_config(const Config& config, const std::string& list_key, bool train);
};

struct Sample {
  torch::Tensor clip;                     ///< (T, 3, S, S) normalised
  torch::Tensor focus;                    ///< (Tf, 3, S, S), or undefined without focus_segments
  std::vector<int64_t> labels;
  std::vector<int64_t> frames, focus_frames;  ///< frame indices, in the order fed
  std::vector<int64_t> glance;            ///< with glance_every: positions in `frames` of the glance frames
  CropBox crop, focus_crop;               ///< in decoded-frame coordinates (test: of the resized frame)
  int frame_width = 0, frame_height = 0;  ///< decoded frame size
};

/// A region the network saw, in a decoded frame.
struct Region {
  int64_t frame;                 ///< 0-based frame index in the video
  std::array<double, 4> box;     ///< x, y, w, h in the video's pixels
};

/// One video's regions (R, 4) in network-input pixels (input_size x input_size), spanning the clip positions
/// `region_frames` (R, F) (of the focus clip when the sample has one), as a region per frame read, in the decoded
/// frames' pixels. Test view (test_resize > 0): the centre crop of the frame resized to test_resize; training view
/// (test_resize = 0): the sample's crop of the decoded frame, maybe flipped.
std::vector<Region> frame_regions(const torch::Tensor& regions, const torch::Tensor& region_frames,
                                  const data::Sample& sample, int input_size, int test_resize);

class VideoDataset {
 public:
  /// Reads the list; a malformed line throws adafocus::Error naming file:line.
  explicit VideoDataset(DatasetOptions options);

  size_t size() const { return list_.entries.size(); }
  const io::ListEntry& entry(size_t index) const { return list_.entries.at(index); }
  const DatasetOptions& options() const { return options_; }
  /// The file or folder of an entry: root/path, or root/frames/name for the official ActivityNet layout.
  std::string resolve(const io::ListEntry& entry) const;
  /// Loads item `index`; every random choice comes from `rng`. Throws adafocus::Error naming the file.
  Sample get(size_t index, Rng& rng) const;

 private:
  DatasetOptions options_;
  io::ListFile list_;
};

/// The file or folder of a list entry: root/path, or root/frames/name for the official ActivityNet layout of comma
/// lists (data_dir/frames/<video>/image_00001.jpg).
std::string resolve_path(const std::string& root, const io::ListEntry& entry, io::ListFormat format);

/// The clip of one video file or frame folder, as `get` makes it (test view unless options.train).
Sample load_clip(const std::string& path, const DatasetOptions& options, Rng& rng, int64_t known_frames = 0);
/// The same from an open source (a video in memory, a stream's window); `name` names it in errors and in the frame
/// cache's keys.
Sample load_clip(io::FrameSource& source, const std::string& name, const DatasetOptions& options, Rng& rng);

}  // namespace adafocus::data
