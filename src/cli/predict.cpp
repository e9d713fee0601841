// adafocus predict: classify one video with a trained model; where it looked, what it cost, and a picture of it.
// With --budget, the video runs exit by exit and stops as soon as the prediction is confident enough.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <optional>

#include "cli/common.h"
#include "infer/predictor.h"

namespace adafocus::cli {

namespace {

struct PredictArgs {
  std::string checkpoint, preset, video, visualize, thresholds;
  std::vector<std::string> overrides;
  int64_t top_k = 5;
  double budget = -1;
  bool json = false;
};

int run(const PredictArgs& args, const Runtime& runtime) {
  methods::LoadedModel model = methods::load_model(args.checkpoint, args.preset, args.overrides, runtime.torch_device());
  std::optional<infer::ExitRule> rule;
  double expected = 0;
  if (args.budget >= 0 || !args.thresholds.empty()) {
    const infer::ExitTable table = exit_table(model, args.thresholds, args.checkpoint);
    const infer::ExitSetting s = table.for_budget(args.budget >= 0 ? args.budget : table.exit_gflops.back());
    rule = infer::ExitRule{table.criterion, s.thresholds};
    expected = s.gflops;
  }
  const infer::VideoPrediction p =
      infer::predict_video(model, args.video, runtime.torch_device(), rule ? &*rule : nullptr);
  if (!args.visualize.empty()) infer::visualize(args.video, model, p, args.visualize);
  const size_t k = std::min(static_cast<size_t>(std::max<int64_t>(1, args.top_k)), p.classes.size());
  if (args.json) {
    nlohmann::json out{{"video", args.video}, {"method", model.config.get_string("model.method")},
                       {"gflops", p.gflops}, {"full_gflops", p.full_gflops}, {"frames", p.frames}};
    if (rule) {
      out["exit"] = p.exit;
      out["exits"] = p.exits;
      out["budget"] = args.budget;
      out["expected_gflops"] = expected;
    }
    out["top"] = nlohmann::json::array();
    for (size_t i = 0; i < k; ++i) out["top"].push_back({{"label", p.classes[i].first}, {"score", p.classes[i].second}});
    out["regions"] = nlohmann::json::array();
    for (const auto& r : p.regions)
      out["regions"].push_back({{"frame", r.frame}, {"x", r.box[0]}, {"y", r.box[1]}, {"w", r.box[2]}, {"h", r.box[3]}});
    if (!args.visualize.empty()) out["visualization"] = args.visualize;
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("{} ({:.4f} GFLOPs)\n", args.video, p.gflops);
  if (rule)
    fmt::print("  stopped after exit {} of {} (0 = the first): {:.4f} GFLOPs of {:.4f} without early exit\n", p.exit,
               p.exits - 1, p.gflops, p.full_gflops);
  for (size_t i = 0; i < k; ++i) fmt::print("  {:6.2f}%  {}\n", 100 * p.classes[i].second, p.classes[i].first);
  for (const auto& r : p.regions)
    fmt::print("  frame {:4}: looked at x {:.0f} y {:.0f} w {:.0f} h {:.0f}\n", r.frame, r.box[0], r.box[1], r.box[2],
               r.box[3]);
  if (!args.visualize.empty()) fmt::print("{}: the frames read, with the regions looked at\n", args.visualize);
  return 0;
}

}  // namespace

void add_predict_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<PredictArgs>();
  CLI::App* sub = app.add_subcommand("predict", "classify a video file or frame folder with a trained model");
  sub->add_option("video", args->video, "video file or frame folder")->required();
  sub->add_option("--checkpoint", args->checkpoint, "best.pt / last.pt of a run, or an official .pth.tar")->required();
  sub->add_option("-c,--config", args->preset, "preset for checkpoints without a configuration (official ones)");
  sub->add_option("--top-k", args->top_k, "classes to list");
  sub->add_option("--budget", args->budget,
                  "stop early: GFLOPs per video on average (thresholds from --thresholds or the checkpoint)");
  sub->add_option("--thresholds", args->thresholds, "early-exit thresholds (adafocus calibrate --out)");
  sub->add_flag("--json", args->json, "machine-readable output: top, regions, gflops, exit");
  sub->add_option("--visualize", args->visualize, "write the frames read with the focus boxes to OUT.gif or OUT.mp4");
  sub->add_option("--set", args->overrides, "dotted key=value overrides (e.g. --set data.segments=16)");
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
