// The one exit-by-exit inference path, used by eval, calibrate, predict and bench: a batch runs exit by exit
// (glance, then cube by cube or frame by frame), the videos whose prediction is confident enough leave, and the work
// shrinks with the batch. The FLOPs are counted as the batch runs, so the cost reported is what was spent.
//
// Legend: B videos, K exits, C classes, R regions, F frames a region spans.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "infer/early_exit.h"
#include "methods/method.h"

namespace adafocus::infer {

struct ExitRule {
  Criterion criterion = Criterion::Entropy;
  std::vector<double> thresholds;  ///< one per exit; empty: nobody leaves early (every exit runs)
};

struct AdaptiveResult {
  torch::Tensor logits;       ///< (B, C): each video's prediction at the exit it left at
  torch::Tensor exits;        ///< (B,) int64: that exit
  torch::Tensor exit_logits;  ///< (B, K, C): every exit that ran for the video, NaN after it left
  std::vector<torch::Tensor> regions, region_frames;  ///< per video (R, 4) and (R, F): what it looked at
  int64_t macs = -1;          ///< FLOPs counted for the whole batch (-1: not counted)
};

/// Runs `method` (eval mode, under NoGradGuard) on a batch with early exits under `rule`; `count` counts its FLOPs.
AdaptiveResult run_adaptive(methods::MethodImpl& method, const methods::Clips& clips, const ExitRule& rule,
                            bool count);

}  // namespace adafocus::infer
