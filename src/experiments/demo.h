// The demo (what `make demo` runs): on the built-in benchmark (generated if absent) it trains AdaFocusV2, AdaFocusV3
// and the baselines they are measured against, evaluates them, and checks the papers' claims on our data: accuracy
// against GFLOPs, where the learned policy looks (IoU with the item) compared with random and centred patches, and -
// for the methods that can stop early - accuracy against the GFLOPs counted at a range of budgets. On request it also
// trains AdaFocus V1, AdaFuse and V3's ablations (the presets of configs/benchmark/).
//
// OUT/data (the benchmark; OUT/data_motion for the motion variant's methods), OUT/runs/<method> (training runs),
// OUT/<method>.pt (final models, with their early-exit thresholds), OUT/results.json, OUT/accuracy_vs_gflops.svg,
// OUT/focus.gif and OUT/focus_v3.gif. Finished steps are not redone when the demo is run again.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "experiments/resources.h"

namespace adafocus::experiments {

struct DemoOptions {
  std::string out = "demo";
  /// Presets of configs/benchmark/, in order (also adafocus_v1_stage1: AdaFocus V1's stage-1 model).
  std::string methods = "adafocus_v2,adafocus_v3,random_patch,full_frame_low_res,full_frame_full_res";
  int64_t train_videos = 2000, val_videos = 500;
  int64_t epochs = 0, full_res_epochs = 0;  ///< > 0: exact epoch counts instead of the presets'
  int64_t pretrain_images = 20000;          ///< single items each pretrained network is trained on
  int64_t calibration_videos = 500;         ///< held-out videos the early exits are fitted on; 0: no budget curves
  std::vector<std::string> overrides;       ///< key=value applied to every method and to the generator
};

/// Generates the benchmark, trains and evaluates the methods into options.out (steps already done are skipped),
/// prints the table and the claims, and writes results.json; returns the exit status.
int run_demo(const DemoOptions& options, const Resources& resources);

/// A JSON file a demo or sweep step wrote; adafocus::Error if it is not valid JSON.
nlohmann::json read_json(const std::string& path);

}  // namespace adafocus::experiments
