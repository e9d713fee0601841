// Prediction on one video file or frame folder: the classes with their probabilities, where the model looked in each
// frame (in the video's own pixels) and what it cost (viz/visualize.h draws it).
#pragma once

#include <array>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "infer/adaptive.h"
#include "infer/early_exit.h"
#include "methods/checkpoint.h"

namespace adafocus::infer {

struct VideoPrediction {
  std::vector<std::pair<std::string, double>> classes;  ///< every class with its probability, most likely first
  std::vector<data::Region> regions;                          ///< what the local network saw (none for full-frame models)
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

/// The same on a clip already read with prediction_options(model) (a window of a live source).
VideoPrediction predict_sample(methods::LoadedModel& model, const data::Sample& sample, torch::Device device,
                               const infer::ExitRule* rule = nullptr);

/// The test view's data settings of `model` for single videos (no frame cache: a video is read once).
data::DatasetOptions prediction_options(const methods::LoadedModel& model);

/// One video's answer from what the network gave it: its final `logits` (C), the `regions` (R, 4) and
/// `region_frames` (R, F) it looked at (undefined: none), in the pixels of `sample`'s decoded frames; what it cost.
VideoPrediction video_prediction(const methods::LoadedModel& model, const data::Sample& sample,
                                 const torch::Tensor& logits, const torch::Tensor& regions,
                                 const torch::Tensor& region_frames, double gflops);

/// predict --json's answer for `video`: method, GFLOPs, frames read, the top `top_k` classes, regions; with early
/// exits the exit taken.
nlohmann::json prediction_json(const VideoPrediction& p, const std::string& video, const std::string& method,
                               size_t top_k);

/// predict --raw's "raw": everything the model computed for the first video of `p`, in its own terms (network-input
/// pixels, clip positions): logits of every exit, regions_input, region_frames and the method's own outputs.
nlohmann::json raw_prediction_json(const methods::Prediction& p);

/// The early-exit thresholds for `model`: from `file` when given, else those its checkpoint carries; throws with a
/// hint when there are none.
ExitTable exit_table(const methods::LoadedModel& model, const std::string& file, const std::string& checkpoint);

/// Replaces the model's class names by those of a classInd.txt (official checkpoints have none); the count must fit.
void set_class_names(methods::LoadedModel& model, const std::string& class_index);

}  // namespace adafocus::infer
