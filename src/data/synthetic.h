// The built-in benchmark: Cluttered Moving Fashion-MNIST videos, generated from Debian's dataset-fashion-mnist.
//
// Each video shows one Fashion-MNIST item moving smoothly over a background cluttered with fragments of other items,
// and the item is visible only during one run of frames: the informative region is small and moves (spatial
// redundancy) and many frames carry nothing (temporal redundancy). Variants:
//   appearance  label = the item's class (10 classes); a low-resolution glance can find the item but hardly read it
//   motion      label = the direction the item moves (right, left, down, up); the class is irrelevant
// Train videos use Fashion-MNIST's train split, val videos its test split. Everything follows from the seed.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config.h"

namespace adafocus::data {

struct SyntheticOptions {
  std::string out;                              ///< output folder
  int64_t train = 1000, val = 200;              ///< videos per split
  int64_t calib = 0;                            ///< videos of a held-out split (calib.txt) drawn as the training
                                                ///< ones but never trained on: for fitting early-exit thresholds
  uint64_t seed = 0;
  std::string variant = "appearance";           ///< appearance | motion
  int size = 128;                               ///< frame side, pixels
  int frames = 32;                              ///< frames per video
  std::string format = "video";                 ///< video (H.264 .mp4) | frames (JPEG folders)
  double fps = 8.0;
  // Sizes and speeds are pixels at a 128-pixel frame and scale with `size`.
  std::vector<double> item_size{32.0, 40.0};    ///< item side: at most 10% of the frame's area
  std::vector<double> visible{0.3, 0.7};        ///< fraction of the frames in which the item is visible
  std::vector<double> speed{1.0, 2.5};          ///< pixels per frame
  std::vector<int64_t> clutter{8, 12};          ///< fragments of other items in the background
  std::vector<double> fragment{8.0, 12.0};      ///< fragment side
  double noise = 0.05;                          ///< Gaussian noise sigma (intensity 0-1)
  int crf = 18;                                 ///< H.264 quality
  int threads = 2;                              ///< videos written in parallel
  std::string source = "/usr/share/datasets/fashion-mnist";  ///< {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

  /// From the synthetic.* keys (out, counts, seed and threads are set by the caller).
  static SyntheticOptions from_config(const Config& config);
};

/// Writes out/videos/*.mp4 (or out/frames/<video>/image_%05d.jpg), out/train.txt, out/val.txt (and out/calib.txt),
/// out/classInd.txt
/// and out/meta.jsonl (per video: label, class, visible frames and the item's box in every frame). `progress` is
/// called with the number of videos written so far.
void make_synthetic(const SyntheticOptions& options, const std::function<void(int64_t)>& progress = {});

/// Single Fashion-MNIST items of the train split, drawn as the benchmark draws them (item_size, scaled to `size`) at
/// random places on noisy `side` x `side` canvases with a few clutter fragments: images (N, 3, side, side)
/// normalised with ImageNet statistics and labels (N). They pretrain the benchmark's networks, as ImageNet weights
/// do the papers' backbones.
std::pair<torch::Tensor, torch::Tensor> item_images(const SyntheticOptions& options, int side, int64_t count,
                                                    uint64_t seed);

/// Class names of a variant, in label order.
std::vector<std::string> synthetic_classes(const std::string& variant);

/// The ground truth of one generated video (a line of meta.jsonl).
struct VideoTruth {
  int size = 0;                               ///< frame side in pixels
  int first_visible = 0, last_visible = -1;   ///< the frames in which the item is visible
  std::vector<std::array<double, 4>> boxes;   ///< the item's (x, y, w, h) in every frame
};

/// meta.jsonl, by video path as written in the lists ("videos/val_00003.mp4"). Throws adafocus::Error naming
/// file:line for a malformed line.
std::map<std::string, VideoTruth> read_synthetic_truth(const std::string& meta_path);

}  // namespace adafocus::data
