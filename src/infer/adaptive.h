// The one exit-by-exit inference path, used by eval, calibrate, predict and bench: a batch runs exit by exit
// (glance, then cube by cube or frame by frame), the videos whose prediction is confident enough leave, and the work
// shrinks with the batch. The FLOPs are counted as the batch runs, so the cost reported is what was spent.
//
// Legend: B videos, K exits, C classes, R regions, F frames a region spans.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

#include "infer/early_exit.h"
#include "methods/method.h"
#include "nn/flop_counter.h"

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
  /// (B,) double: each video's GFLOPs where the method's cost depends on the video (ExitStep::gflops); undefined
  /// otherwise - a video then costs what its exit costs (MethodFlops::exits).
  torch::Tensor video_gflops;
};

/// Told as videos leave the batch: the rows that just left, and the result with their entries filled.
using LeaveCallback = std::function<void(const std::vector<int64_t>& rows, const AdaptiveResult& result)>;

struct MethodFlops {
  nn::FlopsReport report;          ///< everything one video's predict() runs (as the papers count, auxiliary heads too)
  std::vector<double> exits;   ///< GFLOPs of a video leaving at each exit of the exit-by-exit path
};

/// Per-video FLOPs of a method's inference on one clip of `frames` frames (and `focus_frames` focus frames) of
/// side `size`, in eval mode, and the cost of each of its exits, counted on its exit-by-exit path.
MethodFlops method_flops(methods::MethodImpl& method, int64_t frames, int64_t focus_frames, int64_t size);

/// Runs `method` (eval mode, under NoGradGuard) on a batch with early exits under `rule`; `count` counts its FLOPs.
AdaptiveResult run_adaptive(methods::MethodImpl& method, const methods::Clips& clips, const ExitRule& rule,
                            bool count);
/// The same with a rule per video (their thresholds may differ, their criterion not; null: every exit runs), telling
/// `on_leave` as videos leave, so that their answers can go out before the batch ends.
AdaptiveResult run_adaptive(methods::MethodImpl& method, const methods::Clips& clips,
                            const std::vector<const ExitRule*>& rules, bool count, const LeaveCallback& on_leave = {});

}  // namespace adafocus::infer
