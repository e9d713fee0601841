// adafocus calibrate: fits early-exit thresholds for GFLOPs budgets on a set of videos (a training subset, as the
// official code), and writes them as JSON, optionally into the checkpoint so that predict --budget needs nothing else.
#include <fmt/format.h>

#include "cli/common.h"
#include "core/error.h"
#include "core/files.h"
#include "infer/evaluate.h"
#include "methods/checkpoint.h"

namespace adafocus::cli {

namespace {

struct CalibrateArgs {
  std::string checkpoint, preset, data, list, out, criterion;  // empty: the method's own
  std::vector<double> budgets;
  std::vector<std::string> overrides;
  int64_t videos = 0;
  bool embed = false;
};

int run(const CalibrateArgs& args, const Runtime& runtime) {
  if (args.out.empty() && !args.embed)
    throw Error("nowhere to write the thresholds", "", "give --out F.json, --embed (into the checkpoint), or both");
  std::vector<std::string> overrides = args.overrides;
  if (!args.data.empty()) overrides.push_back("data.root=" + args.data);
  methods::LoadedModel m = methods::load_model(args.checkpoint, args.preset, overrides, runtime.torch_device());
  infer::EvalOptions o;
  o.device = runtime.torch_device();
  o.list_key = "data.train_list";  // official: thresholds fitted on training videos
  if (!args.list.empty()) m.config.set("data.train_list", args.list, "--list");
  o.max_videos = args.videos;
  const std::string criterion = args.criterion.empty() ? m.method->exit_criterion() : args.criterion;
  const infer::ExitTable table = infer::calibrate(*m.method, m.config, o, infer::parse_criterion(criterion), args.budgets);

  fmt::print("{} exits on {} videos of {} ({}); GFLOPs per exit:", table.exit_gflops.size(), table.videos,
             table.calibration, criterion);
  for (double g : table.exit_gflops) fmt::print(" {:.4g}", g);
  fmt::print("\n");
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : table.budgets)
    rows.push_back({fmt::format("{:.4g}", s.budget), fmt::format("{:.4g}", s.gflops), fmt::format("{:.2f}", s.top1),
                    s.gflops > s.budget * (1 + 1e-9) ? "below the first exit's cost" : ""});
  if (!rows.empty()) print_table({"budget", "expected GFLOPs", "top-1 (calibration)", ""}, rows);
  if (!args.out.empty()) {
    write_file_atomic(args.out, table.to_json());
    fmt::print("{}: thresholds for {} budgets and the official sweep\n", args.out, table.budgets.size());
  }
  if (args.embed) {
    methods::Checkpoint c = methods::load_checkpoint(args.checkpoint);
    if (c.config_yaml.empty())
      throw Error("cannot embed thresholds in a checkpoint without a configuration (an official one)",
                  args.checkpoint, "use --out F.json and pass it with --thresholds");
    c.exits_json = table.to_json();
    methods::save_checkpoint(args.checkpoint, c);
    fmt::print("{}: now carries the thresholds (predict --budget G)\n", args.checkpoint);
  }
  return 0;
}

}  // namespace

void add_calibrate_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<CalibrateArgs>();
  CLI::App* sub = app.add_subcommand("calibrate", "fit early-exit thresholds for GFLOPs budgets (V2+, V3)");
  sub->add_option("--checkpoint", args->checkpoint, "a trained model with exits")->required();
  sub->add_option("-c,--config", args->preset, "preset for checkpoints without a configuration (official ones)");
  sub->add_option("--data", args->data, "dataset folder (data.root)");
  sub->add_option("--list", args->list, "videos to fit on (default: the run's data.train_list, as official)");
  sub->add_option("--videos", args->videos, "> 0: this many videos, evenly spread over the list");
  sub->add_option("--budgets", args->budgets,
                  "GFLOPs per video to fit thresholds for, e.g. 0.01,0.02 (default: the cost of each exit)")
      ->delimiter(',');
  sub->add_option("--criterion", args->criterion,
                  "entropy | max_logit | max_softmax (default: the method's own - AdaFocusV2+ and V1: max_logit, the "
                  "official V2+ 'confidence'; AdaFocusV3: entropy, as its paper)")
      ->check(CLI::IsMember({"entropy", "max_logit", "max_softmax"}));
  sub->add_option("--out", args->out, "write the thresholds to this JSON file");
  sub->add_flag("--embed", args->embed, "store the thresholds in the checkpoint (predict --budget then needs no file)");
  sub->add_option("overrides", args->overrides, "dotted key=value overrides");
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
