// Evaluation of a method on a list: accuracy, mAP and GFLOPs per video, and - for the built-in benchmark - how well
// its patches overlap the item (IoU against meta.jsonl).
#pragma once

#include <functional>
#include <map>
#include <string>

#include <optional>

#include "core/config.h"
#include "data/dataset.h"
#include "data/synthetic.h"
#include "distributed/dist.h"
#include "infer/adaptive.h"
#include "nn/flop_counter.h"
#include "infer/metrics.h"
#include "methods/method.h"

namespace adafocus::infer {

struct Evaluation {
  int64_t videos = 0;
  Scores scores;                ///< of the final exit, or with an exit rule of the exit each video left at
  MethodFlops flops;            ///< per video, every exit run
  torch::Tensor logits;         ///< (N, K, C) every exit (with an exit rule: NaN after a video left)
  torch::Tensor labels;         ///< (N, L), -1 padded
  std::vector<double> exit_top1;  ///< top-1 of each exit without early exit (empty with an exit rule)
  torch::Tensor exits;          ///< with an exit rule: (N,) the exit each video left at
  double counted_gflops = -1;   ///< with an exit rule: the FLOPs counted as the batches ran, per video
  double iou = -1;              ///< mean IoU of the regions looked at with the item, over frames where it is visible
  int64_t iou_frames = 0;
  double on_item = -1;          ///< fraction of the frames looked at in which the item is visible
  std::vector<double> on_item_by_region;  ///< the same for the first, second, ... region a video looked at
  double region_spread = -1;    ///< std of the regions' centres / input side: near 0 means a collapsed policy
  double video_gflops = -1;     ///< methods whose cost depends on the video (AdaFuse): mean counted GFLOPs per video
  /// Without an exit rule, what the method reports of itself (Prediction::video_means, their mean over the videos,
  /// and <name>_top1 of its Prediction::part_logits): AdaFocusV2's glance_top1, AdaFuse's kept, reused, skipped.
  std::map<std::string, double> statistics;

  /// GFLOPs per video without early exit: counted from each video's gates where they decide it, else the model's.
  double gflops() const { return video_gflops >= 0 ? video_gflops : flops.report.gflops(); }
};

/// Where the regions a method looked at fall, against the benchmark's ground truth (the meta.jsonl beside a list),
/// in the generated frames' pixels, accumulated over videos. Without a meta.jsonl it measures nothing (-1).
class OverlapMeter {
 public:
  /// `test_resize` as data::frame_regions: > 0 the test view, 0 the training view.
  OverlapMeter(const std::string& list, int input_size, int test_resize);
  /// One video's regions (R, 4) and their clip positions (R, F), as Prediction has them.
  void add(const data::Sample& sample, const std::string& path, const torch::Tensor& regions,
           const torch::Tensor& region_frames);
  double iou() const;      ///< mean IoU with the item over the frames looked at in which it is visible
  double hits() const;     ///< fraction of those frames in which the region overlaps the item at all
  double on_item() const;  ///< fraction of the frames looked at in which the item is visible
  std::vector<double> on_item_by_region() const;  ///< the same for the first, second, ... region
  int64_t iou_frames() const { return iou_frames_; }
  /// Forgets what was added (keeps the ground truth).
  void clear();
  /// Adds what the meters of the other processes counted (collective).
  void sum_across(dist::Group& group);

 private:
  int input_size_, test_resize_;
  std::map<std::string, data::VideoTruth> truth_;
  double iou_sum_ = 0;
  int64_t iou_frames_ = 0, hits_ = 0, frames_ = 0;
  std::vector<double> on_item_;
  std::vector<int64_t> counts_;
};

struct EvalOptions {
  std::string list_key = "data.val_list";  ///< which list of the config
  std::string policy;                      ///< "": as trained; learned | random | center to swap at test time
  /// Run exit by exit with this rule (infer/adaptive.h) instead of the whole-clip predict(); no thresholds: every
  /// exit runs, on the same path (what calibration fits on).
  std::optional<ExitRule> exit_rule;
  int64_t max_videos = 0;                  ///< > 0: only the first this many videos of the list
  torch::Device device = torch::kCPU;
  std::function<void(int64_t done, int64_t total)> progress;
  /// Several processes (data-parallel training): each evaluates every world-th video and the results are gathered,
  /// so that every process gets the metrics of the whole list (the videos' rows in rank order).
  dist::Group* group = nullptr;
};

/// Runs `method` (eval mode, no gradients) over the list with the test view of the config's data settings. The
/// meta.jsonl beside the list, when there is one, gives the IoU and how often the frames looked at show the item.
Evaluation evaluate(methods::MethodImpl& method, const Config& config, const EvalOptions& options);

/// Fits early-exit thresholds (infer/early_exit.h) for `budgets` (none: the cost of each exit) on the list
/// options.list_key, from every exit's logits computed on the exit-by-exit path that eval and predict then run with
/// the thresholds.
ExitTable calibrate(methods::MethodImpl& method, const Config& config, EvalOptions options, Criterion criterion,
                    const std::vector<double>& budgets);

}  // namespace adafocus::infer
