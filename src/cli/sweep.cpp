// adafocus sweep: flags of experiments::run_sweep (src/experiments/sweep.h).
#include <fmt/format.h>

#include "cli/common.h"
#include "experiments/sweep.h"

namespace adafocus::cli {

void add_sweep_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<experiments::SweepOptions>();
  std::string names;
  for (const auto& s : experiments::sweep_settings()) names += fmt::format("{}{} ({})", names.empty() ? "" : ", ", s.name, s.description);
  CLI::App* sub = app.add_subcommand(
      "sweep", "train the demo's methods over a grid of benchmark settings and seeds: does the policy still learn?");
  sub->add_option("--out", args->out, "folder for the cells and sweep.json");
  sub->add_option("--methods", args->methods, "comma-separated presets of configs/benchmark/");
  sub->add_option("--settings", args->settings, "comma-separated generator settings: " + names);
  sub->add_option("--seeds", args->seeds, "comma-separated seeds (videos, pretraining and training)");
  sub->add_option("--train-videos", args->train_videos, "training videos per cell")->check(CLI::PositiveNumber);
  sub->add_option("--val-videos", args->val_videos, "val videos per cell")->check(CLI::PositiveNumber);
  sub->add_option("--epochs", args->epochs, "> 0: override every method's epochs (a quick look)");
  sub->add_option("--pretrain-images", args->pretrain_images,
                  "single items each network (patch, glance, full frame) is pretrained on")
      ->check(CLI::PositiveNumber);
  sub->add_option("--jobs", args->jobs, "cells run at once as child processes, sharing --threads (default: one per "
                                       "thread; 1: one after the other in this process)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--quick", args->quick, "settings default and hard, seed 0 (replaces --settings and --seeds)");
  sub->add_option("--set", args->overrides, "key=value applied to every cell and method");
  commands.push_back({sub, [args, &runtime] { return experiments::run_sweep(*args, runtime.resources()); }});
}

}  // namespace adafocus::cli
