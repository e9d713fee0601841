// adafocus demo: flags of experiments::run_demo (src/experiments/demo.h).
#include "cli/common.h"
#include "experiments/demo.h"

namespace adafocus::cli {

void add_demo_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<experiments::DemoOptions>();
  CLI::App* sub = app.add_subcommand(
      "demo", "train AdaFocusV2, V3 and their baselines on the built-in benchmark and show accuracy vs GFLOPs");
  sub->add_option("--out", args->out, "folder for the benchmark, runs, models and results");
  std::string presets;
  for (const auto& [file, text] : builtin_presets())
    if (file.rfind("benchmark/", 0) == 0) presets += (presets.empty() ? "" : ", ") + file.substr(10, file.size() - 15);
  sub->add_option("--methods", args->methods, "comma-separated presets of configs/benchmark/: " + presets);
  sub->add_option("--train-videos", args->train_videos, "benchmark videos to train on")->check(CLI::PositiveNumber);
  sub->add_option("--val-videos", args->val_videos, "benchmark videos to evaluate on")->check(CLI::PositiveNumber);
  sub->add_option("--epochs", args->epochs, "> 0: override every method's epochs (a quick look)");
  sub->add_option("--full-res-epochs", args->full_res_epochs, "> 0: override the full-resolution baseline's epochs");
  sub->add_option("--pretrain-images", args->pretrain_images,
                  "single items each network (patch, glance, full frame) is pretrained on")
      ->check(CLI::PositiveNumber);
  sub->add_option("--calibration-videos", args->calibration_videos,
                  "held-out videos (calib.txt) the early-exit thresholds are fitted on; 0: no early-exit curves")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--set", args->overrides, "key=value applied to every method (e.g. --set data.batch_size=16)");
  commands.push_back({sub, [args, &runtime] { return experiments::run_demo(*args, runtime.resources()); }});
}

}  // namespace adafocus::cli
