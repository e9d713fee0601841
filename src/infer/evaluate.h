// Evaluation of a method on a list: accuracy, mAP and GFLOPs per video, and - for the built-in benchmark - how well
// its patches overlap the item (IoU against meta.jsonl).
#pragma once

#include <functional>
#include <map>
#include <string>

#include "core/config.h"
#include "data/synthetic.h"
#include "infer/flops.h"
#include "infer/metrics.h"
#include "methods/method.h"

namespace adafocus::infer {

struct Evaluation {
  int64_t videos = 0;
  Scores scores;                ///< of the final exit
  MethodFlops flops;            ///< per video
  torch::Tensor logits;         ///< (N, K, C) every exit, for calibrating early exits
  torch::Tensor labels;         ///< (N, L), -1 padded
  double iou = -1;              ///< mean IoU of the regions looked at with the item, over frames where it is visible
  int64_t iou_frames = 0;
  double region_spread = -1;    ///< std of the regions' centres / input side: near 0 means a collapsed policy
};

struct EvalOptions {
  std::string list_key = "data.val_list";  ///< which list of the config
  std::string policy;                      ///< "": as trained; learned | random | center to swap at test time
  torch::Device device = torch::kCPU;
  std::function<void(int64_t done, int64_t total)> progress;
};

/// Runs `method` (eval mode, no gradients) over the list with the test view of the config's data settings. The
/// meta.jsonl beside the list, when there is one, gives the IoU.
Evaluation evaluate(methods::MethodImpl& method, const Config& config, const EvalOptions& options);

}  // namespace adafocus::infer
