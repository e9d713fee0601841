// Prediction on one video file or frame folder: the classes with their probabilities, where the model looked in each
// frame (in the video's own pixels), what it cost, and a visualisation of it.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "infer/adaptive.h"
#include "methods/checkpoint.h"

namespace adafocus::infer {

struct Region {
  int64_t frame;                 ///< 0-based frame index in the video
  std::array<double, 4> box;     ///< x, y, w, h in the video's pixels
};

struct VideoPrediction {
  std::vector<std::pair<std::string, double>> classes;  ///< every class with its probability, most likely first
  std::vector<Region> regions;                          ///< what the local network saw (none for full-frame models)
  std::vector<int64_t> frames;                          ///< the frames the model read, in the order fed
  double gflops = 0;                                    ///< what this prediction cost (counted with early exits)
  int64_t exit = -1, exits = 1;                         ///< with early exits: the exit it stopped at, of `exits`
  double full_gflops = 0;                               ///< the cost without early exits
  methods::Prediction outputs;  ///< without early exits: everything the model computed (a batch of 1, on the CPU)
};

/// Runs `model` on the test view of `video` (its configuration's data settings); with `rule`, exit by exit until
/// the prediction is confident enough.
VideoPrediction predict_video(methods::LoadedModel& model, const std::string& video, torch::Device device,
                              const infer::ExitRule* rule = nullptr);

/// One video's regions (R, 4) in network-input pixels (input_size x input_size), spanning the clip positions
/// `region_frames` (R, F) (of the focus clip when the sample has one), as a region per frame read, in the decoded
/// frames' pixels. Test view (test_resize > 0): the centre crop of the frame resized to test_resize; training view
/// (test_resize = 0): the sample's crop of the decoded frame, maybe flipped.
std::vector<Region> frame_regions(const torch::Tensor& regions, const torch::Tensor& region_frames,
                                  const data::Sample& sample, int input_size, int test_resize);

/// Writes the frames the model read, with its regions and its top class drawn on them, as a .gif or .mp4.
void visualize(const std::string& video, const methods::LoadedModel& model, const VideoPrediction& prediction,
               const std::string& out);

}  // namespace adafocus::infer
