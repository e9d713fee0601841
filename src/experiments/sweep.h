// The sweep: the demo's methods over a grid of benchmark settings, so that a claim is shown only where it
// survives variation. Each cell (a generator setting and a seed) is a whole demo run in DIR/<setting>_seed<S>/ (its
// own videos, pretraining and training runs; finished steps are not redone), with every preset unchanged; the sweep
// gathers the cells' results.json and training logs into one table and DIR/sweep.json. With --jobs N the cells run
// as N child processes (`adafocus demo`, output in the cell's demo.log), each with threads / N threads.
#pragma once

#include <string>
#include <vector>

#include "experiments/resources.h"

namespace adafocus::experiments {

/// A variant of the generator (pixels at 128 px frames; the demo's: items 32-40, 8-12 fragments, visible 30-70%).
struct SweepSetting {
  std::string name, description;
  std::vector<std::string> overrides;
};
/// default, small, clutter, brief, hard.
const std::vector<SweepSetting>& sweep_settings();

struct SweepOptions {
  std::string out = "sweep";
  /// AdaFocusV2, AdaFocusV3 and the baselines their claims name.
  std::string methods = "adafocus_v2,adafocus_v3,v3_pixel_gradient,random_patch,full_frame_low_res";
  /// The settings that vary the generator (the demo runs its own, `default`): 8 cells, about an hour on 2 cores.
  std::string settings = "small,clutter,brief,hard", seeds = "0,1";
  int64_t train_videos = 1000, val_videos = 300, epochs = 0, pretrain_images = 20000;
  int jobs = 0;  ///< cells at once (0: one per thread)
  bool quick = false;  ///< settings default and hard, seed 0
  std::vector<std::string> overrides;
};

/// Runs (or finishes) every cell, prints the table and the per-cell claims, writes OUT/sweep.json; the exit status.
int run_sweep(const SweepOptions& options, const Resources& resources);

}  // namespace adafocus::experiments
